#!/usr/bin/env bash
# Short, bounded cargo-fuzz runs of every target in nbio-ws/fuzz (CI).
#
#   FUZZ_RUNS      inputs per target (default 300000)
#   FUZZ_SEED      libFuzzer seed (default 1: CI runs are repeatable)
#   FUZZ_SECONDS   time cap per target (default 60)
#   FUZZ_TARGETS   which targets (default: all, from `cargo fuzz list`)
#
# cargo-fuzz needs nightly compiler features; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them. New inputs go to a temporary corpus; the
# checked-in seeds (nbio-ws/fuzz/corpus/<target>) are only read. A crash
# fails the script: libFuzzer prints the input's path under
# nbio-ws/fuzz/artifacts/<target>/; copy it to
# nbio-ws/fuzz/regressions/<target>/ (replayed by `cargo test`, see
# nbio-ws/tests/fuzz_regressions.rs), then fix the bug.
set -euo pipefail
cd "$(dirname "$0")/../nbio-ws/fuzz"
export RUSTC_BOOTSTRAP=1
SECS=${FUZZ_SECONDS:-60}
RUNS=${FUZZ_RUNS:-300000}
SEED=${FUZZ_SEED:-1}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo install cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One build for all targets (release, debug assertions, AddressSanitizer).
cargo fuzz build
for t in $targets; do
    echo "== fuzz $t: $RUNS inputs, seed $SEED, at most ${SECS}s"
    mkdir -p "$work/$t"
    # Bounded twice: libFuzzer's own clock, and a hard timeout around it.
    timeout --signal=KILL $((SECS + 120)) \
        cargo fuzz run "$t" "$work/$t" "corpus/$t" -- \
        -seed="$SEED" -runs="$RUNS" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
echo "fuzzing: every target ran without a failure"
