#!/usr/bin/env python3
"""Applies one MultiArchImage (its manifest on standard input) and times, from the apply, the
steps a user waits for, as a client watching the API sees them: each builder Job created, each
builder pod done (Succeeded), and the object Ready for its generation. Prints one JSON line:
  {"builders_created": s, "last_builder_done": s, "ready": s, "jobs": n}
(seconds after the apply). Used by e2e/bench.sh; it fails only when the object is not Ready in
time.

  bench-steps.py NAMESPACE NAME PLATFORMS [TIMEOUT]
"""

import json
import subprocess
import sys
import threading
import time

ns, name, platforms = sys.argv[1], sys.argv[2], int(sys.argv[3])
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 120
selector = f"multiarch.dev/image={name}"
lock = threading.Condition()
jobs, done_pods, seen = {}, {}, {}


def watch(kind, on_object, selector_args):
    proc = subprocess.Popen(["kubectl", "get", kind, "-n", ns, "--watch", "-o", "json", *selector_args],
                            stdout=subprocess.PIPE, text=True)
    decoder, buf = json.JSONDecoder(), ""
    for chunk in iter(lambda: proc.stdout.readline(), ""):
        buf += chunk
        while buf.strip():
            try:
                obj, end = decoder.raw_decode(buf.lstrip())
            except ValueError:
                break
            buf = buf.lstrip()[end:]
            with lock:
                on_object(obj, time.monotonic())
                lock.notify_all()
    return proc


def on_job(obj, t):
    jobs.setdefault(obj["metadata"]["name"], t)


def on_pod(obj, t):
    if obj.get("status", {}).get("phase") == "Succeeded":
        done_pods.setdefault(obj["metadata"]["name"], t)


def on_object(obj, t):
    if obj["metadata"]["name"] != name:
        return
    generation = obj["metadata"].get("generation")
    status = obj.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
    if ready and status.get("observedGeneration") == generation:
        seen.setdefault("ready", t)


for kind, handler, args in (("jobs", on_job, ["-l", selector]), ("pods", on_pod, ["-l", selector]),
                            ("multiarchimages.multiarch.dev", on_object, [])):
    threading.Thread(target=watch, args=(kind, handler, args), daemon=True).start()
time.sleep(1.0)  # the watches' initial lists are in
manifest = sys.stdin.read()
t0 = time.monotonic()
subprocess.run(["kubectl", "apply", "-f", "-"], input=manifest, text=True, check=True, stdout=subprocess.DEVNULL)
deadline = t0 + timeout
with lock:
    while "ready" not in seen and time.monotonic() < deadline:
        lock.wait(deadline - time.monotonic())
if "ready" not in seen:
    sys.exit(f"bench-steps: {ns}/{name} not Ready within {timeout:.0f}s")
created = sorted(jobs.values())
finished = sorted(done_pods.values())
print(json.dumps({
    "builders_created": round(created[platforms - 1] - t0, 3) if len(created) >= platforms else None,
    "last_builder_done": round(finished[-1] - t0, 3) if finished else None,
    "ready": round(seen["ready"] - t0, 3),
    "jobs": len(created),
}))
