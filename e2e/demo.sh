#!/usr/bin/env bash
# Runs the product locally: the end-to-end environment (a real control plane with simulated amd64
# and arm64 nodes, a registry, a git server), the operator with its ServiceAccount's RBAC, and a
# sample MultiArchImage that ends Ready; prints the published index. `make down` stops it all.
# Builders are finished by the builder test double (it pushes small synthetic images).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
state=${E2E_STATE:-/tmp/multiarch-e2e}

"$here/env.sh" up
# shellcheck source=/dev/null
source "$state/env"
(cd "$root" && cargo build -q)
KUBECONFIG=$E2E_OPERATOR_KUBECONFIG setsid "$root/target/debug/multiarch-operator" run \
  --registry-plain-http --health-addr 127.0.0.1:18081 >"$state/operator.log" 2>&1 < /dev/null &
echo $! >"$state/operator.pid"

kubectl create namespace builds --dry-run=client -o yaml | kubectl apply -f - >/dev/null
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
kubectl wait -n builds mai/apiping --for=condition=Ready --timeout=120s
kubectl get mai -n builds -o wide
kubectl get pods -n builds -o custom-columns='BUILDER:.metadata.name,PLATFORM:.metadata.annotations.multiarch\.dev/platform,NODE:.spec.nodeName'
echo
echo "The index at $E2E_REGISTRY/team/apiping:1.0.0:"
skopeo inspect --raw --tls-verify=false "docker://$E2E_REGISTRY/team/apiping:1.0.0" | python3 -m json.tool
cat <<TEXT

Everything is still running. Try:
  source $state/env
  kubectl get mai -A
  kubectl describe mai -n builds apiping
Stop it with: make down
TEXT
