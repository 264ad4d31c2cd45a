#!/usr/bin/env bash
# Installs what building and testing vimanad needs on a fresh Debian machine
# (run as root). Idempotent: a second run installs nothing.
set -euo pipefail

packages=(
    protobuf-compiler # protoc, for the k8s-cri protobufs
    cmake             # BoringSSL, built by quiche (boring-sys)
    libclang-dev      # bindgen for BoringSSL
    skopeo            # an independent OCI tool the image tests check against
    docker-registry   # the CNCF distribution registry the pull tests run
    apache2-utils     # htpasswd, for the registry's basic auth in the tests
    file              # checks that the example component is static
    busybox-static    # the local busybox stand-in image critest runs (tests/critest.rs),
                      #   shell commands the streaming tests exec, the downstream
                      #   tests' ordinary image
    containerd        # the downstream CRI runtime (tests/downstream.rs), and the
                      #   sandbox tests run the hostile image under runc too
    runc              #   (tests/sandbox_runc.rs); containerd's OCI runtime
    iproute2          # `ip`, in the downstream tests' loopback-only CNI
    prometheus        # a real scraper of /metrics (and promtool) in the tests
    curl              # an HTTP/2 client for the non-gRPC cases over TCP (tests/h2_data_plane.rs)
    nghttp2-client    # h2load: drives vimanad and Caddy over HTTP/2 + TLS (scripts/bench-h2.sh)
)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "setup.sh: cargo not found: install a Rust toolchain (rustup) first" >&2
    exit 1
fi
# rustfmt and clippy: scripts/test.sh checks formatting and lints first.
for tool in fmt:rustfmt clippy:clippy; do
    if ! cargo "${tool%%:*}" --version >/dev/null 2>&1; then
        if ! command -v rustup >/dev/null; then
            echo "setup.sh: cargo ${tool%%:*} not found and no rustup to add ${tool#*:}" >&2
            exit 1
        fi
        rustup component add "${tool#*:}"
    fi
done
# aioquic: the independent HTTP/3 client the data-plane tests drive
# (tests/peers/aioquic_grpc.py).
if ! python3 -c 'import aioquic' 2>/dev/null; then
    python3 -m pip install --quiet aioquic ||
        python3 -m pip install --quiet --break-system-packages aioquic
fi
# websockets: a WebSocket client nobody here wrote, for exec through the
# kubelet's own /exec handler (tests/kubelet.rs, peers/kubelet_ws_exec.py).
if ! python3 -c 'import websockets' 2>/dev/null; then
    python3 -m pip install --quiet websockets ||
        python3 -m pip install --quiet --break-system-packages websockets
fi
# h2 (the Python HTTP/2 library): a client that never reads its responses
# over HTTP/2 (tests/peers/h2_stall.py, tests/h2_abuse.rs).
if ! python3 -c 'import h2' 2>/dev/null; then
    python3 -m pip install --quiet h2 ||
        python3 -m pip install --quiet --break-system-packages h2
fi
# grpcio: a CRI client nobody here wrote (tests/cri_clients.rs), sending
# its own default :authority on unix sockets; and the HTTP/2 + TLS data-plane
# client (tests/peers/grpcio_grpc.py).
if ! python3 -c 'import grpc' 2>/dev/null; then
    python3 -m pip install --quiet grpcio ||
        python3 -m pip install --quiet --break-system-packages grpcio
fi
