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
    containerd        # the downstream CRI runtime the downstream tests run
    runc              # containerd's OCI runtime
    busybox-static    # the downstream tests' ordinary image
    iproute2          # `ip`, in the downstream tests' loopback-only CNI
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
# aioquic: the independent HTTP/3 client the data-plane tests drive
# (tests/peers/aioquic_grpc.py).
if ! python3 -c 'import aioquic' 2>/dev/null; then
    python3 -m pip install --quiet aioquic ||
        python3 -m pip install --quiet --break-system-packages aioquic
fi
