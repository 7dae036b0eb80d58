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
  helm template t "$CHART" --kube-version 1.34.4 --set metrics.serviceMonitor.enabled=true | grep -q "kind: ServiceMonitor" \
    || fail "no ServiceMonitor with metrics.serviceMonitor.enabled" || return 1
  expect_contains "$(helm template t "$CHART" --kube-version 1.34.4 --set watchNamespace=$ns | grep -A3 '^kind: Role$')" "namespace: $ns" \
    "a single watched namespace gets a Role there" || return 1
  kubectl apply --dry-run=server -f "$root/crds/" >/dev/null || fail "crds/ alone" || return 1
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

  # an upgrade with the same values keeps the release working (later scenarios use it)
  helm upgrade multiarch-operator "$CHART" -n multiarch-system --reuse-values >/dev/null || fail "helm upgrade" || return 1
  expect_eq "$(helm status multiarch-operator -n multiarch-system -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["info"]["status"])')" deployed "release status" || return 1
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
