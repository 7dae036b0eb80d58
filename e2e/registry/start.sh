#!/usr/bin/env bash
# Starts a throw-away registry on loopback for trying `multiarch-operator publish` by hand:
#   e2e/registry/start.sh [PORT]      (default 5123; plain HTTP, no authentication)
# Storage and config live in a temporary directory removed on exit; Ctrl-C stops it.
#   multiarch-operator publish --plain-http --tag 127.0.0.1:5123/app:1 ...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/install.sh"

port="${1:-5123}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YAML
echo "registry on http://127.0.0.1:$port (storage $dir/storage)" >&2
docker-registry serve "$dir/config.yml"
