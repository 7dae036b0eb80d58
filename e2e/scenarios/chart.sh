# The Helm chart on the real apiserver: lint, every rendering accepted by a server-side dry run,
# the installed release's pod admitted under Pod Security "restricted", its RBAC exactly what the
# operator uses, and an upgrade. (e2e/env.sh installed the release the suite's operator runs with.)
# Sourced by e2e/run.sh.
# shellcheck shell=bash

all+=(chart)

CHART=$root/charts/multiarch-operator

render() { # helm-template-args... -> the manifests, minus kinds whose CRD is not installed here
  helm template multiarch-operator "$CHART" -n multiarch-system --kube-version 1.34.4 "$@" \
    | python3 -c '
import sys
docs = sys.stdin.read().split("\n---")
print("\n---".join(d for d in docs if "kind: ServiceMonitor" not in d))'
}

can() { kubectl auth can-i --as=system:serviceaccount:multiarch-system:multiarch-operator "$@" 2>/dev/null; }

scenario_chart() {
  local ns=e2e-chart
  new_ns $ns
  helm lint "$CHART" >/dev/null || fail "helm lint" || return 1
  local values
  for values in "" "--set watchNamespace=$ns" "--set crds.install=false" "--set replicaCount=2" \
      "--set leaderElection.enabled=false --set metrics.enabled=false" \
      "--set registry.caConfigMap=registry-ca --set builder.nodeSelector.pool=builds" \
      "--set-json builder.tolerations=[{\"key\":\"builds\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}]"; do
    # shellcheck disable=SC2086
    render $values | kubectl apply --dry-run=server -f - >/dev/null 2>"$state/chart-dry-run.err" \
      || fail "rendering with '${values:-defaults}' rejected by the apiserver: $(cat "$state/chart-dry-run.err")" || return 1
  done
  # values the chart refuses, with a message naming the value
  local bad want
  while IFS='|' read -r bad want; do
    # shellcheck disable=SC2086
    ! helm template t "$CHART" --kube-version 1.34.4 $bad >/dev/null 2>"$state/chart-bad.err" \
      || fail "helm template accepted $bad" || return 1
    expect_contains "$(cat "$state/chart-bad.err")" "$want" "helm template $bad" || return 1
  done <<'BAD'
--set concurrency=four|/concurrency
--set logFormat=xml|/logFormat
--set builder.finishedTTl=1h|finishedTTl
--set replicaCount=2 --set leaderElection.enabled=false|needs leaderElection.enabled
--set registry.caConfigMap=a --set registry.caSecret=b|exclusive
BAD
  helm template t "$CHART" --kube-version 1.34.4 --set metrics.serviceMonitor.enabled=true | grep -q "kind: ServiceMonitor" \
    || fail "no ServiceMonitor with metrics.serviceMonitor.enabled" || return 1
  expect_contains "$(helm template t "$CHART" --kube-version 1.34.4 --set watchNamespace=$ns | grep -A3 '^kind: Role$')" "namespace: $ns" \
    "a single watched namespace gets a Role there" || return 1
  kubectl apply --server-side --force-conflicts --field-manager=e2e-dry-run --dry-run=server -f "$root/crds/" >/dev/null 2>"$state/chart-dry-run.err" \
    || fail "crds/ alone: $(cat "$state/chart-dry-run.err")" || return 1
  sed "s/namespace: builds/namespace: $ns/" "$root/examples/apiping.yaml" "$root/examples/self-build.yaml" \
    | kubectl apply --dry-run=server -f - >/dev/null 2>"$state/chart-dry-run.err" || fail "examples/: $(cat "$state/chart-dry-run.err")" || return 1

  # the release's pod was admitted under "restricted" and runs (as KWOK reports it)
  kubectl wait -n multiarch-system pod -l app.kubernetes.io/name=multiarch-operator --for=condition=Ready --timeout=60s >/dev/null \
    || fail "the chart's operator pod is not Ready: $(kubectl get events -n multiarch-system --field-selector reason=FailedCreate -o jsonpath='{.items[*].message}')" || return 1
  expect_eq "$(kubectl get namespace multiarch-system -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')" restricted "release namespace enforcement" || return 1
  expect_eq "$(kubectl get crd multiarchimages.multiarch.dev -o jsonpath='{.metadata.annotations.helm\.sh/resource-policy}')" keep "CRD kept on uninstall" || return 1

  # RBAC: what the operator uses, and nothing more
  local verb resource want
  while read -r verb resource want; do
    expect_eq "$(can "$verb" "$resource" -n $ns)" "$want" "can-i $verb $resource" || return 1
  done <<'RULES'
list multiarchimages.multiarch.dev yes
watch multiarchimages.multiarch.dev yes
update multiarchimages.multiarch.dev no
patch multiarchimages.multiarch.dev no
delete multiarchimages.multiarch.dev no
create jobs.batch yes
delete jobs.batch yes
create pods yes
delete pods no
get secrets yes
list secrets no
create events.events.k8s.io yes
get leases.coordination.k8s.io no
create deployments.apps no
RULES
  expect_eq "$(can patch multiarchimages.multiarch.dev --subresource=status -n $ns)" yes "can-i patch status" || return 1
  expect_eq "$(can update leases.coordination.k8s.io -n multiarch-system)" yes "lease in the release namespace" || return 1

  # the operator binary runs with exactly the environment the Deployment renders (only the listen
  # addresses move off the ports this host's suite uses): it starts, leads, serves JSON logs and
  # metrics, and on SIGTERM exits 0 and hands the Lease back
  chart_env_operator $ns || return 1

  # a second release scoped to one namespace: a Role there, no cluster-wide reads
  helm install scoped "$CHART" -n $ns --set watchNamespace=$ns --set crds.install=false \
      --set leaderElection.enabled=false >/dev/null 2>"$state/chart-scoped.err" \
    || fail "helm install of a namespace-scoped release: $(cat "$state/chart-scoped.err")" || return 1
  local sa=system:serviceaccount:$ns:scoped-multiarch-operator
  expect_eq "$(kubectl auth can-i --as=$sa list multiarchimages.multiarch.dev -n $ns 2>/dev/null)" yes "scoped release: list in its namespace" || return 1
  expect_eq "$(kubectl auth can-i --as=$sa create jobs.batch -n $ns 2>/dev/null)" yes "scoped release: builders in its namespace" || return 1
  expect_eq "$(kubectl auth can-i --as=$sa list multiarchimages.multiarch.dev -n default 2>/dev/null)" no "scoped release: another namespace" || return 1
  expect_eq "$(kubectl auth can-i --as=$sa list multiarchimages.multiarch.dev --all-namespaces 2>/dev/null)" no "scoped release: all namespaces" || return 1
  expect_eq "$(kubectl get clusterrole -l app.kubernetes.io/instance=scoped -o name)" "" "scoped release: no ClusterRole" || return 1
  helm uninstall scoped -n $ns >/dev/null || fail "helm uninstall of the scoped release" || return 1
  kubectl get crd multiarchimages.multiarch.dev >/dev/null 2>&1 || fail "uninstalling a release without the CRD removed the CRD" || return 1

  # an upgrade with the same values keeps the release working (later scenarios use it)
  helm upgrade multiarch-operator "$CHART" -n multiarch-system --reuse-values >/dev/null || fail "helm upgrade" || return 1
  expect_eq "$(helm status multiarch-operator -n multiarch-system -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["info"]["status"])')" deployed "release status" || return 1
}

chart_env_operator() { # namespace to watch
  local ns=$1 envs
  envs=$(helm template multiarch-operator "$CHART" -n multiarch-system --kube-version 1.34.4 \
      --set watchNamespace="$ns" --set leaderElection.leaseDuration=6s --show-only templates/deployment.yaml \
    | kubectl create --dry-run=client -o json -f - \
    | python3 -c '
import json, sys
for e in json.load(sys.stdin)["spec"]["template"]["spec"]["containers"][0]["env"]:
    if "value" in e:
        print(e["name"] + "=" + e["value"])') || { fail "could not read the rendered environment"; return 1; }
  expect_contains "$envs" "MULTIARCH_LEADER_ELECT=true" "rendered environment" || return 1
  local -a vars
  mapfile -t vars < <(printf '%s\n' "$envs" | grep -v -e '^MULTIARCH_HEALTH_ADDR=' -e '^MULTIARCH_METRICS_ADDR=')
  env -i PATH="$PATH" HOME="$HOME" KUBECONFIG="$E2E_OPERATOR_KUBECONFIG" POD_NAME=chart-env POD_NAMESPACE=multiarch-system \
    "${vars[@]}" MULTIARCH_HEALTH_ADDR=127.0.0.1:18084 MULTIARCH_METRICS_ADDR=127.0.0.1:18094 \
    "$OPERATOR" run >"$state/chart-env.log" 2>&1 </dev/null &
  local pid=$! deadline=$((SECONDS + 60))
  until curl -sf http://127.0.0.1:18094/metrics 2>/dev/null | grep -q '^multiarch_leader 1'; do
    kill -0 $pid 2>/dev/null || { fail "the operator exited with the rendered environment: $(tail -5 "$state/chart-env.log")"; return 1; }
    [ $SECONDS -lt $deadline ] || { kill -9 $pid; fail "the operator with the rendered environment never led: $(tail -5 "$state/chart-env.log")"; return 1; }
    sleep 0.5
  done
  curl -sf http://127.0.0.1:18084/readyz >/dev/null || { kill -9 $pid; fail "not ready while leading"; return 1; }
  expect_eq "$(kubectl get lease -n multiarch-system multiarch-operator -o jsonpath='{.spec.holderIdentity}')" chart-env "Lease holder" \
    || { kill -9 $pid; return 1; }
  kill -TERM $pid
  local rc=0
  wait $pid || rc=$?
  expect_eq "$rc" 0 "exit status after SIGTERM" || return 1
  expect_eq "$(kubectl get lease -n multiarch-system multiarch-operator -o jsonpath='{.spec.holderIdentity}')" "" "Lease released on SIGTERM" || return 1
  python3 -c '
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
assert lines, "no log lines"
for l in lines:
    json.loads(l)' "$state/chart-env.log" || fail "logFormat=json: a log line is not JSON: $(head -3 "$state/chart-env.log")"
}

all+=(argocd_health)

# The Argo CD health check (deploy/argocd/health.lua) on objects the operator really reconciled.
scenario_argocd_health() {
  local ns=e2e-argocd
  "$root/deploy/argocd/test.sh" >"$state/argocd.out" 2>&1 || fail "deploy/argocd/test.sh: $(cat "$state/argocd.out")" || return 1
  new_ns $ns
  mai $ns good '["linux/amd64", "linux/arm64"]'
  mai $ns bad '["linux/amd64"]' "  retries: 0" '"e2e.multiarch.dev/fault.linux-amd64": fail'
  mai $ns waiting '["linux/amd64", "linux/s390x"]'
  kubectl wait -n $ns mai/good --for=condition=Ready --timeout=90s >/dev/null || fail "good not Ready" || return 1
  wait_reason $ns bad Stalled BuildFailed || return 1
  wait_reason $ns waiting Reconciling WaitingForNode || return 1
  kubectl get mai -n $ns -o json | python3 -c '
import json, sys
want = {"good": "Healthy", "bad": "Degraded", "waiting": "Progressing"}
items = json.load(sys.stdin)["items"]
print(json.dumps([{"path": i["metadata"]["name"], "obj": i,
                   "want": {"status": want[i["metadata"]["name"]], "message": None}} for i in items]))' \
    | ARGOCD_STATUS_ONLY=1 lua5.1 "$root/deploy/argocd/run_tests.lua" "$root/deploy/argocd" >"$state/argocd.out" \
    || fail "health.lua on real objects: $(cat "$state/argocd.out")" || return 1
}
