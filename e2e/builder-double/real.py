"""Real mode of the builder double: runs a builder pod's own command, arguments and environment,
verbatim, with real rootless BuildKit on this machine, standing in for the kubelet and the
container runtime of a node.

For one pod it
  - prepares a host folder per volume mount of the `buildkit` container (emptyDir: an empty folder;
    Secret: the Secret's keys as files, read through the API), plus a home folder for $HOME and a
    file for the container's terminationMessagePath;
  - runs, in a private mount namespace (`unshare -m --propagation private`), bind mounts of those
    folders at the pod's mount paths, then drops to an unprivileged user (`setpriv`) and executes
    the container's command and args with exactly the pod's environment (PATH gets the folder of
    BuildKit's binaries, as the image's PATH would);
  - returns the command's own exit code and the termination message it wrote (at most 4096 bytes,
    as the kubelet keeps; with FallbackToLogsOnError and an empty file, the log's tail).

It knows nothing of BuildKit's flags: a wrongly rendered builder fails here as it would on a node.
"""

import base64
import json
import os
import shlex
import shutil
import subprocess
import time

CONTAINER = "buildkit"
MAX_MESSAGE = 4096
LOG_TAIL_LINES = 80
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Unsupported(Exception):
    """The pod uses something this stand-in for a node cannot provide."""


def _secret_files(namespace, name, items, kubectl):
    secret = json.loads(kubectl(["get", "secret", "-n", namespace, name, "-o", "json"]))
    data = {k: base64.b64decode(v) for k, v in secret.get("data", {}).items()}
    if items:
        return {item["path"]: data[item["key"]] for item in items}
    return data


def _prepare(pod, container, folder, user, kubectl):
    """Host folders for every volume mount; returns [(host path, mount path)] in mount order."""
    namespace = pod["metadata"]["namespace"]
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounts = []
    env = {}
    for e in container.get("env", []):
        if "valueFrom" not in e:
            env[e["name"]] = e.get("value", "")
            continue
        # as the kubelet does: a Secret key, left out when optional and missing
        ref = e["valueFrom"].get("secretKeyRef")
        if ref is None:
            raise Unsupported(f"env {e['name']} uses valueFrom other than secretKeyRef")
        try:
            data = _secret_files(namespace, ref["name"], None, kubectl)
        except subprocess.CalledProcessError:
            data = {}
        if ref["key"] in data:
            env[e["name"]] = data[ref["key"]].decode()
        elif not ref.get("optional"):
            raise Unsupported(f"env {e['name']}: Secret {ref['name']} has no key {ref['key']}")
    home = env.get("HOME")
    if home:
        host = os.path.join(folder, "home")
        os.makedirs(host)
        mounts.append((host, home))
    for m in container.get("volumeMounts", []):
        volume = volumes.get(m["name"])
        if volume is None:
            raise Unsupported(f"volume mount {m['name']} has no volume")
        host = os.path.join(folder, "volumes", m["name"])
        if "emptyDir" in volume:
            os.makedirs(host, exist_ok=True)
        elif "secret" in volume:
            os.makedirs(host, exist_ok=True)
            files = _secret_files(namespace, volume["secret"]["secretName"],
                                  volume["secret"].get("items"), kubectl)
            for path, content in files.items():
                target = os.path.join(host, path)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(content)
        else:
            raise Unsupported(f"volume {m['name']} is neither an emptyDir nor a Secret")
        mounts.append((host, m["mountPath"]))
    # the deeper a mount path, the later it is mounted (a mount inside $HOME after $HOME); mount
    # points inside $HOME exist in the home folder, owned by the user, as in the image
    mounts.sort(key=lambda hm: hm[1].rstrip("/").count("/"))
    if home:
        for _, path in mounts[1:]:
            if path.startswith(home.rstrip("/") + "/"):
                os.makedirs(os.path.join(folder, "home", os.path.relpath(path, home)), exist_ok=True)
    termination = os.path.join(folder, "termination-log")
    open(termination, "w").close()
    mounts.append((termination, container.get("terminationMessagePath", "/dev/termination-log")))
    subprocess.run(["chown", "-R", f"{user}:{user}", folder], check=True)
    return mounts, env, termination


def run_pod(pod, kubectl, buildkit_bin, work_dir, user, log):
    """Runs the pod's builder container; returns (exit code, termination message)."""
    container = next(c for c in pod["spec"]["containers"] if c["name"] == CONTAINER)
    folder = os.path.join(work_dir, pod["metadata"]["uid"])
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    try:
        mounts, env, termination = _prepare(pod, container, folder, user, kubectl)
    except Unsupported as e:
        return 128, f"the test node cannot run this pod: {e}"
    env["PATH"] = f"{buildkit_bin}:{env['PATH']}" if "PATH" in env else f"{buildkit_bin}:{SYSTEM_PATH}"
    command = container.get("command", []) + container.get("args", [])
    if not command:
        return 128, "the test node needs the container's command (it has no image to take it from)"
    script = ["set -e"]
    for host, path in mounts:
        if os.path.isdir(host):
            script.append(f"mkdir -p {shlex.quote(path)}")
        script.append(f"mount --bind {shlex.quote(host)} {shlex.quote(path)}")
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    script.append(
        f"cd {shlex.quote(container.get('workingDir', '/'))} && exec setpriv --reuid={user} --regid={user} "
        f"--init-groups env -i {env_args} {' '.join(shlex.quote(c) for c in command)}")
    log_path = os.path.join(folder, "container.log")
    started = time.monotonic()
    with open(log_path, "wb") as out:
        code = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(script)],
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    with open(termination, "rb") as f:
        message = f.read(MAX_MESSAGE).decode(errors="replace")
    if not message.strip() and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
        with open(log_path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        message = "\n".join(lines)[-2048:]
    # like the kubelet removing a finished pod's emptyDirs: BuildKit's state is large; the log stays
    shutil.rmtree(os.path.join(folder, "volumes"), ignore_errors=True)
    shutil.rmtree(os.path.join(folder, "home"), ignore_errors=True)
    log(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}: real BuildKit build exited {code} "
        f"after {time.monotonic() - started:.1f}s (log: {log_path})")
    return code, message
