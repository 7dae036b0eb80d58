#!/usr/bin/env bash
# The end-to-end suite: brings up the environment (e2e/env.sh), runs the operator out of cluster
# with its ServiceAccount's token (so RBAC is exercised as in a cluster), and runs each scenario in
# its own namespace, waiting on conditions. Builder pods are run by the builder test double: with
# real rootless BuildKit executing the pod's own command in namespaces labelled
# e2e.multiarch.dev/builder=buildkit, with synthetic images elsewhere (the fault scenarios); see the
# README for what is real in each scenario. Ends with "N passed, M failed".
#
#   e2e/run.sh [SCENARIO...]     default: all scenarios
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
state=${E2E_STATE:-/tmp/multiarch-e2e}
passed=0 failed=0 failures=()

"$here/env.sh" up || { echo "e2e: the environment did not come up" >&2; exit 1; }
# shellcheck source=/dev/null
source "$state/env"
trap 'stop_operator KILL; "$here/env.sh" down >/dev/null 2>&1' EXIT
(cd "$root" && cargo build -q) || exit 1
: >"$state/operator.log"
OPERATOR=$root/target/debug/multiarch-operator
OPERATOR_ARGS=()

start_operator() { # [FAILPOINT]; extra flags in the array OPERATOR_ARGS
  env ${1:+MULTIARCH_FAILPOINT=$1} KUBECONFIG="$E2E_OPERATOR_KUBECONFIG" setsid "$OPERATOR" run --registry-plain-http \
    --health-addr 127.0.0.1:18081 --metrics-addr 127.0.0.1:18091 --provisioning-timeout 15m \
    "${OPERATOR_ARGS[@]}" >>"$state/operator.log" 2>&1 < /dev/null &
  echo $! >"$state/operator.pid"
  local deadline=$((SECONDS + 60))
  until curl -sf http://127.0.0.1:18081/readyz >/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "operator not ready${1:+ (fail point $1)}" >&2; return 1; }
    kill -0 "$(cat "$state/operator.pid")" 2>/dev/null || { echo "operator exited" >&2; return 1; }
    sleep 0.3
  done
}
stop_operator() { # [SIGNAL]: a TERM that is not obeyed within 20s becomes a KILL
  [ -f "$state/operator.pid" ] || return 0
  local pid; pid=$(cat "$state/operator.pid")
  kill -"${1:-TERM}" "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then echo "    the operator ignored SIG${1:-TERM} for 20s: killing it" >&2; kill -9 "$pid"; fi
  wait "$pid" 2>/dev/null || true
}

fail() { echo "    FAIL: $*" >&2; return 1; }
expect_eq() { [ "$1" = "$2" ] || fail "$3: expected '$2', got '$1'"; }
expect_contains() { [[ "$1" == *"$2"* ]] || fail "$3: '$1' does not contain '$2'"; }

mai() { # namespace name platforms-json [extra spec yaml lines] [annotations yaml]
  kubectl apply -f - >/dev/null <<EOF
apiVersion: multiarch.dev/v1alpha1
kind: MultiArchImage
metadata:
  name: $2
  namespace: $1
  annotations: {${5:-}}
spec:
  source:
    git: {url: "$E2E_GIT_URL", revision: main}
  image: $E2E_REGISTRY/$1/$2
  tags: ["1.0.0", "latest"]
  platforms: $3
${4:-}
EOF
}
status() { kubectl get mai -n "$1" "$2" -o jsonpath="$3"; }
wait_reason() { # ns name condition reason [timeout]
  kubectl wait -n "$1" "mai/$2" --for=jsonpath="{.status.conditions[?(@.type==\"$3\")].reason}=$4" --timeout="${5:-90s}" >/dev/null \
    || fail "$2: condition $3 never had reason $4: $(kubectl get mai -n "$1" "$2" -o jsonpath='{.status.conditions}')"
}
tags_of() { skopeo list-tags --tls-verify=false "docker://$E2E_REGISTRY/$1" 2>/dev/null | python3 -c 'import json,sys; print(" ".join(sorted(json.load(sys.stdin)["Tags"] or [])))' 2>/dev/null; }
raw() { skopeo inspect --raw --tls-verify=false "docker://$E2E_REGISTRY/$1"; }
new_ns() { kubectl create namespace "$1" >/dev/null; }

# 1. The everyday case: amd64 + arm64, tags 1.0.0 and latest, built by real rootless BuildKit
#    running each builder pod's own command (the namespace label selects the double's real mode).
scenario_everyday() {
  local ns=e2e-everyday
  new_ns $ns
  kubectl label namespace $ns e2e.multiarch.dev/builder=buildkit >/dev/null
  local t0=$SECONDS
  mai $ns apiping '["linux/amd64", "linux/arm64"]'
  kubectl wait -n $ns mai/apiping --for=condition=Ready --timeout=600s >/dev/null || fail "not Ready: $(status $ns apiping '{.status.platforms}')" || return 1
  local cold=$((SECONDS - t0))
  local commit want
  commit=$(status $ns apiping '{.status.source.commit}')
  want=$(git ls-remote "$E2E_GIT_URL" refs/heads/main | cut -f1)
  expect_eq "$commit" "$want" "status.source.commit" || return 1
  for arch in amd64 arm64; do
    local node
    node=$(kubectl get pods -n $ns -l "multiarch.dev/platform=linux-$arch" -o jsonpath='{.items[0].spec.nodeName}')
    expect_eq "$node" "kwok-$arch-1" "linux/$arch builder's node" || return 1
    local job_commit
    job_commit=$(kubectl get jobs -n $ns -l "multiarch.dev/platform=linux-$arch" -o jsonpath='{.items[0].metadata.annotations.multiarch\.dev/commit}')
    expect_eq "$job_commit" "$commit" "linux/$arch builder's commit" || return 1
  done
  local digest index
  digest=$(status $ns apiping '{.status.digest}')
  index=$(raw "$ns/apiping:1.0.0") || return 1
  expect_eq "$(raw "$ns/apiping:latest" | sha256sum | cut -c1-64)" "${digest#sha256:}" "latest points at the published index" || return 1
  expect_eq "$(printf %s "$index" | sha256sum | cut -c1-64)" "${digest#sha256:}" "1.0.0 points at the published index" || return 1
  expect_eq "$(printf %s "$index" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["mediaType"], " ".join(m["platform"]["os"]+"/"+m["platform"]["architecture"] for m in d["manifests"]))')" \
    "application/vnd.oci.image.index.v1+json linux/amd64 linux/arm64" "index media type and platforms" || return 1
  for arch in amd64 arm64; do
    local config_arch
    config_arch=$(skopeo inspect --config --tls-verify=false "docker://$E2E_REGISTRY/$ns/apiping:1.0.0-$arch" | python3 -c 'import json,sys; print(json.load(sys.stdin)["architecture"])')
    expect_eq "$config_arch" "$arch" "per-platform tag 1.0.0-$arch" || return 1
  done
  expect_contains "$(kubectl get mai -n $ns apiping)" "$digest" "kubectl get mai shows the digest" || return 1
  # the rendered builder Jobs pass the real apiserver's validation again
  kubectl get jobs -n $ns -o json | python3 -c 'import json,sys; d=json.load(sys.stdin); [i["metadata"].pop(k, None) for i in d["items"] for k in ("resourceVersion","uid","creationTimestamp","managedFields")]; print(json.dumps(d))' \
    | kubectl apply --server-side --force-conflicts --field-manager=e2e-dry-run --dry-run=server -f - >/dev/null || fail "builder Jobs rejected by server-side dry run" || return 1
  real_build_checks $ns "$index" || return 1

  # a second build of the same commit reuses the per-platform registry caches
  local first_build t1
  first_build=$(status $ns apiping '{.status.build.id}')
  t1=$SECONDS
  kubectl annotate mai -n $ns apiping multiarch.dev/rebuild=second >/dev/null
  kubectl wait -n $ns mai/apiping --for=jsonpath='{.status.rebuild}'=second --timeout=60s >/dev/null || fail "rebuild not started" || return 1
  kubectl wait -n $ns mai/apiping --for=condition=Ready --timeout=600s >/dev/null || fail "rebuild not Ready" || return 1
  local warm=$((SECONDS - t1)) build
  build=$(status $ns apiping '{.status.build.id}')
  [ "$build" != "$first_build" ] || fail "the rebuild kept build id $build" || return 1
  expect_eq "$(status $ns apiping '{.status.source.commit}')" "$commit" "the rebuild's commit" || return 1
  local uid
  for arch in amd64 arm64; do
    uid=$(kubectl get pods -n $ns -l "multiarch.dev/build=$build,multiarch.dev/platform=linux-$arch" -o jsonpath='{.items[0].metadata.uid}')
    grep -A3 "RUN CGO_ENABLED=0" "/var/tmp/multiarch-e2e-builds/$uid/container.log" | grep -q CACHED \
      || fail "linux/$arch: the rebuild compiled again instead of using buildcache-$arch" || return 1
  done
  real_build_checks $ns "$(raw "$ns/apiping:1.0.0")" || return 1
  echo "    real two-platform build: ${cold}s cold, ${warm}s with the registry caches (apply to Ready)" >&2
}

# What only a real build can show: the images run and print their own platform, the per-platform
# caches exist, and BuildKit's metadata (the termination message) names the image the registry has.
real_build_checks() { # ns index-json
  local ns=$1 index=$2 arch digest out
  local tags; tags=$(tags_of "$ns/apiping")
  for arch in amd64 arm64; do
    expect_contains "$tags" "buildcache-$arch" "registry cache of linux/$arch" || return 1
    digest=$(printf %s "$index" | python3 -c "import json,sys; print([m['digest'] for m in json.load(sys.stdin)['manifests'] if m['platform']['architecture'] == '$arch'][0])")
    crane export "$E2E_REGISTRY/$ns/apiping@$digest" - | tar -xO app/apiping >"$state/apiping-$arch" || fail "no /app/apiping in the $arch image" || return 1
    chmod +x "$state/apiping-$arch"
    expect_eq "$(python3 -c "import sys; b=open(sys.argv[1],'rb').read(20); print(b[:4] == b'\x7fELF', int.from_bytes(b[18:20], 'little'))" "$state/apiping-$arch")" \
      "True $([ $arch = amd64 ] && echo 62 || echo 183)" "ELF machine of the $arch binary" || return 1
    if [ $arch = arm64 ]; then out=$(qemu-aarch64-static "$state/apiping-$arch"); else out=$("$state/apiping-$arch"); fi
    expect_contains "$out" "GOARCH $arch" "the $arch binary's output" || return 1
    local pod message reported
    pod=$(kubectl get pods -n $ns -l "multiarch.dev/build=$(status $ns apiping '{.status.build.id}'),multiarch.dev/platform=linux-$arch" -o name | head -n1)
    message=$(kubectl get -n $ns "$pod" -o jsonpath='{.status.containerStatuses[0].state.terminated.message}')
    reported=$(printf %s "$message" | python3 -c 'import json,sys; print(json.load(sys.stdin)["containerimage.digest"])') || fail "termination message is not BuildKit metadata: $message" || return 1
    expect_eq "$reported" "$digest" "linux/$arch: BuildKit's reported digest is the index entry" || return 1
    expect_eq "sha256:$(raw "$ns/apiping@$reported" | sha256sum | cut -c1-64)" "$reported" "linux/$arch: the registry serves the reported manifest" || return 1
  done
}

# 2. No arm64 node: the arm64 builder waits with the scheduler's reason; a new node lets it finish.
scenario_no_arm64_node() {
  local ns=e2e-pending
  new_ns $ns
  kubectl delete node kwok-arm64-1 >/dev/null
  mai $ns apiping '["linux/amd64", "linux/arm64"]'
  wait_reason $ns apiping Ready WaitingForNode || return 1
  kubectl wait -n $ns mai/apiping --for=jsonpath='{.status.platforms[1].reason}'=WaitingForNode --timeout=60s >/dev/null || fail "arm64 not waiting"
  expect_contains "$(status $ns apiping '{.status.platforms[1].message}')" "didn't match Pod's node affinity/selector" "scheduler's reason" || return 1
  [ -n "$(status $ns apiping '{.status.platforms[1].waitingSince}')" ] || fail "waitingSince not set" || return 1
  "$here/env.sh" add-node arm64 kwok-arm64-1 >/dev/null 2>&1
  kubectl wait -n $ns mai/apiping --for=condition=Ready --timeout=90s >/dev/null || fail "not Ready after the node came"
}

# 3. A builder fails: retried within retries, then Failed/Stalled; nothing tagged.
scenario_build_fails() {
  local ns=e2e-fails
  new_ns $ns
  mai $ns broken '["linux/amd64", "linux/arm64"]' "  retries: 1" '"e2e.multiarch.dev/fault.linux-arm64": fail'
  wait_reason $ns broken Stalled BuildFailed || return 1
  expect_eq "$(status $ns broken '{.status.phase}')" Failed "phase" || return 1
  expect_eq "$(status $ns broken '{.status.platforms[1].attempts}')" 2 "attempts" || return 1
  expect_contains "$(status $ns broken '{.status.platforms[1].message}')" "failed on purpose" "builder's message" || return 1
  expect_eq "$(kubectl get jobs -n $ns -l multiarch.dev/platform=linux-arm64 -o name | wc -l)" 2 "arm64 attempts as Jobs" || return 1
  expect_eq "$(tags_of $ns/broken)" "" "tags after a failed build" || return 1
  # a build that fails once succeeds on its retry
  mai $ns flaky '["linux/amd64", "linux/arm64"]' "  retries: 1" '"e2e.multiarch.dev/fault.linux-arm64": fail-once'
  kubectl wait -n $ns mai/flaky --for=condition=Ready --timeout=90s >/dev/null || fail "flaky not Ready"
  expect_eq "$(status $ns flaky '{.status.platforms[1].attempts}')" 1 "flaky attempts" || return 1
}

# 4. The mislabelled image: publish refused with PlatformMismatch naming both platforms.
scenario_platform_mismatch() {
  local ns=e2e-mismatch
  new_ns $ns
  mai $ns liar '["linux/amd64", "linux/arm64"]' "" '"e2e.multiarch.dev/fault.linux-arm64": wrong-arch'
  wait_reason $ns liar Stalled PlatformMismatch || return 1
  local msg
  msg=$(kubectl get mai -n $ns liar -o jsonpath='{.status.conditions[?(@.type=="Stalled")].message}')
  expect_contains "$msg" "linux/amd64" "mismatch message" && expect_contains "$msg" "linux/arm64" "mismatch message" || return 1
  expect_eq "$(tags_of $ns/liar)" "" "tags after a refused publish" || return 1
}

# 5. Spec changes: tags only re-publishes without builders; build inputs start a new build.
scenario_spec_change() {
  local ns=e2e-change
  new_ns $ns
  mai $ns app '["linux/amd64", "linux/arm64"]'
  kubectl wait -n $ns mai/app --for=condition=Ready --timeout=90s >/dev/null || fail "not Ready" || return 1
  local jobs_before digest
  jobs_before=$(kubectl get jobs -n $ns -o name | sort | tr '\n' ' ')
  digest=$(status $ns app '{.status.digest}')
  kubectl patch mai -n $ns app --type merge -p '{"spec":{"tags":["1.0.1","latest"]}}' >/dev/null
  kubectl wait -n $ns mai/app --for=jsonpath='{.status.observedGeneration}'=2 --timeout=60s >/dev/null || fail "generation 2 not observed" || return 1
  kubectl wait -n $ns mai/app --for=condition=Ready --timeout=60s >/dev/null || fail "not Ready after tags change" || return 1
  expect_eq "$(kubectl get jobs -n $ns -o name | sort | tr '\n' ' ')" "$jobs_before" "builders after a tags-only change" || return 1
  expect_eq "$(raw "$ns/app:1.0.1" | sha256sum | cut -c1-64)" "${digest#sha256:}" "1.0.1 is the same index" || return 1
  kubectl patch mai -n $ns app --type merge -p '{"spec":{"buildArgs":[{"name":"VERSION","value":"2"}]}}' >/dev/null
  kubectl wait -n $ns mai/app --for=jsonpath='{.status.observedGeneration}'=3 --timeout=60s >/dev/null || fail "generation 3 not observed" || return 1
  kubectl wait -n $ns mai/app --for=condition=Ready --timeout=90s >/dev/null || fail "not Ready after a rebuild" || return 1
  local build
  build=$(status $ns app '{.status.build.id}')
  expect_eq "$(kubectl get jobs -n $ns -l "multiarch.dev/build=$build" -o name | wc -l)" 2 "builders of the new build" || return 1
}

# 6. The operator killed at fixed points and restarted: no duplicate builders, one index per build.
#    The points: builders just created (status not written), one platform built, index pushed to
#    every tag (status not written). MULTIARCH_FAILPOINT aborts the process there, like SIGKILL.
wait_operator_exit() {
  local pid deadline=$((SECONDS + 60))
  pid=$(cat "$state/operator.pid")
  while kill -0 "$pid" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { fail "the operator did not reach its fail point"; return 1; }
    sleep 0.2
  done
  wait "$pid" 2>/dev/null || true
}
scenario_operator_restart() {
  local ns=e2e-restart
  new_ns $ns
  # builders just created
  stop_operator KILL
  start_operator after-builders-created || return 1
  mai $ns early '["linux/amd64", "linux/arm64"]'
  wait_operator_exit || return 1
  expect_eq "$(kubectl get jobs -n $ns -l multiarch.dev/image=early -o name | wc -l)" 2 "builders before the crash" || return 1
  expect_eq "$(status $ns early '{.status.platforms}')" "" "status written before the crash" || return 1
  start_operator || return 1
  kubectl wait -n $ns mai/early --for=condition=Ready --timeout=90s >/dev/null || fail "early not Ready after restart" || return 1
  expect_eq "$(kubectl get jobs -n $ns -l multiarch.dev/image=early -o name | wc -l)" 2 "builders after the restart" || return 1

  # one platform built, the other still building
  mai $ns middle '["linux/amd64", "linux/arm64"]' "" '"e2e.multiarch.dev/fault.linux-arm64": hang'
  kubectl wait -n $ns mai/middle --for=jsonpath='{.status.platforms[0].phase}'=Built --timeout=60s >/dev/null || fail "amd64 not built" || return 1
  stop_operator KILL
  start_operator || return 1
  kubectl annotate mai -n $ns middle e2e.multiarch.dev/poke=1 >/dev/null
  kubectl wait -n $ns mai/middle --for=jsonpath='{.status.phase}'=Building --timeout=30s >/dev/null || fail "not Building after restart" || return 1
  expect_eq "$(kubectl get jobs -n $ns -l multiarch.dev/image=middle -o name | wc -l)" 2 "builders after a restart mid-build" || return 1

  # index pushed to every tag, status not written
  stop_operator KILL
  start_operator after-index-pushed || return 1
  mai $ns late '["linux/amd64", "linux/arm64"]'
  wait_operator_exit || return 1
  local pushed
  pushed=$(raw "$ns/late:latest" | sha256sum | cut -c1-64)
  [ -n "$pushed" ] || fail "the index was not pushed before the crash" || return 1
  expect_eq "$(status $ns late '{.status.digest}')" "" "status digest before the restart" || return 1
  start_operator || return 1
  kubectl wait -n $ns mai/late --for=condition=Ready --timeout=90s >/dev/null || fail "late not Ready after restart" || return 1
  expect_eq "$(status $ns late '{.status.digest}')" "sha256:$pushed" "the republished index is the same index" || return 1
  expect_eq "$(kubectl get jobs -n $ns -l multiarch.dev/image=late -o name | wc -l)" 2 "builders of late" || return 1
}

# 7. Invalid objects: rejected at admission by the real apiserver, or Stalled with InvalidSpec.
scenario_invalid() {
  local ns=e2e-invalid out
  new_ns $ns
  if out=$(mai $ns dup '["linux/amd64", "linux/amd64"]' 2>&1); then fail "duplicate platform accepted"; return 1; fi
  expect_contains "$out" "Duplicate value" "duplicate platform" || return 1
  if out=$(kubectl apply -f - 2>&1 <<EOF
apiVersion: multiarch.dev/v1alpha1
kind: MultiArchImage
metadata: {name: tagged, namespace: $ns}
spec:
  source: {git: {url: "$E2E_GIT_URL"}}
  image: $E2E_REGISTRY/team/app:1.0
  tags: ["1.0.0"]
  platforms: ["linux/amd64"]
EOF
)
  then fail "image with a tag accepted"; return 1; fi
  expect_contains "$out" "image must be a repository without a tag" "image with a tag" || return 1
  if out=$(mai $ns badplatform '["linux"]' 2>&1); then fail "bad platform accepted"; return 1; fi
  expect_contains "$out" "os/arch[/variant]" "bad platform" || return 1
  mai $ns alias '["linux/arm64", "linux/arm64/v8"]' || fail "alias rejected at admission" || return 1
  wait_reason $ns alias Stalled InvalidSpec || return 1
  expect_eq "$(kubectl get jobs -n $ns -o name | wc -l)" 0 "builders of an invalid object" || return 1
}

# 8. Pod Security "baseline" rejects rootless BuildKit: BuilderRejected with the admission message.
scenario_builder_rejected() {
  local ns=e2e-baseline
  new_ns $ns
  kubectl label namespace $ns pod-security.kubernetes.io/enforce=baseline >/dev/null
  mai $ns app '["linux/amd64"]'
  wait_reason $ns app Stalled BuilderRejected || return 1
  expect_contains "$(status $ns app '{.status.platforms[0].message}')" "PodSecurity" "admission message" || return 1
  expect_eq "$(kubectl get jobs -n $ns -o name | wc -l)" 0 "builders created" || return 1
}

# 9. Deleting an object stops its builders and leaves the registry alone.
scenario_delete() {
  local ns=e2e-delete
  new_ns $ns
  mai $ns app '["linux/amd64", "linux/arm64"]'
  kubectl wait -n $ns mai/app --for=condition=Ready --timeout=90s >/dev/null || fail "not Ready" || return 1
  mai $ns stuck '["linux/amd64", "linux/arm64"]' "" '"e2e.multiarch.dev/fault.linux-arm64": hang'
  kubectl wait -n $ns mai/stuck --for=jsonpath='{.status.platforms[1].phase}'=Building --timeout=60s >/dev/null || fail "not building" || return 1
  kubectl delete mai -n $ns app stuck --wait=true >/dev/null
  local deadline=$((SECONDS + 60))
  until [ "$(kubectl get jobs,pods -n $ns -o name | wc -l)" = 0 ]; do
    [ $SECONDS -lt $deadline ] || { fail "builders left after deletion: $(kubectl get jobs,pods -n $ns -o name)"; return 1; }
    sleep 0.5
  done
  expect_eq "$(tags_of $ns/app)" "1.0.0 1.0.0-amd64 1.0.0-arm64 latest" "tags after deletion" || return 1
}

all=(everyday no_arm64_node build_fails platform_mismatch spec_change operator_restart invalid builder_rejected delete)
# More scenarios live in e2e/scenarios/*.sh: each file defines scenario_NAME functions and appends
# their names to `all`.
for f in "$here"/scenarios/*.sh; do
  [ -e "$f" ] || continue
  # shellcheck source=/dev/null
  source "$f"
done

start_operator || exit 1
[ $# -gt 0 ] || set -- "${all[@]}"
for s in "$@"; do
  started=$SECONDS
  echo "--- scenario $s" >&2
  if "scenario_$s"; then
    passed=$((passed + 1)); echo "    ok ($((SECONDS - started))s)" >&2
  else
    failed=$((failed + 1)); failures+=("$s")
    echo "    operator log tail:" >&2; tail -n 15 "$state/operator.log" | sed 's/^/      /' >&2
  fi
done
stop_operator TERM
[ $failed -eq 0 ] || echo "failed scenarios: ${failures[*]}" >&2
echo "e2e: $passed passed, $failed failed"
[ $failed -eq 0 ]
