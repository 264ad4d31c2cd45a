#!/usr/bin/env bash
# vimanad's RSS against the number of clients that stop reading (issue 15;
# benches/capacity/stalled.rs, section E), for each vimanad binary given,
# one after the other in this run: 0, 2, 4, 8, 16 QUIC connections of the
# abusive aioquic peer × 256 server-streaming calls each, held 5 s, then
# RSS after they left. Default binaries: main before the stream hardening
# (/work/bins/vimanad-aa025bf) and main (/work/bins/vimanad-main).
# Usage: scripts/bench-stalled.sh [--markdown] [--stalled-connections 0,2,4]
#            [--stalled-streams 256] [--stalled-hold 5s] [-- BIN...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

args=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
    args+=("$1")
    shift
done
[[ "${1:-}" == "--" ]] && shift
bins=("$@")
if [[ ${#bins[@]} -eq 0 ]]; then
    bins=(/work/bins/vimanad-aa025bf /work/bins/vimanad-main)
fi

scripts/setup.sh
scripts/build-example-image.sh release >/dev/null
for bin in "${bins[@]}"; do
    echo "== $bin"
    VIMANAD_BIN="$bin" cargo bench --bench capacity -- --sections e "${args[@]}"
done
