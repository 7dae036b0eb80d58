#!/usr/bin/env bash
# `make fuzz`: runs each fuzz target of fuzz/fuzz_targets for FUZZ_SECONDS (default 60) with
# cargo-fuzz (libFuzzer), starting from the seeds in fuzz/seeds, and prints each target's
# executions. A crash leaves its input in fuzz/artifacts/<target>/ and fails the run; turn it into
# a regression test in the normal suite. Kept out of `make test`.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-reference platform docker_config pkt_lines manifest termination_message}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "[fuzz] installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi
# cargo-fuzz wants nightly's -Z flags: nightly when installed, else stable told to accept them
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

failed=0
for t in $targets; do
    mkdir -p "corpus/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    log="$(mktemp)"
    echo "[fuzz] $t for ${seconds}s"
    if cargo "${toolchain[@]}" fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=1024 >"$log" 2>&1; then
        echo "[fuzz] $t: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n1) ; corpus $(ls "corpus/$t" | wc -l) inputs"
    else
        failed=1
        echo "[fuzz] $t FOUND A CRASH (input in fuzz/artifacts/$t/):"
        tail -n 40 "$log"
    fi
    rm -f "$log"
done
exit "$failed"
