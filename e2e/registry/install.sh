#!/usr/bin/env bash
# Installs the registry test tools: Debian's docker-registry (the CNCF distribution registry) and
# skopeo (the independent client the tests check results with). Does nothing when both are on PATH.
# Needs root (or sudo) for apt-get.
set -euo pipefail

if command -v docker-registry >/dev/null && command -v skopeo >/dev/null; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    SUDO="sudo"
  else
    echo "docker-registry and skopeo are missing; run as root: apt-get install -y docker-registry skopeo" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends docker-registry skopeo >/dev/null
# the package's own service is not wanted: tests start their own registries
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
command -v docker-registry >/dev/null && command -v skopeo >/dev/null
