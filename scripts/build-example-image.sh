#!/usr/bin/env bash
# Builds the example component statically and packs it as an OCI image
# (target/example/vimana-example.oci.tar, named
# example.com/vimana-example:1.0.0) with `vimanad image pack`; also packs
# the sandbox tests' hostile component (target/example/vimana-hostile.oci.tar,
# example.com/vimana-hostile:1.0.0), built in the same cargo run.
# Usage: scripts/build-example-image.sh [debug|release]   (vimanad profile)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile="${1:-debug}"
bin=$(scripts/build-example.sh)
if [[ "$profile" == release ]]; then
    cargo build --release --bin vimanad >&2
else
    cargo build --bin vimanad >&2
fi
out="${CARGO_TARGET_DIR:-target}/example"
mkdir -p "$out"
"${CARGO_TARGET_DIR:-target}/$profile/vimanad" image pack \
    --binary "$bin" \
    --name example.com/vimana-example:1.0.0 \
    --output "$out/vimana-example.oci.tar" >&2
"${CARGO_TARGET_DIR:-target}/$profile/vimanad" image pack \
    --binary "$(dirname "$bin")/vimana-hostile" \
    --name example.com/vimana-hostile:1.0.0 \
    --output "$out/vimana-hostile.oci.tar" >&2
# The same binary as a pause image, for containerd's pod sandboxes when the
# hostile image runs under runc for comparison (tests/sandbox_runc.rs).
"${CARGO_TARGET_DIR:-target}/$profile/vimanad" image pack \
    --binary "$(dirname "$bin")/vimana-hostile" \
    --entrypoint-path /pause \
    --name example.com/vimana-pause:1.0.0 \
    --output "$out/vimana-pause.oci.tar" >&2
echo "$out/vimana-example.oci.tar"
