# Sourced by the profiling scripts: starts the e2e load benchmark in the
# background and finds the vimanad it drives, once that vimanad is busy.
# Needs: TOOL (name for messages), OUT, STREAMS, DURATION.
# Sets: BENCH_LOG, bench_pid, pid (vimanad's), and an EXIT trap that stops
# the load. Call finish_e2e_load after measuring.

scripts/setup.sh
scripts/build-example-image.sh release >/dev/null
cargo bench --bench e2e --no-run

BENCH_LOG="$OUT/e2e.log"
bench_pid=""
cleanup() {
    if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
        kill -- "-$bench_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
# Own process group, so a failure below stops the bench and its vimanad.
# vimanad only beside the ceiling (--no-caddy): the profile is of vimanad.
setsid cargo bench --bench e2e -- --streams "$STREAMS" --duration "$DURATION" --rounds 1 \
    --no-caddy >"$BENCH_LOG" 2>&1 &
bench_pid=$!

# Newest `vimanad serve` (the bench's), then wait until it burns CPU (the
# load window, not start-up).
pid=""
for _ in $(seq 1 600); do
    pid=$(pgrep -n -f 'vimanad serve' || true)
    [ -n "$pid" ] && break
    kill -0 "$bench_pid" 2>/dev/null || { cat "$BENCH_LOG" >&2; echo "$TOOL: the bench ended before vimanad started" >&2; exit 1; }
    sleep 0.2
done
[ -n "$pid" ] || { echo "$TOOL: no 'vimanad serve' process after 120 s" >&2; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)
busy=""
for _ in $(seq 1 600); do
    a=$(ticks "$pid"); sleep 0.2; b=$(ticks "$pid")
    # At least half a core over 0.2 s.
    if [ $((b - a)) -ge $((hz / 10)) ]; then busy=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
done
[ -n "$busy" ] || { echo "$TOOL: vimanad (PID $pid) never got busy" >&2; exit 1; }

finish_e2e_load() {
    wait "$bench_pid" || echo "$TOOL: the e2e bench exited with an error (see $BENCH_LOG)" >&2
    bench_pid=""
    cat "$BENCH_LOG"
}
