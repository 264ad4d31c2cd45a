#!/usr/bin/env bash
# The StartContainer latency benchmark (benches/cri_start.rs): sets up the
# machine, builds the example image and a release vimanad, then starts pods
# through the real CRI socket against a plain-process baseline (as root).
# Usage: scripts/bench-cri.sh [--pods N | --quick] [--gap-ms N] [--markdown]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
scripts/build-example-image.sh release >/dev/null
cargo bench --bench cri_start -- "$@"
