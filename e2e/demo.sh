#!/usr/bin/env bash
# Runs the product locally: the end-to-end environment (a real control plane, real Karpenter
# launching simulated amd64 and arm64 nodes, a registry, a git server), the operator with its
# ServiceAccount's RBAC, and a sample MultiArchImage that ends Ready; prints the NodeClaims
# Karpenter launched for its builders, the published index, and the nodes going away after the
# build. `make down` stops it all.
# The builders' own commands run with real rootless BuildKit on this machine (the builder double's
# real mode), building the sample Go service from the local git server.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
state=${E2E_STATE:-/tmp/multiarch-e2e}

# one environment per machine (fixed ports): wait for an end-to-end run to finish first
exec 9>"${TMPDIR:-/tmp}/multiarch-e2e-env.lock"
if ! flock -n 9; then
  echo "[demo] an end-to-end run holds the environment; waiting for it" >&2
  flock 9
fi
"$here/env.sh" up
# shellcheck source=/dev/null
source "$state/env"
(cd "$root" && cargo build -q)
KUBECONFIG=$E2E_OPERATOR_KUBECONFIG setsid "$root/target/debug/multiarch-operator" run \
  --registry-plain-http --health-addr 127.0.0.1:18081 --metrics-addr 127.0.0.1:18091 >"$state/operator.log" 2>&1 < /dev/null &
echo $! >"$state/operator.pid"

kubectl create namespace builds --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace builds --overwrite pod-security.kubernetes.io/enforce=privileged \
  e2e.multiarch.dev/builder=buildkit >/dev/null
kubectl apply -f - <<YAML
apiVersion: multiarch.dev/v1alpha1
kind: MultiArchImage
metadata: {name: apiping, namespace: builds}
spec:
  source:
    git: {url: "$E2E_GIT_URL", revision: main}
  image: $E2E_REGISTRY/team/apiping
  tags: ["1.0.0", "latest"]
  platforms: ["linux/amd64", "linux/arm64"]
YAML
claims='NODECLAIM:.metadata.name,TYPE:.metadata.labels.node\.kubernetes\.io/instance-type,NODE:.status.nodeName,REQUIREMENTS:.spec.requirements[?(@.key=="kubernetes.io/arch")].values'
echo "Each builder waits for a node of its architecture; Karpenter launches them:"
for _ in $(seq 120); do
  [ "$(kubectl get nodeclaims -o name | wc -l)" -ge 2 ] && break
  sleep 1
done
kubectl wait nodeclaims --all --for=condition=Ready --timeout=120s >/dev/null
kubectl get nodeclaims -o custom-columns="$claims"
kubectl wait -n builds mai/apiping --for=condition=Ready --timeout=900s
kubectl get mai -n builds -o wide
kubectl get pods -n builds -o custom-columns='BUILDER:.metadata.name,PLATFORM:.metadata.annotations.multiarch\.dev/platform,NODE:.spec.nodeName'
echo
echo "The index at $E2E_REGISTRY/team/apiping:1.0.0:"
skopeo inspect --raw --tls-verify=false "docker://$E2E_REGISTRY/team/apiping:1.0.0" | python3 -m json.tool
digest=$(skopeo inspect --raw --tls-verify=false "docker://$E2E_REGISTRY/team/apiping:1.0.0" \
  | python3 -c 'import json,sys; print([m["digest"] for m in json.load(sys.stdin)["manifests"] if m["platform"]["architecture"] == "arm64"][0])')
crane export "$E2E_REGISTRY/team/apiping@$digest" - | tar -xO app/apiping >"$state/apiping-arm64"
chmod +x "$state/apiping-arm64"
echo "The arm64 image's binary, run with qemu-aarch64-static: $(qemu-aarch64-static "$state/apiping-arm64")"
echo
echo "After the build Karpenter consolidates the builders' nodes away:"
for _ in $(seq 180); do
  [ "$(kubectl get nodeclaims -o name | wc -l)" -eq 0 ] && break
  sleep 1
done
if [ "$(kubectl get nodeclaims -o name | wc -l)" -eq 0 ]; then
  echo "no NodeClaim left; the nodes the builders ran on are gone:"
  kubectl get nodes -l karpenter.sh/nodepool=builders 2>&1
else
  kubectl get nodeclaims -o custom-columns="$claims"
fi
cat <<TEXT

Everything is still running. Try:
  source $state/env
  kubectl get mai -A
  kubectl describe mai -n builds apiping
  curl -s 127.0.0.1:18091/metrics | grep ^multiarch_builds
Stop it with: make down
TEXT
