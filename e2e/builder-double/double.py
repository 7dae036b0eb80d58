#!/usr/bin/env python3
"""Test double for the kubelet + BuildKit pair of a builder pod (KWOK runs no containers).

For each builder pod (label app.kubernetes.io/name=multiarch-builder) that KWOK reports Running on a
node, it pushes a small real image, by digest only, to the repository in the pod's
`multiarch.dev/output` annotation, with the platform taken from the BUILDER (its
`multiarch.dev/platform` annotation), never from the node; then it finishes the pod through the
`builder-finish` KWOK stage: exit code 0 and BuildKit's metadata JSON as the termination message.

Real builds: in a namespace labelled `e2e.multiarch.dev/builder=buildkit`, the double instead runs
the pod's own command, args and environment with real rootless BuildKit on this machine (real.py)
and finishes the pod with that command's exit code and the termination message it wrote.

Scenario faults (synthetic mode) come from the test, as annotations on the MultiArchImage named by the pod's
`multiarch.dev/image` label: `e2e.multiarch.dev/fault.<os-arch[-variant]>` =
  fail        exit 1 with a build-log-like message
  fail-once   fail attempt 1 only
  wrong-arch  push an amd64 image while the builder is for another platform (the mislabelling bug)
  hang        never finish
  slow-N      finish (successfully) N seconds after the pod started running
  leak-secrets  exit 1 with a log that prints the builder's credentials (its git token, raw and as a
              basic auth header, and its registry auth): what the operator must scrub
Everything else in the environment is real.
"""

import argparse
import threading
import base64
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

FAULT = "e2e.multiarch.dev/fault."
REAL_LABEL = "e2e.multiarch.dev/builder"


def log(msg):
    print(f"[builder-double {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def kubectl(args, kubeconfig, stdin=None):
    out = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin,
                         capture_output=True, text=True, check=True)
    return out.stdout


def registry_request(method, url, data=None, headers=None, auth=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if auth:
        req.add_header("Authorization", "Basic " + auth)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, dict(resp.headers), resp.read()


def push_blob(registry, repo, data, auth):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _, headers, _ = registry_request("POST", f"http://{registry}/v2/{repo}/blobs/uploads/", b"", auth=auth)
    location = headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    registry_request("PUT", f"{location}{sep}digest={digest}", data,
                     {"Content-Type": "application/octet-stream"}, auth)
    return digest, len(data)


def push_manifest(registry, repo, manifest, media_type, auth):
    body = json.dumps(manifest, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    registry_request("PUT", f"http://{registry}/v2/{repo}/manifests/{digest}", body,
                     {"Content-Type": media_type}, auth)
    return digest, len(body)


def push_image(output, platform, note, auth):
    registry, repo = output.split("/", 1)
    os_, arch, *variant = platform.split("/")
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as tar:
        content = f"built for {platform}: {note}\n".encode()
        info = tarfile.TarInfo("etc/multiarch-e2e")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    layer = gzip.compress(layer_tar.getvalue(), mtime=0)
    diff_id = "sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()
    layer_digest, layer_size = push_blob(registry, repo, layer, auth)
    config = {"architecture": arch, "os": os_, "rootfs": {"type": "layers", "diff_ids": [diff_id]},
              "config": {}}
    if variant:
        config["variant"] = variant[0]
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    config_digest, config_size = push_blob(registry, repo, config_bytes, auth)
    media_type = "application/vnd.oci.image.manifest.v1+json"
    manifest = {
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": layer_size}],
    }
    digest, size = push_manifest(registry, repo, manifest, media_type, auth)
    return {
        "containerimage.digest": digest,
        "containerimage.config.digest": config_digest,
        "containerimage.descriptor": {"mediaType": media_type, "digest": digest, "size": size},
        "image.name": output,
    }


def push_auth(pod, namespace, registry, kubeconfig):
    """Basic credentials for `registry` from the pod's mounted dockerconfigjson Secret, if any."""
    for volume in pod["spec"].get("volumes", []):
        secret = volume.get("secret", {}).get("secretName")
        if not secret:
            continue
        data = json.loads(kubectl(["get", "secret", "-n", namespace, secret, "-o", "json"], kubeconfig))
        raw = data.get("data", {}).get(".dockerconfigjson")
        if raw:
            auths = json.loads(base64.b64decode(raw)).get("auths", {})
            entry = auths.get(registry) or auths.get(f"http://{registry}") or {}
            if entry.get("auth"):
                return entry["auth"]
            if entry.get("username"):
                return base64.b64encode(f"{entry['username']}:{entry['password']}".encode()).decode()
    return None


def git_token(pod, namespace, kubeconfig):
    """The GIT_AUTH_TOKEN the pod's environment takes from a Secret, if any."""
    for container in pod["spec"]["containers"]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if env["name"] == "GIT_AUTH_TOKEN" and ref:
                data = json.loads(kubectl(["get", "secret", "-n", namespace, ref["name"], "-o", "json"], kubeconfig))
                raw = data.get("data", {}).get(ref["key"])
                return base64.b64decode(raw).decode().strip() if raw else None
    return None


def leaky_log(pod, namespace, registry, kubeconfig):
    """A failing build's log that prints every credential the builder was given."""
    lines = ["#5 [internal] load git source"]
    token = git_token(pod, namespace, kubeconfig)
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        lines.append(f"#5 fatal: unable to access 'http://x-access-token:{token}@git.internal/sample.git/'")
        lines.append(f"#5 > Authorization: Basic {basic}")
    auth = push_auth(pod, namespace, registry, kubeconfig)
    if auth:
        lines.append(f"#9 pushing with auth {auth} ({base64.b64decode(auth).decode()})")
    lines.append("error: e2e: build failed on purpose")
    return "\n".join(lines)


def finish(pod, namespace, code, message, kubeconfig):
    kubectl(["annotate", "pod", "-n", namespace, pod, "--overwrite",
             f"e2e.multiarch.dev/exit-code={code}",
             f"e2e.multiarch.dev/termination-message={message}"], kubeconfig)


def real_mode(namespace, kubeconfig):
    ns = json.loads(kubectl(["get", "namespace", namespace, "-o", "json"], kubeconfig))
    return ns["metadata"].get("labels", {}).get(REAL_LABEL) == "buildkit"


def handle_real(pod, args):
    import real

    meta = pod["metadata"]
    ns, name = meta["namespace"], meta["name"]
    log(f"{ns}/{name}: {meta['annotations']['multiarch.dev/platform']} on {pod['spec'].get('nodeName')}: "
        "running its command with real BuildKit")
    try:
        code, message = real.run_pod(pod, lambda a: kubectl(a, args.kubeconfig), args.buildkit_bin,
                                     args.work_dir, args.build_user, log)
    except Exception as e:  # a broken stand-in must still finish the pod, visibly
        code, message = 128, f"builder double: {e}"
    finish(name, ns, code, message, args.kubeconfig)


def handle(pod, kubeconfig):
    meta = pod["metadata"]
    ns, name = meta["namespace"], meta["name"]
    platform = meta["annotations"]["multiarch.dev/platform"]
    slug = meta["labels"]["multiarch.dev/platform"]
    output = meta["annotations"]["multiarch.dev/output"]
    attempt = meta["labels"].get("multiarch.dev/attempt", "1")
    fault = ""
    try:
        obj = json.loads(kubectl(["get", "multiarchimages.multiarch.dev", "-n", ns,
                                  meta["labels"]["multiarch.dev/image"], "-o", "json"], kubeconfig))
        fault = obj["metadata"].get("annotations", {}).get(FAULT + slug, "")
    except subprocess.CalledProcessError:
        pass
    log(f"{ns}/{name}: {platform} on {pod['spec'].get('nodeName')} (attempt {attempt}, fault {fault or 'none'})")
    if fault == "hang":
        return
    if fault.startswith("slow-"):
        seconds = int(fault.split("-", 1)[1])
        threading.Timer(seconds, finish_later, args=(pod, ns, name, platform, output, attempt, kubeconfig)).start()
        return
    finish_build(pod, ns, name, platform, output, fault, attempt, kubeconfig)


def finish_later(pod, ns, name, platform, output, attempt, kubeconfig):
    try:
        finish_build(pod, ns, name, platform, output, "", attempt, kubeconfig)
    except (subprocess.CalledProcessError, urllib.error.URLError, KeyError, OSError) as e:
        log(f"{ns}/{name}: {e}")


def finish_build(pod, ns, name, platform, output, fault, attempt, kubeconfig):
    try:
        current = json.loads(kubectl(["get", "pod", "-n", ns, name, "-o", "json"], kubeconfig))
        if current["metadata"]["uid"] != pod["metadata"]["uid"] or current["metadata"].get("deletionTimestamp"):
            log(f"{ns}/{name}: gone before it finished")
            return
    except subprocess.CalledProcessError:
        log(f"{ns}/{name}: gone before it finished")
        return
    if fault == "fail" or (fault == "fail-once" and attempt == "1"):
        finish(name, ns, 1, "#12 [build 4/4] RUN go build\nerror: e2e: build failed on purpose", kubeconfig)
        return
    if fault == "leak-secrets":
        finish(name, ns, 1, leaky_log(pod, ns, output.split("/", 1)[0], kubeconfig), kubeconfig)
        return
    pushed_platform = "linux/amd64" if fault == "wrong-arch" else platform
    auth = push_auth(pod, ns, output.split("/", 1)[0], kubeconfig)
    metadata = push_image(output, pushed_platform, f"{ns}/{name}", auth)
    finish(name, ns, 0, json.dumps(metadata, separators=(",", ":")), kubeconfig)
    log(f"{ns}/{name}: pushed {metadata['containerimage.digest']} ({pushed_platform})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--buildkit-bin", help="folder of buildkitd, buildctl, buildctl-daemonless.sh")
    parser.add_argument("--work-dir", default="/var/tmp/multiarch-e2e-builds")
    parser.add_argument("--build-user", default="e2e-builder")
    args = parser.parse_args()
    handled = set()
    failures = 0
    while True:
        try:
            pods = json.loads(kubectl(["get", "pods", "-A", "-l", "app.kubernetes.io/name=multiarch-builder",
                                       "-o", "json"], args.kubeconfig))["items"]
            failures = 0
        except subprocess.CalledProcessError as e:
            failures += 1
            if failures > 20:
                log(f"the apiserver is gone, stopping: {e.stderr}")
                return
            time.sleep(1)
            continue
        for pod in pods:
            uid = pod["metadata"]["uid"]
            running = pod.get("status", {}).get("phase") == "Running" and pod["spec"].get("nodeName")
            if uid in handled or not running or pod["metadata"].get("deletionTimestamp"):
                continue
            handled.add(uid)
            try:
                if args.buildkit_bin and real_mode(pod["metadata"]["namespace"], args.kubeconfig):
                    threading.Thread(target=handle_real, args=(pod, args), daemon=True).start()
                    continue
                handle(pod, args.kubeconfig)
            except (subprocess.CalledProcessError, urllib.error.URLError, KeyError, OSError) as e:
                log(f"{pod['metadata']['name']}: {e}")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
