#!/usr/bin/env bash
# The data plane's capacity (benches/capacity/main.rs, issue 6): sets up the
# machine, builds the example image and a release vimanad, then measures,
# each beside a baseline in the same run: (A) new QUIC handshakes per second
# on one shard, plain and with Retry forced, against calls on kept
# connections; (B) vimanad's RSS per idle QUIC connection (10,000 open) and
# with 100 running pods; (C) from a pod's publication to routable on every
# shard; (D) unary p99 while the control thread publishes every millisecond,
# against no publishing (as root).
# Usage: scripts/bench-capacity.sh [--quick] [--markdown] [--sections a,b,c,d]
#            [--duration 5s] [--rounds 3] [... see benches/capacity/main.rs]
# The publication primitive alone (publish → seen by a spinning reader on
# every other core): cargo bench --bench primitives -- [--markdown]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
scripts/build-example-image.sh release >/dev/null
cargo bench --bench capacity -- "$@"
