#!/usr/bin/env bash
# Where vimanad's time goes under load (issue 6): a flamegraph of the hot path.
#
# Starts the e2e load benchmark (benches/e2e/, which starts vimanad with one
# example pod and drives unary gRPC calls over HTTP/3), waits until vimanad is
# busy, samples it with `perf record` for PERF_SECONDS, and renders
# target/flamegraph.svg with inferno (perf script | inferno-collapse-perf |
# inferno-flamegraph). The release profile keeps line tables for symbols.
#
# Usage: scripts/flamegraph.sh
#   env: STREAMS=16 DURATION=10s PERF_SECONDS=5 FREQ=999
#        CALL_GRAPH=fp (default, `perf record -g`: frame pointers, cheap but
#        shallow for Rust built without them) or dwarf (deep stacks, larger
#        data, slower `perf script`)
# Samples on the `cycles` hardware event; on a VM without a virtual PMU (e.g.
# Firecracker) it says so and samples on the `cpu-clock` software timer
# instead. Exits non-zero if perf cannot sample at all.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STREAMS=${STREAMS:-16}
DURATION=${DURATION:-10s}
PERF_SECONDS=${PERF_SECONDS:-5}
FREQ=${FREQ:-999}
CALL_GRAPH=${CALL_GRAPH:-fp}
OUT=target/flamegraph
SVG=target/flamegraph.svg
mkdir -p "$OUT"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

# --- tools ---------------------------------------------------------------
if ! command -v perf >/dev/null 2>&1 || ! perf --version >/dev/null 2>&1; then
    echo "flamegraph: installing perf (Debian: linux-perf)" >&2
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq linux-perf ||
        { echo "flamegraph: could not install linux-perf (on Ubuntu: linux-tools-\$(uname -r))" >&2; exit 1; }
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v inferno-flamegraph >/dev/null 2>&1 || ! command -v inferno-collapse-perf >/dev/null 2>&1; then
    echo "flamegraph: installing inferno (cargo install inferno --locked)" >&2
    cargo install inferno --locked
fi

# --- is perf usable here? --------------------------------------------------
event=cycles
probe=$(perf stat -x, -e cycles true 2>&1 || true)
if ! grep -q ',cycles' <<<"$probe" || grep -q '<not supported>' <<<"$probe"; then
    echo "flamegraph: NOTE: hardware event 'cycles' is not supported here (no PMU: a VM?);" \
        "sampling with the cpu-clock software timer instead" >&2
    event=cpu-clock
fi
if ! perf record -e "$event" -F "$FREQ" -g -o "$OUT/probe.data" -- true >/dev/null 2>&1; then
    echo "flamegraph: NOT SUPPORTED: \`perf record -e $event\` fails on this machine" \
        "(kernel.perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid); run as root?)" >&2
    exit 2
fi
rm -f "$OUT/probe.data"
case "$CALL_GRAPH" in
    fp) cg=(-g) ;;
    dwarf) cg=(--call-graph dwarf,16384) ;;
    *) echo "flamegraph: CALL_GRAPH must be fp or dwarf" >&2; exit 1 ;;
esac

# --- load ----------------------------------------------------------------
TOOL=flamegraph
# shellcheck source=lib/e2e-load.sh
. scripts/lib/e2e-load.sh

echo "flamegraph: vimanad PID $pid under load ($STREAMS streams); sampling $event at ${FREQ} Hz for ${PERF_SECONDS}s" >&2
perf record -e "$event" -F "$FREQ" "${cg[@]}" -o "$OUT/perf.data" -p "$pid" -- sleep "$PERF_SECONDS"

finish_e2e_load

perf script -i "$OUT/perf.data" >"$OUT/perf.script"
inferno-collapse-perf <"$OUT/perf.script" >"$OUT/collapsed.txt"
inferno-flamegraph --title "vimanad, $STREAMS streams, $event" <"$OUT/collapsed.txt" >"$SVG"
echo "flamegraph: wrote $SVG ($(wc -l <"$OUT/collapsed.txt") distinct stacks); top frames by samples:"
# Self time per leaf frame, heaviest first.
awk '{n = $NF; $NF = ""; k = split($0, f, ";"); leaf = f[k]; sub(/ +$/, "", leaf); s[leaf] += n; t += n}
     END {for (l in s) printf "%6.2f%%  %s\n", 100 * s[l] / t, l}' "$OUT/collapsed.txt" |
    sort -rn | awk 'NR <= 15'
