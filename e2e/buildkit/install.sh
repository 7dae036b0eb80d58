#!/usr/bin/env bash
# Prepares this machine to run builder pods' own command with real rootless BuildKit
# (../builder-double/double.py, real mode): Debian's rootlesskit, uidmap, runc, qemu-user-static and
# binfmt-support; binfmt_misc mounted with qemu-aarch64 enabled (there is no systemd to do it); an
# unprivileged user with subordinate uid/gid ranges; BuildKit's binaries where that user can run
# them. Idempotent; prints the directory of the BuildKit binaries last.
#
#   e2e/buildkit/install.sh TOOLS_BIN
set -euo pipefail
tools_bin=$1
BUILD_USER=${E2E_BUILD_USER:-e2e-builder}
BIN=/opt/multiarch-e2e/bin

missing=()
for pkg in rootlesskit uidmap runc qemu-user-static binfmt-support; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# foreign-architecture RUN steps (the stand-in for an arm64 node on this amd64 machine)
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64
fi
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || { echo "qemu-aarch64 binfmt is not enabled" >&2; exit 1; }

# the unprivileged user builds run as (useradd gives it subordinate id ranges for rootlesskit)
if ! id "$BUILD_USER" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/sh "$BUILD_USER"
fi
for f in /etc/subuid /etc/subgid; do
  grep -q "^$BUILD_USER:" "$f" 2>/dev/null || echo "$BUILD_USER:231072:65536" >>"$f"
done

# BuildKit's binaries (built from the pinned module in e2e/tools/buildkit), readable by that user
mkdir -p "$BIN"
for b in buildkitd buildctl buildctl-daemonless.sh; do
  cmp -s "$tools_bin/$b" "$BIN/$b" || install -m 0755 "$tools_bin/$b" "$BIN/$b"
done
# the mount points of a rootless BuildKit pod, which do not exist on a host
mkdir -p /home/user
[ -e /dev/termination-log ] || : >/dev/termination-log
echo "$BIN"
