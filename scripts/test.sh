#!/usr/bin/env bash
# Sets up a fresh Debian machine and runs every test: unit tests, the
# integration tests that drive the real vimanad binary over its CRI socket
# (as root: containers get namespaces and cgroups), and the example
# component's own tests; then the benchmarks in quick mode.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
scripts/build-example-image.sh debug >/dev/null
cargo test --workspace
# The benchmarks in quick mode, so they cannot rot (no timing is asserted;
# built in the test profile to spare CI a release build).
cargo test --bench cri_start -- --quick
cargo test --bench pull -- --quick
cargo test --bench startup -- --quick
cargo test --bench e2e -- --quick
