#!/usr/bin/env bash
# The end-to-end environment: a real Kubernetes control plane on loopback (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, built from pinned Go modules), KWOK simulating amd64 and
# arm64 nodes, a real OCI registry (Debian's docker-registry), the sample service over git:// (git
# daemon) and over smart HTTP (git http-backend, one copy behind basic authentication), real
# Karpenter (its KWOK cloud provider), real Flux (source-controller, kustomize-controller), and the
# builder test double (e2e/builder-double/double.py).
#
#   e2e/env.sh up [--no-arm64]      start everything (stops a previous run first)
#   e2e/env.sh down                 stop everything it started, by pid
#   e2e/env.sh add-node ARCH NAME   add a fake node, as Karpenter would
#   e2e/env.sh delete-node NAME     delete a node (its pods fail with DisruptionTarget)
#   e2e/env.sh status
#
# State (pids, logs, certificates, kubeconfigs, the `env` file to source) lives in
# E2E_STATE (default /tmp/multiarch-e2e); etcd's data lives on tmpfs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
state=${E2E_STATE:-/tmp/multiarch-e2e}
etcd_data=/dev/shm/multiarch-e2e-etcd
API_PORT=16443 ETCD_PORT=12379 ETCD_PEER_PORT=12380 REGISTRY_PORT=15001 GIT_PORT=19418 GIT_HTTP_PORT=19419
KCM_PORT=20257 SCHED_PORT=20259 KWOK_PORT=20263 KARPENTER_METRICS_PORT=20280 KARPENTER_HEALTH_PORT=20281
FLUX_STORAGE_PORT=20290 FLUX_SOURCE_METRICS_PORT=20291 FLUX_SOURCE_HEALTH_PORT=20292
FLUX_KUSTOMIZE_METRICS_PORT=20293 FLUX_KUSTOMIZE_HEALTH_PORT=20294
# the static nodes' taint and label: fixtures (the chart's operator pod) and static-node builders
# (the operator's default in the suite) tolerate and select them; Karpenter's NodePool offers
# neither, so it never launches a node for them, and its own nodes never take them
STATIC_KEY=e2e.multiarch.dev/static
log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

install_packages() {
  local missing=()
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v skopeo >/dev/null || missing+=(skopeo)
  command -v git >/dev/null || missing+=(git)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v python3 >/dev/null || missing+=(python3)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

start() { # name command... : runs in the background, records the pid, logs to $state/name.log
  local name=$1; shift
  setsid "$@" >"$state/$name.log" 2>&1 < /dev/null &
  echo $! >"$state/$name.pid"
}

wait_for() { # description seconds command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then log "timed out waiting for $what"; return 1; fi
    sleep 0.3
  done
}

certs() {
  local d=$state/pki; mkdir -p "$d"; cd "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=multiarch-e2e-ca -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' > san.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out apiserver.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=admin/O=system:masters" -keyout admin.key -out admin.csr 2>/dev/null
  # a v3 certificate (with extensions): rustls, which the e2e scenarios' kube client uses, refuses v1
  printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > client.ext
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out admin.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

kubeconfig() { # file user-section
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$state/pki/ca.crt"}
contexts:
- name: e2e
  context: {cluster: e2e, user: user}
current-context: e2e
users:
- name: user
  user: $2
EOF
}

node_manifest() { # arch name
  cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $2
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels:
    kubernetes.io/arch: $1
    kubernetes.io/os: linux
    kubernetes.io/hostname: $2
    type: kwok
    node.kubernetes.io/instance-type: $([ "$1" = arm64 ] && echo m7g.xlarge || echo m7i.xlarge)
    $STATIC_KEY: "true"
spec:
  taints: [{key: node.kubernetes.io/not-ready, effect: NoSchedule}, {key: $STATIC_KEY, value: "true", effect: NoSchedule}]
status:
  allocatable: {cpu: "16", memory: 64Gi, pods: "110", ephemeral-storage: 200Gi}
  capacity: {cpu: "16", memory: 64Gi, pods: "110", ephemeral-storage: 200Gi}
  nodeInfo: {architecture: $1, operatingSystem: linux, kubeletVersion: fake, kubeProxyVersion: fake}
EOF
}

add_node() {
  node_manifest "$1" "$2" | kubectl apply -f - >/dev/null
  kubectl wait --for=condition=Ready "node/$2" --timeout=60s >/dev/null
  log "node $2 ($1) is Ready"
}

stages() { # KWOK's own node and pod stages (pod-delete made to wait for finalizers), plus the builder stages
  local kwok
  kwok=$(cd "$here/tools/kwok" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  local s=$kwok/kustomize/stage
  for f in "$s/node/fast/node-initialize.yaml" "$s/node/heartbeat/node-heartbeat.yaml" \
           "$s/pod/fast/pod-ready.yaml" "$here/kwok/builder-evicted.yaml" "$here/kwok/builder-finish.yaml"; do
    echo "---"
    # a node Karpenter created has no nodeInfo yet: report the architecture of its label, not amd64
    sed 's/architecture: {{ or $nodeInfo.architecture "amd64" }}/architecture: {{ or $nodeInfo.architecture (index .metadata.labels "kubernetes.io\/arch") "amd64" }}/' "$f"
  done
}

sample_repo() { # bare repositories of e2e/sample, branch main, tag v1.0.0: public, and a private copy
  local work=$state/git/work
  rm -rf "$state/git"; mkdir -p "$work"
  cp -r "$here/sample/." "$work/"
  (cd "$work" && git init -q -b main && git add . &&
    GIT_AUTHOR_NAME=e2e GIT_AUTHOR_EMAIL=e2e@example.com GIT_COMMITTER_NAME=e2e GIT_COMMITTER_EMAIL=e2e@example.com \
      git commit -q -m "sample service" && git tag v1.0.0)
  git clone -q --bare "$work" "$state/git/sample.git"
  # BuildKit fetches the resolved commit by its id, as public forges allow
  git -C "$state/git/sample.git" config uploadpack.allowReachableSHA1InWant true
  rm -rf "$state/git-private"; mkdir -p "$state/git-private"
  git clone -q --bare "$state/git/sample.git" "$state/git-private/sample.git"
  git -C "$state/git-private/sample.git" config uploadpack.allowReachableSHA1InWant true
  # the private copy's token: a fresh random one each run
  python3 -c 'import secrets; print(secrets.token_hex(20))' >"$state/git-private.token"
}

up() {
  local arm64=true
  [ "${1:-}" = --no-arm64 ] && arm64=false
  down >/dev/null 2>&1 || true
  install_packages
  local bin
  bin=$("$here/tools/build.sh" | tail -n1)
  export PATH="$bin:$PATH"
  mkdir -p "$state" "$etcd_data"
  local started=$SECONDS
  certs
  kubeconfig "$state/admin.kubeconfig" "{client-certificate: \"$state/pki/admin.crt\", client-key: \"$state/pki/admin.key\"}"
  export KUBECONFIG=$state/admin.kubeconfig

  start etcd etcd --data-dir "$etcd_data" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync
  wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

  start kube-apiserver kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$state/pki/apiserver.crt" --tls-private-key-file "$state/pki/apiserver.key" \
    --client-ca-file "$state/pki/ca.crt" --authorization-mode Node,RBAC \
    --service-account-issuer "https://127.0.0.1:$API_PORT" --service-account-key-file "$state/pki/sa.pub" \
    --service-account-signing-key-file "$state/pki/sa.key" --service-cluster-ip-range 10.96.0.0/24 \
    --endpoint-reconciler-type none --allow-privileged=true
  wait_for kube-apiserver 90 kubectl get --raw /readyz
  log "kube-apiserver ready"

  start kube-controller-manager kube-controller-manager --kubeconfig "$state/admin.kubeconfig" \
    --authentication-kubeconfig "$state/admin.kubeconfig" --authorization-kubeconfig "$state/admin.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --service-account-private-key-file "$state/pki/sa.key" --root-ca-file "$state/pki/ca.crt" \
    --use-service-account-credentials --controllers '*'
  start kube-scheduler kube-scheduler --kubeconfig "$state/admin.kubeconfig" \
    --authentication-kubeconfig "$state/admin.kubeconfig" --authorization-kubeconfig "$state/admin.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false
  stages >"$state/stages.yaml"
  start kwok kwok --kubeconfig "$state/admin.kubeconfig" --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake --config "$state/stages.yaml" \
    --server-address "127.0.0.1:$KWOK_PORT"

  # every run starts from an empty registry, a fresh repository and no builds of earlier runs
  rm -rf "$state/registry" "$state/git" /var/tmp/multiarch-e2e-builds
  mkdir -p "$state/registry"
  cat >"$state/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $state/registry}
  delete: {enabled: true}
http: {addr: "127.0.0.1:$REGISTRY_PORT"}
EOF
  start registry docker-registry serve "$state/registry.yml"
  sample_repo
  start git-daemon "$(git --exec-path)/git-daemon" --export-all --reuseaddr --listen=127.0.0.1 \
    --port="$GIT_PORT" --base-path="$state/git" "$state/git"
  start git-http python3 "$here/git-http/server.py" --listen "127.0.0.1:$GIT_HTTP_PORT" \
    --public "$state/git" --private "$state/git-private" --user x-access-token \
    --password-file "$state/git-private.token"
  wait_for registry 30 curl -sf "http://127.0.0.1:$REGISTRY_PORT/v2/"
  wait_for "git over HTTP" 30 git ls-remote "http://127.0.0.1:$GIT_HTTP_PORT/public/sample.git"
  # real BuildKit for the builder double's real mode, and the base images the sample builds FROM
  local buildkit_bin
  buildkit_bin=$("$here/buildkit/install.sh" "$bin" | tail -n1)
  python3 "$here/buildkit/base_images.py" "127.0.0.1:$REGISTRY_PORT" "$bin/sbom-scanner"

  karpenter
  flux
  wait_for "default ServiceAccount" 60 kubectl get serviceaccount default -n default
  add_node amd64 kwok-amd64-1
  $arm64 && add_node arm64 kwok-arm64-1

  # the operator as a user installs it: the Helm chart (CRD, RBAC, Deployment) into a namespace that
  # enforces Pod Security "restricted". KWOK reports the chart's own operator pod Running without
  # running it; the suite runs the operator on the host with the chart ServiceAccount's token.
  kubectl create namespace multiarch-system >/dev/null
  kubectl label namespace multiarch-system pod-security.kubernetes.io/enforce=restricted >/dev/null
  helm install multiarch-operator "$root/charts/multiarch-operator" -n multiarch-system \
    --set image.repository=127.0.0.1:$REGISTRY_PORT/multiarch-operator --set image.tag=e2e \
    --set-json "nodeSelector={\"$STATIC_KEY\":\"true\"}" \
    --set-json "tolerations=[{\"key\":\"$STATIC_KEY\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}]" >/dev/null
  kubectl wait --for condition=established crd/multiarchimages.multiarch.dev --timeout=30s >/dev/null
  wait_for "operator ServiceAccount" 30 kubectl get serviceaccount multiarch-operator -n multiarch-system
  local token
  token=$(kubectl create token multiarch-operator -n multiarch-system --duration=24h)
  kubeconfig "$state/operator.kubeconfig" "{token: \"$token\"}"

  start builder-double python3 "$here/builder-double/double.py" --kubeconfig "$state/admin.kubeconfig" \
    --buildkit-bin "$buildkit_bin" --work-dir /var/tmp/multiarch-e2e-builds

  cat >"$state/env" <<EOF
export E2E_STATE=$state
export E2E_TOOLS_BIN=$bin
export PATH=$bin:\$PATH
export KUBECONFIG=$state/admin.kubeconfig
export E2E_OPERATOR_KUBECONFIG=$state/operator.kubeconfig
export E2E_REGISTRY=127.0.0.1:$REGISTRY_PORT
export E2E_GIT_URL=git://127.0.0.1:$GIT_PORT/sample.git
export E2E_GIT_HTTP_URL=http://127.0.0.1:$GIT_HTTP_PORT/public/sample.git
export E2E_GIT_PRIVATE_URL=http://127.0.0.1:$GIT_HTTP_PORT/private/sample.git
export E2E_GIT_USER=x-access-token
export E2E_GIT_PASSWORD=$(cat "$state/git-private.token")
export E2E_STATIC_KEY=$STATIC_KEY
EOF
  log "up in $((SECONDS - started))s; source $state/env"
}

karpenter() { # real Karpenter (KWOK cloud provider), its CRDs, a node class and the builders' NodePool
  local crds
  crds=$(dirname "$bin")/karpenter-crds
  kubectl apply --server-side -f "$crds" >/dev/null
  kubectl wait --for condition=established --timeout=60s -f "$crds" >/dev/null
  python3 "$here/karpenter/instance_types.py" >"$state/instance-types.json"
  start karpenter env KUBECONFIG="$state/admin.kubeconfig" DISABLE_LEADER_ELECTION=true \
    METRICS_PORT="$KARPENTER_METRICS_PORT" HEALTH_PROBE_PORT="$KARPENTER_HEALTH_PORT" \
    INSTANCE_TYPES_FILE_PATH="$state/instance-types.json" BATCH_IDLE_DURATION=1s \
    karpenter-kwok
  wait_for karpenter 60 curl -sf "http://127.0.0.1:$KARPENTER_HEALTH_PORT/readyz"
  kubectl apply -f "$here/karpenter/nodepool.yaml" >/dev/null
  log "karpenter is ready"
}

flux() { # real Flux: source-controller and kustomize-controller out of cluster, and their CRDs
  local crds
  crds=$(dirname "$bin")/flux-crds
  kubectl apply --server-side -f "$crds" >/dev/null
  kubectl wait --for condition=established --timeout=60s -f "$crds" >/dev/null
  kubectl create namespace flux-system >/dev/null
  rm -rf "$state/flux-storage"; mkdir -p "$state/flux-storage"
  start source-controller env KUBECONFIG="$state/admin.kubeconfig" RUNTIME_NAMESPACE=flux-system \
    source-controller --watch-all-namespaces --storage-path="$state/flux-storage" \
    --storage-addr="127.0.0.1:$FLUX_STORAGE_PORT" --storage-adv-addr="127.0.0.1:$FLUX_STORAGE_PORT" \
    --metrics-addr="127.0.0.1:$FLUX_SOURCE_METRICS_PORT" --health-addr="127.0.0.1:$FLUX_SOURCE_HEALTH_PORT"
  start kustomize-controller env KUBECONFIG="$state/admin.kubeconfig" RUNTIME_NAMESPACE=flux-system \
    kustomize-controller --watch-all-namespaces \
    --metrics-addr="127.0.0.1:$FLUX_KUSTOMIZE_METRICS_PORT" --health-addr="127.0.0.1:$FLUX_KUSTOMIZE_HEALTH_PORT"
  wait_for source-controller 60 curl -sf "http://127.0.0.1:$FLUX_SOURCE_HEALTH_PORT/readyz"
  wait_for kustomize-controller 60 curl -sf "http://127.0.0.1:$FLUX_KUSTOMIZE_HEALTH_PORT/readyz"
  log "flux is ready"
}

down() {
  [ -d "$state" ] || return 0
  local f pid
  for f in "$state"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  done
  for f in "$state"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  # operator processes the scenarios started and no pid file names any more
  pkill -KILL -f "^$state/bin/multiarch-operator " 2>/dev/null || true
  rm -rf "$etcd_data"
  log "stopped"
}

status() {
  local f
  for f in "$state"/*.pid; do
    [ -e "$f" ] || continue
    if kill -0 "$(cat "$f")" 2>/dev/null; then echo "$(basename "$f" .pid): running"; else echo "$(basename "$f" .pid): stopped"; fi
  done
}

cmd=${1:-}; shift || true
case $cmd in
  up) up "$@";;
  down) down;;
  status) status;;
  add-node) export KUBECONFIG=$state/admin.kubeconfig PATH=$("$here/tools/build.sh" | tail -n1):$PATH; add_node "$1" "$2";;
  delete-node) export KUBECONFIG=$state/admin.kubeconfig PATH=$("$here/tools/build.sh" | tail -n1):$PATH; kubectl delete node "$1";;
  *) echo "usage: $0 up [--no-arm64] | down | status | add-node ARCH NAME | delete-node NAME" >&2; exit 2;;
esac
