#!/usr/bin/env bash
# Builds the end-to-end environment's tools from their pinned Go modules and caches the
# binaries outside the repository, keyed by version. A warm run only checks the cache.
#
# The leaf tools (helm, crane, cosign, Flux's controllers and the kstatus program) share one module,
# e2e/tools/leaf, so their dependencies resolve once and compile once: whichever of them are
# missing are built in one `go build`. Their cache keys carry that module's hash, so a change of
# the module builds them again. The others each have their own module, e2e/tools/TOOL: KWOK v0.7.0
# does not compile against the Kubernetes v0.36 libraries Flux v1.9.6 needs (KWOK v0.8.0 would,
# with other pod stages), and the control plane, etcd, BuildKit and Karpenter pin their own.
#
#   e2e/tools/build.sh [TOOL...]     build what is missing (default: all tools)
#   e2e/tools/build.sh --regen TOOL  rewrite TOOL's go.mod and go.sum from versions.env (any
#                                    leaf tool, or `leaf`, rewrites the shared module)
#
# Prints the cache's bin directory on the last line of standard output.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${MULTIARCH_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/multiarch-operator/tools}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$cache/bin"
log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

leaf_tools=(helm crane cosign flux kstatus)
is_leaf() { [[ " ${leaf_tools[*]} " == *" $1 "* ]]; }
# the shared module's hash (go.mod and go.sum): part of each leaf tool's cache key
leaf_hash() { cat "$here/leaf/go.mod" "$here/leaf/go.sum" | sha256sum | cut -c1-12; }

# module path and version of each tool (the version is its cache key)
tool_module() {
  case $1 in
    kubernetes) echo "k8s.io/kubernetes $KUBERNETES_VERSION";;
    etcd) echo "go.etcd.io/etcd/server/v3 $ETCD_VERSION";;
    kwok) echo "sigs.k8s.io/kwok $KWOK_VERSION";;
    helm) echo "helm.sh/helm/v3 $HELM_VERSION-leaf-$(leaf_hash)";;
    crane) echo "github.com/google/go-containerregistry $CRANE_VERSION-leaf-$(leaf_hash)";;
    cosign) echo "github.com/sigstore/cosign/v3 $COSIGN_VERSION-leaf-$(leaf_hash)";;
    buildkit) echo "github.com/moby/buildkit $BUILDKIT_VERSION";;
    karpenter) echo "sigs.k8s.io/karpenter $KARPENTER_VERSION";;
    flux) echo "github.com/fluxcd/kustomize-controller $FLUX_VERSION-leaf-$(leaf_hash)";;
    # the verdict program: keyed by the library's version, the module and the program's own source
    kstatus) echo "github.com/fluxcd/cli-utils $KSTATUS_VERSION-leaf-$(leaf_hash)-$(sha256sum "$here/leaf/kstatus/main.go" | cut -c1-12)";;
    # BuildKit's SBOM scanner protocol around syft: keyed by syft's version and the module's files
    sbom-scanner) echo "github.com/anchore/syft $SYFT_VERSION-$(cat "$here"/sbom-scanner/{go.mod,go.sum,main.go} 2>/dev/null | sha256sum | cut -c1-12)";;
    # the publish benchmark's peers, built only by e2e/tools/bench-peers.sh
    regctl) echo "github.com/regclient/regclient $REGCTL_VERSION";;
    oras) echo "oras.land/oras $ORAS_VERSION";;
    buildx) echo "github.com/docker/buildx $BUILDX_VERSION";;
    *) echo "unknown tool $1" >&2; return 2;;
  esac
}
tool_packages() {
  case $1 in
    kubernetes) echo k8s.io/kubernetes/cmd/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl};;
    etcd) echo go.etcd.io/etcd/server/v3;;
    kwok) echo sigs.k8s.io/kwok/cmd/kwok;;
    helm) echo helm.sh/helm/v3/cmd/helm;;
    crane) echo github.com/google/go-containerregistry/cmd/crane;;
    cosign) echo github.com/sigstore/cosign/v3/cmd/cosign;;
    sbom-scanner) echo .;;
    buildkit) echo github.com/moby/buildkit/cmd/{buildkitd,buildctl};;
    karpenter) echo sigs.k8s.io/karpenter/kwok;;
    flux) echo github.com/fluxcd/{source-controller,kustomize-controller};;
    kstatus) echo ./kstatus;;
    regctl) echo github.com/regclient/regclient/cmd/regctl;;
    oras) echo oras.land/oras/cmd/oras;;
    buildx) echo github.com/docker/buildx/cmd/buildx;;
  esac
}
# the folder of a tool's Go module
tool_dir() {
  if is_leaf "$1"; then echo "$here/leaf"; else echo "$here/$1"; fi
}
# the Go toolchain of each tool: the machine's, except where a tool needs a newer one (fetched
# once through the module proxy)
tool_toolchain() {
  case $1 in
    karpenter) echo "$KARPENTER_GO";;
    *) echo local;;
  esac
}
binary_name() { # package -> binary name
  case $1 in
    go.etcd.io/etcd/server/v3) echo etcd;;
    sigs.k8s.io/karpenter/kwok) echo karpenter-kwok;; # not `kwok`, which is KWOK itself
    .) echo sbom-scanner;;
    *) basename "$1";;
  esac
}

# about how long a cold build of each tool takes on 2 cores (measured; the first tool also
# downloads the modules)
cold_estimate() {
  case $1 in
    kubernetes) echo "about 5 minutes for the four binaries, with the module downloads";;
    etcd) echo "about 1 minute";;
    kwok) echo "about 2 minutes";;
    buildkit) echo "about 2 minutes";;
    karpenter) echo "about 2 minutes, with its Go toolchain";;
    leaf) echo "about 4 to 5 minutes when helm, crane, cosign, both Flux controllers and kstatus are all built";;
    sbom-scanner) echo "about 3 minutes";;
    regctl) echo "about 25 seconds";;
    oras) echo "about 45 seconds";;
    buildx) echo "about 3 minutes";;
  esac
}

regen() {
  local tool=$1 dir mod version
  if [ "$tool" = leaf ] || is_leaf "$tool"; then regen_leaf; return; fi
  dir=$(tool_dir "$tool")
  read -r mod version < <(tool_module "$tool")
  rm -f "$dir/go.mod" "$dir/go.sum" && mkdir -p "$dir"
  (
    cd "$dir"
    export GOTOOLCHAIN
    GOTOOLCHAIN=$(tool_toolchain "$tool")
    go mod init "multiarch-operator.e2e/tools/$tool" >/dev/null 2>&1
    if [ "$tool" = sbom-scanner ]; then
      # a program of the suite's own (main.go) with syft as a library
      go get "$mod@${version%%-*}"
      go mod tidy
      exit 0
    fi
    if [ "$tool" = kubernetes ]; then
      # k/k requires its staging modules at v0.0.0: replace each with the matching v0.Y.Z
      local kk staging
      kk=$(go mod download -json "k8s.io/kubernetes@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
      staging="v0.${version#v1.}"
      grep -E '^\s+k8s\.io/[^ ]+ v0\.0\.0$' "$kk" | awk '{print $1}' | while read -r m; do
        go mod edit -replace "$m=$m@$staging"
      done
      go mod edit -go="$(awk '/^go /{print $2}' "$kk")"
      awk '/^godebug /' "$kk" >> go.mod
    fi
    for p in $(tool_packages "$tool"); do go get -tool "$p@$version"; done
    go mod tidy
  )
}

# the leaf tools' shared module: Flux's controllers (whose dependencies are the newest, so the
# others build against them), helm, crane, and the kstatus library
regen_leaf() {
  rm -f "$here/leaf/go.mod" "$here/leaf/go.sum"
  (
    cd "$here/leaf"
    export GOTOOLCHAIN=local
    go mod init multiarch-operator.e2e/tools/leaf >/dev/null 2>&1
    # the published api modules stand in for the controllers' `./api` replaces (replaces apply
    # in their own repositories only, so the one this build needs is repeated here);
    # artifact v0.18.3 is not served, v0.18.0 is
    go mod edit -replace github.com/fluxcd/pkg/artifact=github.com/fluxcd/pkg/artifact@v0.18.0
    # the go-digest both controllers replace theirs with (BLAKE3 registration)
    go mod edit -replace github.com/opencontainers/go-digest=github.com/opencontainers/go-digest@v1.0.1-0.20220411205349-bde1400a84be
    go get -tool "github.com/fluxcd/kustomize-controller@$FLUX_VERSION" "github.com/fluxcd/source-controller@$FLUX_VERSION"
    go get -tool "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
    # cosign shares most of its graph with source-controller (which verifies with its libraries)
    go get -tool "github.com/sigstore/cosign/v3/cmd/cosign@$COSIGN_VERSION"
    go get "github.com/fluxcd/cli-utils@$KSTATUS_VERSION"
    # -e: a test-only dependency of source-controller is not served
    go mod tidy -e
  )
}

# the version a tool's binaries report (its release, without the cache key's module hash)
release() { echo "${1%%-leaf-*}"; }

# Builds the tools given that are missing from the cache; they share one module (one tool, or
# leaf tools) and are built in one invocation, so each shared package compiles once, in parallel.
build() {
  local tool mod version dir ldflags=() missing=() pkgs=() names=() what=()
  for tool in "$@"; do
    read -r mod version < <(tool_module "$tool")
    [ -f "$cache/$tool-$version.done" ] || missing+=("$tool")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  dir=$(tool_dir "${missing[0]}")
  [ -f "$dir/go.mod" ] || regen "${missing[0]}"
  for tool in "${missing[@]}"; do
    read -r mod version < <(tool_module "$tool")
    version=$(release "$version")
    case $tool in
      kubernetes)
        local major minor
        major=$(echo "$version" | sed -E 's/^v([0-9]+)\..*/\1/'); minor=$(echo "$version" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
        for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
          ldflags+=("-X $pkg.gitVersion=$version" "-X $pkg.gitMajor=$major" "-X $pkg.gitMinor=$minor" "-X $pkg.gitTreeState=clean")
        done;;
      buildkit) ldflags+=("-X github.com/moby/buildkit/version.Version=$version");;
      helm) ldflags+=("-X helm.sh/helm/v3/internal/version.version=$version");;
      kwok) ldflags+=("-X sigs.k8s.io/kwok/pkg/consts.Version=$version");;
      buildx) ldflags+=("-X github.com/docker/buildx/version.Version=$version");;
      cosign) ldflags+=("-X sigs.k8s.io/release-utils/version.gitVersion=$version");;
    esac
    local tool_pkgs
    read -r -a tool_pkgs < <(tool_packages "$tool")
    pkgs+=("${tool_pkgs[@]}")
    what+=("$tool $version")
  done
  local p
  for p in "${pkgs[@]}"; do names+=("$(binary_name "$p")"); done
  local started=$SECONDS estimate_of=${missing[0]}
  is_leaf "$estimate_of" && estimate_of=leaf
  log "building ${names[*]} ($(IFS=,; echo "${what[*]}" | sed 's/,/, /g'); cold, on 2 cores: $(cold_estimate "$estimate_of"))"
  local GOTOOLCHAIN
  GOTOOLCHAIN=$(tool_toolchain "${missing[0]}")
  export GOTOOLCHAIN
  if [ ${#pkgs[@]} -eq 1 ]; then
    (cd "$dir" && go build -trimpath -ldflags "-s -w ${ldflags[*]}" -o "$cache/bin/${names[0]}" "${pkgs[0]}")
  else
    (cd "$dir" && go build -trimpath -ldflags "-s -w ${ldflags[*]}" -o "$cache/bin/" "${pkgs[@]}")
  fi
  for tool in "${missing[@]}"; do finish "$tool" "$dir"; done
  log "${missing[*]} built in $((SECONDS - started))s"
}

# what a tool needs besides its binaries (scripts, CRDs), then its cache stamp
finish() {
  local tool=$1 dir=$2 mod version
  read -r mod version < <(tool_module "$tool")
  if [ "$tool" = buildkit ]; then
    local src
    src=$(cd "$dir" && go list -m -f '{{.Dir}}' github.com/moby/buildkit)
    install -m 0755 "$src/examples/buildctl-daemonless/buildctl-daemonless.sh" "$cache/bin/buildctl-daemonless.sh"
  fi
  if [ "$tool" = flux ]; then
    # the CRDs of both controllers, from the modules that were built
    local src
    rm -rf "$cache/flux-crds" && mkdir -p "$cache/flux-crds"
    for m in source-controller kustomize-controller; do
      src=$(cd "$dir" && go list -m -f '{{.Dir}}' "github.com/fluxcd/$m")
      cp "$src"/config/crd/bases/*.yaml "$cache/flux-crds/"
    done
    chmod u+w "$cache"/flux-crds/*.yaml
  fi
  if [ "$tool" = karpenter ]; then
    # its CRDs (NodePool, NodeClaim, ..., KWOKNodeClass), from the module that was built
    local src
    src=$(cd "$dir" && go list -m -f '{{.Dir}}' sigs.k8s.io/karpenter)
    rm -rf "$cache/karpenter-crds" && mkdir -p "$cache/karpenter-crds"
    cp "$src"/kwok/charts/crds/*.yaml "$src/kwok/apis/crds/karpenter.kwok.sh_kwoknodeclasses.yaml" "$cache/karpenter-crds/"
    chmod u+w "$cache"/karpenter-crds/*.yaml
  fi
  touch "$cache/$tool-$version.done"
}

# the tools the tests use; the publish benchmark's peers (regctl, oras, buildx) are built only by
# e2e/tools/bench-peers.sh
all=(kubernetes etcd kwok buildkit karpenter sbom-scanner "${leaf_tools[@]}")
if [ "${1:-}" = --regen ]; then shift; for t in "$@"; do regen "$t"; done; exit 0; fi
[ $# -gt 0 ] || set -- "${all[@]}"
leaf=()
for t in "$@"; do
  tool_module "$t" >/dev/null
  if is_leaf "$t"; then leaf+=("$t"); else build "$t"; fi
done
[ ${#leaf[@]} -eq 0 ] || build "${leaf[@]}"
echo "$cache/bin"
