#!/usr/bin/env python3
"""Makes the base images the sample's Dockerfile builds FROM and pushes them to the local registry
(there is no public registry here):

  base/busybox  linux/amd64 + linux/arm64 index: Debian's busybox-static, /bin/sh and applets
  base/golang   linux/amd64: that busybox plus the Go toolchain installed on this machine
  buildkit/sbom-scanner:e2e  linux/amd64: the suite's SBOM generator (e2e/tools/sbom-scanner,
                syft behind BuildKit's scanner protocol), when its binary is given

Layers are built once and cached (deterministic tar.gz) under ~/.cache/multiarch-operator/base-images;
a run with a warm cache only pushes.

  base_images.py REGISTRY [SCANNER]   (REGISTRY: host:port, plain HTTP; SCANNER: the scanner's
                                      static linux/amd64 binary)
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

CACHE = os.path.expanduser("~/.cache/multiarch-operator/base-images")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def log(msg):
    print(f"[base-images] {msg}", file=sys.stderr, flush=True)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def busybox_deb(arch):
    """Debian's busybox-static .deb for arch, downloaded once with a private apt state (the
    machine's dpkg architectures are left alone)."""
    os.makedirs(CACHE, exist_ok=True)
    for name in os.listdir(CACHE):
        if name.startswith("busybox-static_") and name.endswith(f"_{arch}.deb"):
            return os.path.join(CACHE, name)
    state = os.path.join(CACHE, f"apt-{arch}")
    for d in ("lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(state, d), exist_ok=True)
    opts = ["-o", f"Dir::State::Lists={state}/lists", "-o", f"Dir::Cache={state}/cache",
            "-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures::={arch}",
            "-o", "APT::Sandbox::User=root"]
    subprocess.run(["apt-get", *opts, "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", *opts, "download", "-qq", f"busybox-static:{arch}"], check=True,
                   cwd=CACHE, stdout=subprocess.DEVNULL)
    return busybox_deb(arch)


def add_dir(tar, name, mode=0o755):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
    tar.addfile(info)


def deterministic_gzip(raw):
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(raw)
    return out.getvalue()


def cached_layer(key, make):
    """(compressed, diff_id) of a layer, from the cache or made by make() -> uncompressed tar."""
    path = os.path.join(CACHE, f"{key}.tar.gz")
    meta = path + ".json"
    if os.path.exists(path) and os.path.exists(meta):
        with open(path, "rb") as f:
            return f.read(), json.load(open(meta))["diff_id"]
    log(f"making layer {key}")
    raw = make()
    data = deterministic_gzip(raw)
    os.makedirs(CACHE, exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)
    json.dump({"diff_id": sha256(raw)}, open(meta, "w"))
    return data, sha256(raw)


def busybox_layer(arch):
    deb = busybox_deb(arch)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
        binary = open(os.path.join(tmp, "bin", "busybox"), "rb").read()
    # the applet list of the amd64 build (same version for every arch)
    amd64 = busybox_deb("amd64")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", amd64, tmp], check=True)
        applets = subprocess.run([os.path.join(tmp, "bin", "busybox"), "--list"], check=True,
                                 capture_output=True, text=True).stdout.split()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "etc", "root", "usr", "usr/bin"):
            add_dir(tar, d)
        add_dir(tar, "tmp", 0o1777)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode, info.mtime = len(binary), 0o755, 0
        tar.addfile(info, io.BytesIO(binary))
        for applet in sorted(set(applets) - {"busybox"}):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode, link.mtime = tarfile.SYMTYPE, "busybox", 0o777, 0
            tar.addfile(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode, info.mtime = len(passwd), 0o644, 0
        tar.addfile(info, io.BytesIO(passwd))
    return out.getvalue()


def go_layer(goroot):
    skip = ("/testdata/", "/test/", "/api/", "/doc/", "/misc/")

    def keep(info):
        path = "/" + info.name + ("/" if info.isdir() else "")
        if any(s in path for s in skip) or info.name.endswith("_test.go"):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add_dir(tar, "usr")
        add_dir(tar, "usr/local")
        tar.add(goroot, arcname="usr/local/go", filter=keep)
    return out.getvalue()


class Registry:
    def __init__(self, host):
        self.base = f"http://{host}/v2"

    def request(self, method, url, data=None, headers=None):
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.headers, resp.read()

    def has_blob(self, repo, digest):
        try:
            self.request("HEAD", f"{self.base}/{repo}/blobs/{digest}")
            return True
        except urllib.error.HTTPError:
            return False

    def blob(self, repo, data):
        digest = sha256(data)
        if not self.has_blob(repo, digest):
            _, headers, _ = self.request("POST", f"{self.base}/{repo}/blobs/uploads/", b"")
            location = headers["Location"]
            if location.startswith("/"):
                location = self.base[: -len("/v2")] + location
            sep = "&" if "?" in location else "?"
            self.request("PUT", f"{location}{sep}digest={digest}", data,
                         {"Content-Type": "application/octet-stream"})
        return {"digest": digest, "size": len(data)}

    def manifest(self, repo, ref, media_type, body):
        data = json.dumps(body, separators=(",", ":")).encode()
        self.request("PUT", f"{self.base}/{repo}/manifests/{ref}", data, {"Content-Type": media_type})
        return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


def scanner_layer(binary):
    data = open(binary, "rb").read()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add_dir(tar, "bin")
        add_dir(tar, "tmp", 0o1777)
        info = tarfile.TarInfo("bin/sbom-scanner")
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def image(reg, repo, arch, layers, env, command=None):
    config = {
        "architecture": arch, "os": "linux",
        "config": {"Env": env, "WorkingDir": "/", **(command or {"Cmd": ["/bin/sh"]})},
        "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]},
    }
    config_blob = json.dumps(config, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **reg.blob(repo, config_blob)},
        "layers": [{"mediaType": OCI_LAYER, **reg.blob(repo, data)} for data, _ in layers],
    }
    desc = reg.manifest(repo, sha256(json.dumps(manifest, separators=(",", ":")).encode()),
                        OCI_MANIFEST, manifest)
    desc["platform"] = {"architecture": arch, "os": "linux"}
    return desc


def main():
    reg = Registry(sys.argv[1])
    path = "PATH=/usr/local/go/bin:/bin:/usr/bin"
    busybox = {arch: cached_layer(f"busybox-{arch}", lambda a=arch: busybox_layer(a))
               for arch in ("amd64", "arm64")}
    manifests = [image(reg, "base/busybox", arch, [busybox[arch]], [path]) for arch in ("amd64", "arm64")]
    reg.manifest("base/busybox", "latest", OCI_INDEX,
                 {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})

    goroot = subprocess.run(["go", "env", "GOROOT"], check=True, capture_output=True, text=True).stdout.strip()
    version = subprocess.run(["go", "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout.strip()
    go = cached_layer(f"golang-{version}-amd64", lambda: go_layer(goroot))
    env = [path, "GOTOOLCHAIN=local", "GOCACHE=/tmp/go-cache", "GOPATH=/tmp/go", "HOME=/tmp"]
    golang = image(reg, "base/golang", "amd64", [busybox["amd64"], go], env)
    reg.manifest("base/golang", "latest", OCI_INDEX,
                 {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [golang]})
    log(f"pushed base/busybox (amd64, arm64) and base/golang ({version}, amd64) to {sys.argv[1]}")

    if len(sys.argv) > 2:
        # BuildKit runs a generator's entrypoint with the BUILDKIT_SCAN_* variables
        binary = sys.argv[2]
        with open(binary, "rb") as f:
            key = hashlib.sha256(f.read()).hexdigest()[:16]
        layer = cached_layer(f"sbom-scanner-{key}", lambda: scanner_layer(binary))
        scanner = image(reg, "buildkit/sbom-scanner", "amd64", [layer], ["PATH=/bin"],
                        {"Entrypoint": ["/bin/sbom-scanner"]})
        reg.manifest("buildkit/sbom-scanner", "e2e", OCI_INDEX,
                     {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [scanner]})
        log(f"pushed buildkit/sbom-scanner:e2e (amd64) to {sys.argv[1]}")


if __name__ == "__main__":
    main()
