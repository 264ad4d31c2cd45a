#!/usr/bin/env bash
# Sets up a fresh Debian machine and runs every test: formatting and clippy
# (warnings are errors), the benchmarks in quick
# mode (so they cannot rot; no timing is asserted; test profile, sparing CI a
# release build), then the unit tests, the integration tests that drive the
# real vimanad binary over its CRI socket and HTTP/3 (as root: containers get
# namespaces and cgroups; a registry and aioquic are real peers), and the
# example component's own tests. Ends with a "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
# Style and lints first, before the long tests (tests/linters.rs adds the
# SAFETY-comment and plane-boundary rules to the tests below).
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
scripts/build-example-image.sh debug >/dev/null

# Every fuzz target for 15 s (its seed corpus replayed first): about
# 75 s of fuzzing plus the instrumented build (scripts/fuzz.sh).
scripts/fuzz.sh all 15
# .ci/run sets FUZZ_CLEAN_AFTER: the instrumented build is a second copy of
# every dependency, not needed by what follows.
if [[ ${FUZZ_CLEAN_AFTER:-0} == 1 ]]; then
    rm -rf "${FUZZ_TARGET_DIR:-fuzz/target}"
fi

for bench in cri_start cri_status pull startup e2e primitives capacity downstream; do
    cargo test --bench "$bench" -- --quick
done

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($i == "passed;") passed += $(i - 1)
            if ($i == "failed;") failed += $(i - 1)
        }
     }
     END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
