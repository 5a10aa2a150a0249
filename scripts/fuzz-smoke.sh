#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for a short, bounded time
# (FUZZ_SECONDS, default 20) over its committed seed corpus, one at a time.
# Needs a nightly toolchain (`cargo +nightly`); without one it says so and
# exits 0, so CI machines without nightly still pass. Installs cargo-fuzz
# when missing. New inputs libFuzzer finds go to a scratch directory, never
# into fuzz/corpus/. A crash, timeout or out-of-memory fails the script and
# leaves the input under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "scripts/fuzz-smoke.sh: no nightly toolchain (cargo +nightly); skipping the fuzz smoke run"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
    echo "== fuzz $target for ${seconds}s"
    mkdir -p "$scratch/$target"
    # The first corpus directory receives new inputs; the seeds are only read.
    # grep keeps the summary and any finding out of libFuzzer's progress lines;
    # the fuzzer's own status decides.
    set +e
    cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=5 -print_final_stats=1 2>&1 \
        | grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|ERROR|panicked|SUMMARY'
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        echo "scripts/fuzz-smoke.sh: fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
echo "fuzz smoke run: all targets passed"
