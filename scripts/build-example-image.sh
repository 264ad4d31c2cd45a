#!/usr/bin/env bash
# Builds the example component statically and packs it as an OCI image
# (target/example/vimana-example.oci.tar, named
# example.com/vimana-example:1.0.0) with `vimanad image pack`.
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
echo "$out/vimana-example.oci.tar"
