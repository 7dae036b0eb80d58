#!/usr/bin/env bash
# The end-to-end suite: brings the environment up (e2e/env.sh: a real control plane, KWOK nodes, a
# registry, git servers, the builder test double, the operator's Helm release), builds the
# operator, runs the typed Rust scenarios (e2e/tests/scenarios, package multiarch-e2e) with the
# normal test runner, and stops the environment. Each scenario prints its name and time; a failing
# one prints the operator's log lines about its namespace.
#
#   e2e/run.sh [FILTER...]     cargo test name filters (default: every scenario)
#
# E2E_THREADS (default 1) scenarios run at once; exclusive ones always run alone.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
state=${E2E_STATE:-/tmp/multiarch-e2e}
target=${CARGO_TARGET_DIR:-$root/target}

# one environment per machine (fixed ports): a second run waits for the first to finish
exec 9>"${TMPDIR:-/tmp}/multiarch-e2e-env.lock"
if ! flock -n 9; then
  echo "[e2e] another end-to-end run holds the environment; waiting for it" >&2
  flock 9
fi
"$here/env.sh" up
trap '"$here/env.sh" down >/dev/null 2>&1' EXIT
cd "$root"
echo "[e2e] building the operator and the scenarios" >&2
cargo build -q --bin multiarch-operator
cargo test -q -p multiarch-e2e --test scenarios --no-run
mkdir -p "$state/bin"
# copied, then renamed into place: a process still running the previous binary keeps its file
cp "$target/debug/multiarch-operator" "$state/bin/multiarch-operator.new"
mv -f "$state/bin/multiarch-operator.new" "$state/bin/multiarch-operator"
: >"$state/operator.log"
started=$SECONDS
status=0
cargo test -p multiarch-e2e --test scenarios -- --test-threads="${E2E_THREADS:-1}" "$@" || status=$?
echo "[e2e] scenarios took $((SECONDS - started)) s" >&2
exit $status
