#!/usr/bin/env bash
# The data-plane load benchmark (benches/e2e.rs): sets up the machine, builds
# the example image and a release vimanad, then drives unary gRPC calls over
# HTTP/3 through the real vimanad (one example pod started over CRI) against
# the same component called directly over HTTP/2 (as root).
# Usage: scripts/bench-e2e.sh [--duration 5s | --quick] [--connections N]
#            [--streams 1,16,64] [--rounds N] [--shards 1[,2]] [--fin-apart] [--markdown]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
scripts/build-example-image.sh release >/dev/null
cargo bench --bench e2e -- "$@"
