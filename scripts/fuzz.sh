#!/usr/bin/env bash
# Runs vimanad's fuzz targets (fuzz/) with libFuzzer on the stable toolchain.
#
#   scripts/fuzz.sh TARGET|all [DURATION_SECONDS]   (default 30 per target)
#   scripts/fuzz.sh list
#
# Targets: datagram grpc names layer cri_log. Each run starts from the seed
# corpus in fuzz/corpus/TARGET (replayed first: every seed and every crash
# input kept there is a regression test) and writes what it learns to a
# scratch corpus under fuzz/target/, so the repo's seeds stay curated. A
# crash leaves its input in fuzz/artifacts/TARGET/ and fails the script: fix
# it, then copy the input into fuzz/corpus/TARGET/.
#
# How, without nightly or cargo-fuzz: libfuzzer-sys builds libFuzzer from
# source, and rustc's stable -C passes=sancov-module / -C llvm-args flags
# give the coverage instrumentation cargo-fuzz would ask for (see
# ARCHITECTURE.md, "Fuzzing"). --target keeps the flags off build scripts.
set -euo pipefail

cd "$(dirname "$0")/.."
TARGETS=(datagram grpc names layer cri_log)
what=${1:-all}
duration=${2:-30}
if [[ $what == list ]]; then
    printf '%s\n' "${TARGETS[@]}"
    exit 0
fi
if [[ $what == all ]]; then
    selected=("${TARGETS[@]}")
else
    [[ " ${TARGETS[*]} " == *" $what "* ]] || { echo "unknown target $what (one of: ${TARGETS[*]}, all)" >&2; exit 2; }
    selected=("$what")
fi

triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="--cfg fuzzing -C passes=sancov-module \
 -C llvm-args=-sanitizer-coverage-level=4 \
 -C llvm-args=-sanitizer-coverage-inline-8bit-counters \
 -C llvm-args=-sanitizer-coverage-pc-table \
 -C llvm-args=-sanitizer-coverage-trace-compares \
 -C debug-assertions -C overflow-checks"
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-fuzz/target}
bins=()
for t in "${selected[@]}"; do bins+=(--bin "$t"); done
echo "fuzz: building ${selected[*]} (instrumented, profile fuzz)"
cargo build --manifest-path fuzz/Cargo.toml --profile fuzz --target "$triple" "${bins[@]}"

failed=()
for t in "${selected[@]}"; do
    seeds=fuzz/corpus/$t
    scratch=$CARGO_TARGET_DIR/corpus/$t
    artifacts=fuzz/artifacts/$t/
    mkdir -p "$scratch" "$artifacts"
    dict=()
    [[ -f fuzz/dict/$t.dict ]] && dict=(-dict="fuzz/dict/$t.dict")
    echo "fuzz: $t for ${duration}s (seeds: $(ls "$seeds" | wc -l))"
    # -rss_limit_mb: a harness that leaks fails; -timeout: one input
    # taking seconds is a finding too.
    if ! "$CARGO_TARGET_DIR/$triple/fuzz/$t" "$scratch" "$seeds" "${dict[@]}" \
        -max_total_time="$duration" -timeout=10 -rss_limit_mb=2048 \
        -max_len=4096 -artifact_prefix="$artifacts" -print_final_stats=1 \
        2> "$CARGO_TARGET_DIR/$t.log"; then
        failed+=("$t")
        tail -40 "$CARGO_TARGET_DIR/$t.log" >&2
    fi
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$CARGO_TARGET_DIR/$t.log" \
        | sed "s/^/fuzz: $t: /" || true
done
if ((${#failed[@]})); then
    echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: ${#selected[@]} passed, 0 failed"
