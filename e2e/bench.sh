#!/usr/bin/env bash
# Benchmarks of the operator on the local control plane (e2e/env.sh), printing figures:
#
#   1. Kubernetes API requests per completed two-platform build (counted by the operator itself:
#      its multiarch_kube_api_requests_total metric, by verb), over BUILDS builds, and each build's
#      steps with the synthetic builder double, as a watching client sees them
#      (e2e/bench-steps.py): apply -> both builder Jobs created, the last builder pod done ->
#      Ready.
#   2. With IDLE finished MultiArchImage objects: the operator's memory (VmRSS and peak VmHWM from
#      /proc) once its caches are synced and every object was reconciled, the requests it made at
#      start-up, and the API writes it made over an idle window (the target is zero).
#   2b. With POLLED objects polling their branch every POLL_INTERVAL (next to the idle ones): the
#      git server's requests per minute (ref advertisements, from its log), the Kubernetes API
#      requests and writes, and the operator's CPU time over POLL_WINDOW seconds (the target: one
#      request per object per interval, no writes when nothing moved).
#   3. On real Karpenter (builders may use only the nodes it launches), KARPENTER_RUNS two-platform
#      builds from no Karpenter node: apply -> a NodeClaim per architecture, -> each builder bound
#      to a node, -> Ready, and the last builder finished -> the nodes gone (consolidation).
#   4. Scale: next to SCALE_IDLE idle objects (start-up time and memory with them), BUSY
#      two-platform objects created at once (8 client threads, the apiserver's pace) whose
#      builders never finish, on big KWOK nodes: when every builder Job exists and at what
#      rate, against the rate the objects themselves were created; the operator's requests per
#      object, the apiserver's mean latency by verb meanwhile (its own histogram), and memory.
#
# Parts 1 and 2 keep builders on the environment's static nodes (the static-node mode, for what
# needs many builders at once); part 3 gives them to Karpenter.
#
#   e2e/bench.sh             BUILDS=5 IDLE=1000 IDLE_WINDOW=60 POLLED=1000 POLL_INTERVAL=1m
#                            POLL_WINDOW=180 KARPENTER_RUNS=2 BUSY=1000 SCALE_IDLE=9000 by default (CONCURRENCY:
#                            the operator's --concurrency, else its default); PARTS="1 4"
#                            runs parts 1 and 4 alone (2 runs 2, 2b and 3, after 1)
#
# It uses the release build of the operator (cargo build --release). Timed figures vary with
# the machine; nothing here fails on a number.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
state=${E2E_STATE:-/tmp/multiarch-e2e}
BUILDS=${BUILDS:-5} IDLE=${IDLE:-1000} IDLE_WINDOW=${IDLE_WINDOW:-60} KARPENTER_RUNS=${KARPENTER_RUNS:-2}
POLLED=${POLLED:-1000} POLL_INTERVAL=${POLL_INTERVAL:-1m} POLL_WINDOW=${POLL_WINDOW:-180}
PARTS=${PARTS:-1 2 3 4} # part 1 alone: PARTS=1
BUSY=${BUSY:-1000} SCALE_IDLE=${SCALE_IDLE:-9000}
want() { [[ " $PARTS " == *" $1 "* ]]; }
METRICS=127.0.0.1:18191 HEALTH=127.0.0.1:18181

(cd "$root" && cargo build --release -q)
# one environment per machine (fixed ports), shared with e2e/run.sh: wait for a run that holds it
exec 9>"${TMPDIR:-/tmp}/multiarch-e2e-env.lock"
flock -n 9 || { echo "[bench] another end-to-end run holds the environment; waiting for it" >&2; flock 9; }
OPERATOR=$root/target/release/multiarch-operator
"$here/env.sh" up >/dev/null
# shellcheck source=/dev/null
source "$state/env"
pid=
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  [ -z "${proxy:-}" ] || kill "$proxy" 2>/dev/null || true
  "$here/env.sh" down >/dev/null 2>&1
}
trap cleanup EXIT

start() { # [karpenter]: builders go to Karpenter's nodes instead of the static ones
  local placement=(--builder-node-selector "$E2E_STATIC_KEY=true"
    --builder-tolerations "[{\"key\":\"$E2E_STATIC_KEY\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}]")
  [ "${1:-}" != karpenter ] || placement=()
  [ -z "${CONCURRENCY:-}" ] || placement+=(--concurrency "$CONCURRENCY")
  KUBECONFIG="$E2E_OPERATOR_KUBECONFIG" "$OPERATOR" run --registry-plain-http --health-addr $HEALTH \
    --metrics-addr $METRICS --log-level warn "${placement[@]}" >>"$state/bench-operator.log" 2>&1 </dev/null &
  pid=$!
  until curl -sf "http://$HEALTH/readyz" >/dev/null; do sleep 0.2; done
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
requests() { # verb -> count, as "verb=count ..." (all verbs) from the operator's metrics
  curl -sf "http://$METRICS/metrics" | python3 -c '
import re, sys
counts = {}
for line in sys.stdin:
    m = re.match(r"multiarch_kube_api_requests_total\{verb=\"(\w+)\"\} (\d+)", line)
    if m:
        counts[m.group(1)] = int(m.group(2))
print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))'
}
delta() { # before after -> per-verb differences divided by $3
  python3 - "$1" "$2" "$3" <<'EOF'
import sys
parse = lambda s: dict((kv.split("=")[0], int(kv.split("=")[1])) for kv in s.split())
before, after, n = parse(sys.argv[1]), parse(sys.argv[2]), int(sys.argv[3])
diff = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))}
total = sum(diff.values())
writes = sum(v for k, v in diff.items() if k in ("create", "update", "patch", "delete"))
print(f"{total / n:.1f} requests ({writes / n:.1f} writes): " + ", ".join(f"{k} {v / n:.1f}" for k, v in diff.items() if v))
EOF
}
manifest() { # name repository tag run: a two-platform MultiArchImage in namespace bench
  cat <<EOF
apiVersion: multiarch.dev/v1alpha1
kind: MultiArchImage
metadata: {name: $1, namespace: bench}
spec:
  source: {git: {url: "$E2E_GIT_URL", revision: main}}
  image: $E2E_REGISTRY/bench/$2
  tags: ["$3"]
  platforms: [linux/amd64, linux/arm64]
  buildArgs: [{name: RUN, value: "$4"}]
EOF
}
apply_build() { manifest "$@" | kubectl apply -f - >/dev/null; }
clone() { # source prefix count: copies of a finished object (same spec, so the same build) with
  # its status, like objects built and published long ago; needs the API proxy on port 18199
  python3 - "$@" <<'EOF'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
source, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = "http://127.0.0.1:18199/apis/multiarch.dev/v1alpha1/namespaces/bench/multiarchimages"
def call(method, url, body, ctype="application/json"):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method=method, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)
src = json.load(urllib.request.urlopen(f"{base}/{source}"))
def clone(i):
    name = f"{prefix}-{i:04d}"
    obj = {"apiVersion": src["apiVersion"], "kind": src["kind"], "metadata": {"name": name}, "spec": src["spec"]}
    created = call("POST", base, obj)
    created["status"] = src["status"]
    created["status"]["observedGeneration"] = created["metadata"]["generation"]
    call("PUT", f"{base}/{name}/status", created)
with ThreadPoolExecutor(8) as pool:
    list(pool.map(clone, range(count)))
EOF
}
proxy_up() { # the API proxy the Python helpers write through (port 18199)
  kubectl proxy --port=18199 >/dev/null 2>&1 &
  proxy=$!
  until curl -sf http://127.0.0.1:18199/version >/dev/null; do sleep 0.2; done
}
proxy_down() { kill "$proxy"; proxy=; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system time, clock ticks
reconciled() { # waits until the operator has reconciled $1 objects and is idle
  until [ "$(metric multiarch_reconciles_total)" -ge "$1" ] && [ "$(metric multiarch_queue_depth)" = 0 ] \
    && [ "$(metric multiarch_reconciles_in_flight)" = 0 ]; do sleep 0.5; done
}
metric() { curl -sf "http://$METRICS/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
mem() { awk '/^VmRSS|^VmHWM/ {printf "%s %.1f MiB  ", $1, $2 / 1024}' "/proc/$1/status"; }

: >"$state/bench-operator.log"
kubectl create namespace bench >/dev/null
if want 1; then
start
echo "== API requests per completed two-platform build ($BUILDS builds, one at a time)"
before=$(requests)
started=$SECONDS
steps=()
for i in $(seq "$BUILDS"); do
  # the steps as a watching client sees them: apply -> both builder Jobs created, the last builder
  # pod Succeeded, the object Ready
  step=$(manifest "build-$i" app "$i.0.0" "$i" | python3 "$here/bench-steps.py" bench "build-$i" 2)
  steps+=("$step")
  echo "  build $i: $(python3 -c 'import json, sys; s = json.loads(sys.argv[1]); print("apply -> builders created %.2fs, last builder done %.2fs, Ready %.2fs" % (s["builders_created"], s["last_builder_done"], s["ready"]))' "$step")"
done
python3 - "${steps[@]}" <<'EOF'
import json, statistics, sys
s = [json.loads(a) for a in sys.argv[1:]]
created = [x["builders_created"] for x in s]
to_ready = [x["ready"] - x["last_builder_done"] for x in s]
print(f"  median: apply -> builders created {statistics.median(created):.2f}s (max {max(created):.2f}s); "
      f"last builder done -> Ready {statistics.median(to_ready):.2f}s (max {max(to_ready):.2f}s)")
EOF
sleep 2 # the last status write's own watch event settles
after=$(requests)
echo "  per build: $(delta "$before" "$after" "$BUILDS")"
echo "  (the operator's watches are opened once at start-up and are not in these figures: $(requests))"
stop

fi

if want 2; then # parts 2, 2b and 3 (part 2 copies part 1's first object)
echo "== $IDLE idle (Succeeded) MultiArchImage objects"
proxy_up
t0=$SECONDS
clone build-1 idle "$IDLE"
echo "  created in $((SECONDS - t0))s"
proxy_down
objects=$(kubectl get mai -n bench -o name | wc -l)
t0=$SECONDS
start
reconciled "$objects"
echo "  start-up: every object reconciled $((SECONDS - t0))s after start ($(metric multiarch_reconciles_total) reconciles)"
echo "  start-up requests: $(requests)"
echo "  memory after start-up: $(mem "$pid")"
before=$(requests)
sleep "$IDLE_WINDOW"
after=$(requests)
echo "  over ${IDLE_WINDOW}s idle: $(delta "$before" "$after" 1)"
echo "  memory after the idle window: $(mem "$pid")"
echo "  objects by phase: $(curl -sf "http://$METRICS/metrics" | awk '/^multiarch_objects\{/ {printf "%s ", $0}')"

echo "== $POLLED objects polling their branch (pollInterval $POLL_INTERVAL), next to the idle ones"
kubectl apply -f - >/dev/null <<EOF
apiVersion: multiarch.dev/v1alpha1
kind: MultiArchImage
metadata: {name: poll-seed, namespace: bench}
spec:
  source: {git: {url: "$E2E_GIT_HTTP_URL", revision: main, pollInterval: $POLL_INTERVAL}}
  image: $E2E_REGISTRY/bench/polled
  tags: ["1.0.0"]
  platforms: [linux/amd64, linux/arm64]
EOF
kubectl wait -n bench mai/poll-seed --for=condition=Ready --timeout=120s >/dev/null
stop
proxy_up
clone poll-seed polled "$POLLED"
proxy_down
objects=$(kubectl get mai -n bench -o name | wc -l)
start
reconciled "$objects"
refs() { grep -c 'info/refs' "$state/git-http.log" || true; }
git0=$(refs) before=$(requests) cpu0=$(cpu "$pid") t0=$SECONDS
sleep "$POLL_WINDOW"
git1=$(refs) after=$(requests) cpu1=$(cpu "$pid") window=$((SECONDS - t0))
python3 - "$git0" "$git1" "$cpu0" "$cpu1" "$window" "$(getconf CLK_TCK)" <<'EOF'
import sys
g0, g1, c0, c1, window, tck = map(int, sys.argv[1:])
print(f"  git requests: {(g1 - g0) * 60 / window:.0f} per minute over {window}s")
print(f"  operator CPU: {(c1 - c0) / tck:.2f} s over {window}s ({100 * (c1 - c0) / tck / window:.1f}% of one core)")
EOF
echo "  Kubernetes API over the window: $(delta "$before" "$after" 1)"
echo "  memory: $(mem "$pid")"
stop

echo "== real Karpenter: $KARPENTER_RUNS two-platform builds, each from no Karpenter node"
kubectl delete mai -n bench --all --wait=false >/dev/null
start karpenter
for i in $(seq "$KARPENTER_RUNS"); do
  until [ "$(kubectl get nodeclaims -o name | wc -l)" -eq 0 ]; do sleep 1; done
  apply_build "karpenter-$i" karpenter "$i.0.0" "karpenter-$i"
  python3 - "karpenter-$i" <<'EOF'
# polls the apiserver (kubectl) every 0.2 s and prints when each step was first seen
import json, subprocess, sys, time
name, t0 = sys.argv[1], time.time()
get = lambda *a: json.loads(subprocess.run(["kubectl", "get", *a, "-o", "json"], check=True, capture_output=True, text=True).stdout)
seen, terminated = {}, {}
def mark(key):
    seen.setdefault(key, time.time() - t0)
while time.time() - t0 < 300:
    claims = get("nodeclaims")["items"]
    for c in claims:
        for r in c["spec"].get("requirements", []):
            if r["key"] == "kubernetes.io/arch" and len(r.get("values", [])) == 1:
                mark("nodeclaim " + r["values"][0])
    for p in get("pods", "-n", "bench", "-l", "multiarch.dev/image=" + name)["items"]:
        arch = p["spec"].get("nodeSelector", {}).get("kubernetes.io/arch", "?")
        if p["spec"].get("nodeName"):
            mark("bound " + arch)
        for s in p.get("status", {}).get("containerStatuses", []):
            if s.get("state", {}).get("terminated"):
                terminated.setdefault(p["metadata"]["name"], time.time() - t0)
    conditions = get("mai", "-n", "bench", name).get("status", {}).get("conditions", [])
    if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
        mark("Ready")
    if "Ready" in seen and not claims:
        mark("nodes gone")
        break
    time.sleep(0.2)
steps = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(seen.items(), key=lambda kv: kv[1]))
print(f"  {name}: from apply: {steps}")
finished = max(terminated.values(), default=None)  # when the last builder was first seen done
if finished is not None and "nodes gone" in seen:
    print(f"  {name}: last builder finished -> nodes gone {seen['nodes gone'] - finished:.1f}s")
EOF
done
stop
fi

if want 4; then
echo "== $BUSY two-platform objects building at once (builders that never finish), next to $(kubectl get mai -A --no-headers 2>/dev/null | wc -l) other objects"
# room for every builder: big KWOK nodes per architecture, copies of the static ones (KWOK runs
# no containers; the builder double leaves builders of the `hang` fault running)
for arch in amd64 arm64; do
  kubectl get node "kwok-$arch-1" -o json | python3 -c '
import json, sys
n = json.load(sys.stdin)
for i in range(1, 4):
    m = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"bench-{sys.argv[1]}-{i}",
         "labels": {**n["metadata"]["labels"], "kubernetes.io/hostname": f"bench-{sys.argv[1]}-{i}"},
         "annotations": {k: v for k, v in n["metadata"].get("annotations", {}).items() if k.startswith("kwok")}},
         "spec": {"taints": n["spec"].get("taints", [])},
         "status": {**n["status"], "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "1000", "ephemeral-storage": "100Ti"},
                    "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "1000", "ephemeral-storage": "100Ti"}}}
    print(json.dumps(m))' "$arch" | kubectl apply -f - >/dev/null
done
if [ "$SCALE_IDLE" -gt 0 ]; then
  # the idle objects beside them: copies of one built object, like objects published long ago
  kubectl get namespace bench >/dev/null 2>&1 || kubectl create namespace bench >/dev/null
  start
  apply_build scale-seed seed 1.0.0 seed
  kubectl wait -n bench mai/scale-seed --for=condition=Ready --timeout=120s >/dev/null
  stop
  proxy_up
  clone scale-seed scale "$SCALE_IDLE"
  proxy_down
fi
kubectl create namespace bench-busy >/dev/null
objects=$(kubectl get mai -A -o name | wc -l)
t0=$SECONDS
start
reconciled "$objects"
echo "  start-up with $objects objects: every one reconciled $((SECONDS - t0))s after start; memory: $(mem "$pid")"
apilat() { # the apiserver's own mean request latency by verb (its request-duration histogram)
  kubectl get --raw /metrics | python3 -c '
import re, sys
acc = {}
for line in sys.stdin:
    m = re.match(r"apiserver_request_duration_seconds_(sum|count)\{(.*)\} (\S+)", line)
    if not m: continue
    labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", m.group(2)))
    if labels.get("resource") not in ("jobs", "pods", "multiarchimages", "events"): continue
    key = labels["verb"] + " " + labels["resource"]
    acc.setdefault(key, [0.0, 0.0])[0 if m.group(1) == "sum" else 1] += float(m.group(3))
print(" ".join(f"{k.replace(chr(32), chr(47))}={s}:{c}" for k, (s, c) in sorted(acc.items())))'
}
lat0=$(apilat) before=$(requests)
proxy_up
python3 - "$BUSY" "$E2E_GIT_URL" "$E2E_REGISTRY" <<'EOF' &
# creates the objects as fast as 8 client threads can (the apiserver's own pace)
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
count, git, registry = int(sys.argv[1]), sys.argv[2], sys.argv[3]
base = "http://127.0.0.1:18199/apis/multiarch.dev/v1alpha1/namespaces/bench-busy/multiarchimages"
def create(i):
    obj = {"apiVersion": "multiarch.dev/v1alpha1", "kind": "MultiArchImage",
           "metadata": {"name": f"busy-{i:04d}", "annotations": {
               "e2e.multiarch.dev/fault.linux-amd64": "hang", "e2e.multiarch.dev/fault.linux-arm64": "hang"}},
           "spec": {"source": {"git": {"url": git, "revision": "main"}}, "image": f"{registry}/bench/busy-{i:04d}",
                    "tags": ["1.0.0"], "platforms": ["linux/amd64", "linux/arm64"]}}
    req = urllib.request.Request(base, data=json.dumps(obj).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=60).read()
t0 = time.time()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(create, range(count)))
took = time.time() - t0
print(f"  objects created in {took:.1f}s ({count / took:.0f}/s, 8 client threads: the apiserver's pace for creates)")
EOF
creator=$!
python3 - "$((2 * BUSY))" <<'EOF'
# counts the builder Jobs as a watching client sees them, from the first object's creation
import json, subprocess, sys, time
want = int(sys.argv[1])
proc = subprocess.Popen(["kubectl", "get", "jobs", "-n", "bench-busy", "--watch", "-o",
                         "jsonpath={.metadata.name}{\"\\n\"}"], stdout=subprocess.PIPE, text=True)
seen, t0, first = set(), time.time(), None
for line in proc.stdout:
    seen.add(line.strip())
    first = first or time.time()
    if len(seen) in (want // 4, want // 2, want):
        print(f"  {len(seen)} builder Jobs {time.time() - t0:.1f}s after the creates began")
    if len(seen) >= want or time.time() - t0 > 1200:
        break
proc.kill()
took = time.time() - t0
print(f"  every builder: {len(seen)} Jobs in {took:.1f}s ({len(seen) / took:.1f} Jobs/s)")
EOF
wait "$creator"
proxy_down
t0=$SECONDS
until [ "$(kubectl get mai -n bench-busy -o json | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
print(sum(1 for o in items if (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
          and len([p for p in o["status"].get("platforms", []) if p.get("builder")]) == 2))')" -ge "$BUSY" ]; do sleep 1; done
echo "  every object's status names both builders $((SECONDS - t0))s after the last Job appeared"
reconciled "$BUSY"
echo "  the operator idle again $((SECONDS - t0))s after the last Job appeared (KWOK running $((2 * BUSY)) pods and the builder double looking at each, on the same cores)"
after=$(requests) lat1=$(apilat)
echo "  per object: $(delta "$before" "$after" "$BUSY")"
python3 - "$lat0" "$lat1" <<'EOF'
import sys
parse = lambda s: {k: tuple(map(float, v.split(":"))) for k, v in (kv.split("=") for kv in s.split())}
a, b = parse(sys.argv[1]), parse(sys.argv[2])
rows = []
for k in sorted(b):
    s0, c0 = a.get(k, (0.0, 0.0))
    s1, c1 = b[k]
    if c1 - c0 >= 10:
        rows.append(f"{k} {1000 * (s1 - s0) / (c1 - c0):.0f} ms ({int(c1 - c0)})")
print("  the apiserver's mean latency meanwhile (requests): " + ", ".join(rows))
EOF
echo "  memory: $(mem "$pid")"
stop
kubectl delete namespace bench-busy --wait=false >/dev/null
kubectl delete mai -n bench --all --wait=false >/dev/null 2>&1 || true
kubectl delete node bench-amd64-{1,2,3} bench-arm64-{1,2,3} --wait=false >/dev/null
fi
