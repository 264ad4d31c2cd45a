#!/usr/bin/env bash
# Hardware counters of vimanad under load (issue 6): cycles, instructions,
# cache misses and context switches, in total and per call.
#
# Starts the e2e load benchmark (benches/e2e/, which starts vimanad with one
# example pod and drives unary gRPC calls over HTTP/3), waits until vimanad is
# busy, runs `perf stat` on its PID for PERF_SECONDS, then divides by the
# calls the bench reports (its calls/s for the vimanad path times the seconds
# counted: per call is approximate, as perf counts part of the window).
#
# Usage: scripts/perf-stat.sh
#   env: STREAMS=16 DURATION=10s PERF_SECONDS=5 EVENTS=cycles,instructions,...
# Needs hardware performance counters: on a VM without a virtual PMU (e.g.
# Firecracker) `perf` reports them <not supported> and this script says so and
# exits 2. Run it on bare metal.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STREAMS=${STREAMS:-16}
DURATION=${DURATION:-10s}
PERF_SECONDS=${PERF_SECONDS:-5}
EVENTS=${EVENTS:-cycles,instructions,cache-misses,context-switches,task-clock}
OUT=target/perf-stat
mkdir -p "$OUT"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

# --- tools ---------------------------------------------------------------
if ! command -v perf >/dev/null 2>&1 || ! perf --version >/dev/null 2>&1; then
    echo "perf-stat: installing perf (Debian: linux-perf)" >&2
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq linux-perf ||
        { echo "perf-stat: could not install linux-perf (on Ubuntu: linux-tools-\$(uname -r))" >&2; exit 1; }
fi

# --- is perf usable here? --------------------------------------------------
probe=$(perf stat -x, -e instructions true 2>&1 || true)
if ! grep -q ',instructions' <<<"$probe" || grep -q '<not supported>' <<<"$probe"; then
    cat >&2 <<EOF
perf-stat: NOT SUPPORTED on this machine: perf cannot count hardware events
(\`perf stat -e instructions true\` said:
$(sed 's/^/    /' <<<"$probe")
). This is usual on a VM without a virtual PMU (Firecracker, some clouds).
Run this script on bare metal; for where the time goes on this machine,
scripts/flamegraph.sh samples with the cpu-clock software event.
EOF
    exit 2
fi
if [ "$(cat /proc/sys/kernel/perf_event_paranoid)" -gt 1 ] && [ "$(id -u)" -ne 0 ]; then
    echo "perf-stat: kernel.perf_event_paranoid > 1: run as root or lower it" >&2
    exit 1
fi

# --- load ----------------------------------------------------------------
TOOL=perf-stat
# shellcheck source=lib/e2e-load.sh
. scripts/lib/e2e-load.sh

echo "perf-stat: vimanad PID $pid under load ($STREAMS streams); counting for ${PERF_SECONDS}s" >&2
STAT="$OUT/stat.csv"
perf stat -x, -o "$STAT" -e "$EVENTS" -p "$pid" -- sleep "$PERF_SECONDS"

finish_e2e_load

# calls/s of the vimanad (HTTP/3) row of the bench's table.
cps=$(sed -n 's/.*vimanad (HTTP\/3)//p' "$BENCH_LOG" | awk 'NR==1 {print $1}')
echo
echo "perf stat -p $pid over ${PERF_SECONDS}s, vimanad at ${cps:-?} calls/s ($STREAMS streams):"
awk -F, -v cps="${cps:-0}" -v secs="$PERF_SECONDS" '
    /^#/ || NF < 3 { next }
    {
        value = $1; unit = $2; event = $3
        calls = cps * secs
        if (value ~ /^</ || calls <= 0) per = "-"
        else if (event == "task-clock") per = sprintf("%.1f µs", value * 1000 / calls)
        else per = sprintf("%.1f", value / calls)
        printf "  %-18s %18s %-5s  per call: %s\n", event, value, unit, per
    }' "$STAT"
echo "(per call = count / (calls/s x ${PERF_SECONDS} s); raw: $STAT, bench log: $BENCH_LOG)"
