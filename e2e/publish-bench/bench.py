#!/usr/bin/env python3
"""The publish benchmark: `multiarch-operator publish` and the tools people use to assemble a
multi-platform index (crane, regctl, oras, `docker buildx imagetools create`; skopeo as a
yardstick) on the same images, in one run, through a counting proxy in front of a real registry
(Debian's docker-registry, the CNCF distribution registry, plain HTTP on loopback, no auth).

For each N in NS, N single-platform images are pushed by digest into one repository; every tool
then publishes them as one index to two new tags of that repository, RUNS times, the tools
interleaved run by run (the order rotating), each invocation timed and its requests counted by
kind. Then each tool is given what it should refuse: an index that lists an amd64 image as
linux/arm64 (what `docker manifest annotate --arch` makes), two images of one platform, and an
image whose config has no platform. It prints figures, and never fails on a number.

    bench.py --publish BIN --tools DIR [--runs 9] [--ns 2,4,8]
"""

import argparse
import hashlib
import http.client
import http.server
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
PLATFORMS = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le", "linux/s390x",
             "linux/386", "linux/riscv64", "linux/arm/v6"]
REPO = "bench/app"
PEERS = ["crane", "regctl", "oras", "imagetools"]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te",
              "trailer", "upgrade", "proxy-connection"}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- the counting proxy ------------------------------------------------------------------------

def kind(method, path):
    """What a request is: `GET manifest`, `PUT manifest`, `HEAD blob`, `upload`, `ping`..."""
    if path.rstrip("/") == "/v2":
        return f"{method} /v2/"
    if "/blobs/uploads" in path:
        return f"{method} upload"
    if "/manifests/" in path:
        return f"{method} manifest"
    if "/blobs/" in path:
        return f"{method} blob"
    if path.endswith("/tags/list"):
        return f"{method} tags"
    if "/referrers/" in path:
        return f"{method} referrers"
    return f"{method} other"


class Counter:
    """Requests and connections seen since the last reset."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.kinds = {}
            self.connections = set()
            self.total = 0

    def add(self, k, connection):
        with self.lock:
            self.kinds[k] = self.kinds.get(k, 0) + 1
            self.connections.add(connection)
            self.total += 1

    def snapshot(self):
        with self.lock:
            return {"total": self.total, "kinds": dict(self.kinds),
                    "connections": len(self.connections)}


def start_proxy(upstream, counter):
    """A keep-alive HTTP/1.1 proxy to `upstream` (host:port) counting every request."""
    local = threading.local()
    connection_ids = iter(range(1, 1 << 30))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            # no Nagle: a keep-alive client waiting for the end of an answer sent in two writes
            # would wait for a delayed ACK (40 ms) each time, which is the proxy's, not the tool's
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connection_id = next(connection_ids)

        def log_message(self, *args):
            pass

        def body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def forward(self):
            counter.add(kind(self.command, self.path.split("?")[0]), self.connection_id)
            body = self.body()
            # every header line as sent (clients repeat Accept)
            headers = [(k, v) for k, v in self.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() != "host"]
            if body or self.command in ("PUT", "POST", "PATCH"):
                headers.append(("Content-Length", str(len(body))))
            for attempt in range(2):
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection(upstream, timeout=60)
                    conn.connect()
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    conn.putrequest(self.command, self.path, skip_accept_encoding=True)
                    for k, v in headers:
                        conn.putheader(k, v)
                    conn.endheaders(body or None)
                    answer = conn.getresponse()
                    data = answer.read()
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    local.conn = None
                    if attempt:
                        raise
            self.send_response_only(answer.status, answer.reason)
            for k, v in answer.getheaders():
                if k.lower() in HOP_BY_HOP:
                    continue
                self.send_header(k, v.replace(upstream, self.headers.get("Host", upstream)))
            # a HEAD answer says the length of what a GET would send
            length = answer.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            # the answer in one write
            self._headers_buffer.append(b"\r\n")
            if self.command != "HEAD":
                self._headers_buffer.append(data)
            self.wfile.write(b"".join(self._headers_buffer))
            self._headers_buffer = []

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}", server


# --- the registry and its images ----------------------------------------------------------------

def start_registry(workdir):
    port = free_port()
    config = os.path.join(workdir, "registry.yml")
    with open(config, "w") as f:
        f.write(f"""version: 0.1
log: {{level: error, accesslog: {{disabled: true}}}}
storage:
  filesystem: {{rootdirectory: {workdir}/storage}}
  delete: {{enabled: true}}
http: {{addr: "127.0.0.1:{port}", secret: bench}}
""")
    out = open(os.path.join(workdir, "registry.log"), "w")
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=out, stderr=out)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return f"127.0.0.1:{port}", proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("docker-registry did not start")


class Pusher:
    """Pushes blobs and manifests straight to the registry (not through the proxy)."""

    def __init__(self, host):
        self.conn = http.client.HTTPConnection(host, timeout=30)

    def call(self, method, path, body=None, headers=None):
        self.conn.request(method, path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        data = r.read()
        if r.status >= 300:
            raise SystemExit(f"{method} {path}: {r.status} {data[:200]!r}")
        return r, data

    def blob(self, data):
        r, _ = self.call("POST", f"/v2/{REPO}/blobs/uploads/", b"", {"Content-Length": "0"})
        location = r.getheader("Location")
        location = location.split("://", 1)[1].split("/", 1)[1] if "://" in location else location.lstrip("/")
        sep = "&" if "?" in location else "?"
        self.call("PUT", f"/{location}{sep}digest={sha256(data)}", data,
                  {"Content-Type": "application/octet-stream"})
        return {"mediaType": None, "digest": sha256(data), "size": len(data)}

    def manifest(self, doc, media_type, tag=None):
        data = json.dumps(doc, separators=(",", ":")).encode()
        self.call("PUT", f"/v2/{REPO}/manifests/{tag or sha256(data)}", data,
                  {"Content-Type": media_type})
        return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}

    def image(self, platform, salt):
        """An image whose config says `platform` (None: no platform at all)."""
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as tar:
            content = f"{platform} {salt}\n".encode()
            info = tarfile.TarInfo("etc/bench")
            info.size = len(content)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
        layer = layer.getvalue()
        config = {"rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
                  "config": {"Cmd": ["/bin/sh"]}}
        if platform:
            os_, arch, *variant = platform.split("/")
            config.update({"os": os_, "architecture": arch})
            if variant:
                config["variant"] = variant[0]
        c = self.blob(json.dumps(config).encode())
        c["mediaType"] = CONFIG
        lay = self.blob(layer)
        lay["mediaType"] = LAYER
        return self.manifest({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": c,
                              "layers": [lay]}, OCI_MANIFEST)

    def lying_index(self, image, listed_as, tag):
        os_, arch = listed_as.split("/")[:2]
        entry = dict(image, platform={"os": os_, "architecture": arch})
        return self.manifest({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]},
                             OCI_INDEX, tag)


def read_index(host, tag):
    """The manifest at `tag` (through no proxy), or None."""
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request("GET", f"/v2/{REPO}/manifests/{tag}",
                 headers={"Accept": f"{OCI_INDEX}, application/vnd.docker.distribution.manifest.list.v2+json, {OCI_MANIFEST}"})
    r = conn.getresponse()
    data = r.read()
    return json.loads(data) if r.status == 200 else None


# --- the tools --------------------------------------------------------------------------------

class Tools:
    def __init__(self, args, proxy, workdir):
        self.publish = args.publish
        self.bin = args.tools
        self.proxy = proxy
        self.env = dict(os.environ, HOME=workdir, DOCKER_CONFIG=os.path.join(workdir, "docker"),
                        REGCTL_CONFIG=os.path.join(workdir, "regctl.json"),
                        RUST_LOG="warn", BUILDX_CONFIG=os.path.join(workdir, "buildx"))
        os.makedirs(self.env["DOCKER_CONFIG"], exist_ok=True)
        with open(os.path.join(self.env["DOCKER_CONFIG"], "config.json"), "w") as f:
            f.write("{}")
        # regctl: plain HTTP to the proxy
        self.run(["regctl", "registry", "set", "--tls", "disabled", proxy], check=True)
        self.available = [t for t in ["publish"] + PEERS + ["skopeo"] if self.have(t)]

    def exe(self, tool):
        if tool == "publish":
            return self.publish
        if tool == "skopeo":
            return shutil.which("skopeo")
        return os.path.join(self.bin, {"imagetools": "buildx"}.get(tool, tool))

    def have(self, tool):
        path = self.exe(tool)
        return bool(path) and os.access(path, os.X_OK)

    def run(self, argv, check=False):
        argv = [self.exe(argv[0])] + argv[1:]
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=300)
        if check and r.returncode != 0:
            raise SystemExit(f"{argv}: {r.stderr}")
        return r

    def commands(self, tool, sources, tags, platforms=None, index=None):
        """The commands with which `tool` publishes `sources` (digests, or `REPO:tag` of an
        index) to `tags`; `platforms` labels them where the tool takes a label."""
        p = self.proxy
        ref = lambda s: f"{p}/{REPO}{s if s.startswith(':') else '@' + s}"
        if tool == "publish":
            argv = ["publish", "publish", "--plain-http"]
            for t in tags:
                argv += ["--tag", f"{p}/{REPO}:{t}"]
            for i, s in enumerate(sources):
                label = platforms[i] if platforms else None
                argv.append(f"{label}={ref(s)}" if label else ref(s))
            return [argv]
        if tool == "crane":
            argv = ["crane", "index", "append", "--insecure", "-t", f"{p}/{REPO}:{tags[0]}"]
            for s in sources:
                argv += ["-m", ref(s)]
            return [argv] + [["crane", "tag", "--insecure", f"{p}/{REPO}:{tags[0]}", t]
                             for t in tags[1:]]
        if tool == "regctl":
            argv = ["regctl", "index", "create", f"{p}/{REPO}:{tags[0]}"]
            for s in sources:
                argv += ["--ref", ref(s)]
            for label in platforms or []:
                argv += ["--platform", label]
            return [argv] + [["regctl", "image", "copy", f"{p}/{REPO}:{tags[0]}",
                              f"{p}/{REPO}:{t}"] for t in tags[1:]]
        if tool == "oras":
            return [["oras", "manifest", "index", "create", "--plain-http",
                     f"{p}/{REPO}:{','.join(tags)}"] + [s if not s.startswith(":") else s[1:]
                                                          for s in sources]]
        if tool == "imagetools":
            argv = ["imagetools", "imagetools", "create"]
            for t in tags:
                argv += ["-t", f"{p}/{REPO}:{t}"]
            return [argv + [ref(s) for s in sources]]
        if tool == "skopeo":
            # skopeo cannot assemble an index: the yardstick copies one (the index `publish`
            # made of the same images) to each tag, as a general copy tool does
            return [["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                     "--dest-tls-verify=false", f"docker://{p}/{REPO}@{index}",
                     f"docker://{p}/{REPO}:{t}"] for t in tags]
        raise ValueError(tool)


def run_tool(tools, counter, tool, sources, tags, **kw):
    counter.reset()
    start = time.perf_counter()
    ok, errors = True, []
    for argv in tools.commands(tool, sources, tags, **kw):
        r = tools.run(argv)
        if r.returncode != 0:
            ok = False
            errors.append((r.stderr or r.stdout).strip().splitlines()[-1:] or [""])
            break
    elapsed = time.perf_counter() - start
    return ok, elapsed, counter.snapshot(), " ".join(e[0] for e in errors)


# --- the benchmark ----------------------------------------------------------------------------

def timing(tools, counter, pusher, registry, ns, runs):
    results = {}  # (tool, n) -> {"times": [], "counts": snapshot}
    for n in ns:
        digests = [pusher.image(PLATFORMS[i], f"n{n}")["digest"] for i in range(n)]
        # the index publish makes of them, for the skopeo yardstick
        ok, _, _, err = run_tool(tools, counter, "publish", digests, [f"ref-{n}"],
                                 platforms=None)
        if not ok:
            raise SystemExit(f"publish failed: {err}")
        index = sha256(json.dumps(read_index(registry, f"ref-{n}"), separators=(",", ":")).encode())
        order = list(tools.available)
        for run in range(runs):
            order = order[1:] + order[:1]
            for tool in order:
                tags = [f"{tool}-{n}-{run}-a", f"{tool}-{n}-{run}-b"]
                ok, elapsed, counts, err = run_tool(tools, counter, tool, digests, tags,
                                                    index=index)
                r = results.setdefault((tool, n), {"times": [], "counts": counts, "errors": []})
                if ok:
                    r["times"].append(elapsed)
                else:
                    r["errors"].append(err)
        log(f"N={n}: {runs} runs of {', '.join(order)}")
    return results


def describe(entry):
    """An index entry as `linux/arm64`, `(no platform)`, or `an index (nested)`."""
    if entry.get("mediaType") in (OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json"):
        return "an index (nested)"
    p = entry.get("platform")
    return "{os}/{architecture}".format(**p) if p else "(no platform)"


def verification(tools, counter, pusher, registry):
    """What each tool does with what it should refuse: accepted (published) or refused."""
    amd64 = pusher.image("linux/amd64", "verify amd64")
    amd64b = pusher.image("linux/amd64", "verify amd64 again")
    arm64 = pusher.image("linux/arm64", "verify arm64")
    none = pusher.image(None, "verify no platform")
    pusher.lying_index(amd64, "linux/arm64", "lying")
    cases = {
        "mislabelled": dict(sources=[":lying"], platforms=["linux/arm64"]),
        "two of one platform": dict(sources=[amd64["digest"], amd64b["digest"]], platforms=None),
        "no platform": dict(sources=[arm64["digest"], none["digest"]], platforms=None),
    }
    out = {}
    for tool in tools.available:
        if tool == "skopeo":
            continue
        for case, kw in cases.items():
            tag = f"verify-{tool}-{case.replace(' ', '-')}"
            # the label goes where a tool takes one: publish's PLATFORM=, regctl's --platform
            label = kw["platforms"] if tool in ("publish", "regctl") else None
            ok, _, _, err = run_tool(tools, counter, tool, kw["sources"], [tag], platforms=label)
            published = read_index(registry, tag)
            if ok and published is not None:
                out[(tool, case)] = "accepted: " + ", ".join(
                    describe(m) for m in published.get("manifests", []))
            else:
                why = err.replace("error: nothing written: ", "").replace(f"{tools.proxy}/", "")
                out[(tool, case)] = "refused" + (f" ({why[:70]})" if why else "")
    return out


def report(results, checks, tools, ns, runs):
    def med(t):
        return statistics.median(t) if t else float("nan")
    print(f"\n## publish benchmark: {runs} runs per tool and N, two tags, tools interleaved\n")
    print("| tool | N | median s | min s | requests | requests by kind | connections | x fastest peer |")
    print("|---|---|---|---|---|---|---|---|")
    for n in ns:
        peers = [med(results[(t, n)]["times"]) for t in PEERS if (t, n) in results
                 and results[(t, n)]["times"]]
        fastest = min(peers) if peers else float("nan")
        for tool in tools.available:
            r = results[(tool, n)]
            t = r["times"]
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["counts"]["kinds"].items()))
            failed = f" ({len(r['errors'])} failed: {r['errors'][0][:80]})" if r["errors"] else ""
            print(f"| {tool} | {n} | {med(t):.3f} | {min(t) if t else float('nan'):.3f} | "
                  f"{r['counts']['total']} | {kinds} | {r['counts']['connections']} | "
                  f"{med(t) / fastest:.2f}{failed} |")
    print("\n## what each tool accepts that it should refuse\n")
    cases = ["mislabelled", "two of one platform", "no platform"]
    print("| tool | " + " | ".join(cases) + " |")
    print("|---|" + "---|" * len(cases))
    for tool in tools.available:
        if tool == "skopeo":
            continue
        print(f"| {tool} | " + " | ".join(checks[(tool, c)] for c in cases) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--publish", required=True, help="the multiarch-operator binary")
    ap.add_argument("--tools", required=True, help="the directory of crane, regctl, oras, buildx")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--ns", default="2,4,8")
    args = ap.parse_args()
    ns = [int(n) for n in args.ns.split(",")]
    workdir = tempfile.mkdtemp(prefix="publish-bench-")
    registry, proc = start_registry(workdir)
    counter = Counter()
    proxy, server = start_proxy(registry, counter)
    try:
        tools = Tools(args, proxy, workdir)
        missing = [t for t in ["publish"] + PEERS + ["skopeo"] if t not in tools.available]
        if missing:
            log(f"left out (not built or not installed): {', '.join(missing)}")
        pusher = Pusher(registry)
        results = timing(tools, counter, pusher, registry, ns, args.runs)
        checks = verification(tools, counter, pusher, registry)
        report(results, checks, tools, ns, args.runs)
    finally:
        server.shutdown()
        proc.terminate()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
