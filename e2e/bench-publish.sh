#!/usr/bin/env bash
# The publish benchmark (`make bench-publish`): `multiarch-operator publish` against the tools
# people use to assemble a multi-platform index, on the same images in one run, through a
# counting proxy in front of a real registry on loopback (e2e/publish-bench/bench.py says how).
# Prints figures; never fails on a number.
#
#   e2e/bench-publish.sh            RUNS=9 NS=2,4,8 by default
#   PUBLISH_BIN=/path/to/old/multiarch-operator e2e/bench-publish.sh   (another build of publish)
#
# The peers are built from pinned Go modules by e2e/tools/bench-peers.sh (crane, regctl, oras,
# buildx for `imagetools create`; only this benchmark builds them), skopeo comes from Debian
# (e2e/registry/install.sh). publish is the release build.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
RUNS=${RUNS:-9} NS=${NS:-2,4,8}

"$here/registry/install.sh"
bin=$("$here/tools/bench-peers.sh" | tail -n1)
if [ -z "${PUBLISH_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q --bin multiarch-operator)
  PUBLISH_BIN=$root/target/release/multiarch-operator
fi
exec python3 "$here/publish-bench/bench.py" --publish "$PUBLISH_BIN" --tools "$bin" --runs "$RUNS" --ns "$NS"
