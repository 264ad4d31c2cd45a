#!/usr/bin/env bash
# The README demo: sets up a fresh Debian machine, runs vimanad on its
# built-in defaults (CRI on /run/vimanad/vimanad.sock, gRPC over HTTP/3 on
# UDP [::]:443, state in /var/lib/vimanad), imports the example component
# image, runs a pod of it through CRI and calls it over HTTP/3.
# Run as root. KEEP_RUNNING=1 leaves the node up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
image=$(scripts/build-example-image.sh release)
vimanad=target/release/vimanad

echo "== importing the example component image"
"$vimanad" image import "$image"

echo "== starting vimanad serve (defaults)"
"$vimanad" serve >/tmp/vimanad-demo.log 2>&1 &
node=$!
cleanup() {
    if [[ "${KEEP_RUNNING:-0}" != 1 ]]; then
        "$vimanad" cri rm "$pod" >/dev/null 2>&1 || true
        kill "$node" 2>/dev/null || true
        wait "$node" 2>/dev/null || true
    else
        echo "vimanad keeps running (pid $node, log /tmp/vimanad-demo.log)"
    fi
}
pod=""
trap cleanup EXIT
for _ in $(seq 100); do
    [[ -S /run/vimanad/vimanad.sock ]] && break
    sleep 0.1
done

echo "== running a pod of example.com:vimana.example.v1.Echo@1.0.0 through CRI"
"$vimanad" cri run \
    --component example.com:vimana.example.v1.Echo@1.0.0 \
    --image example.com/vimana-example:1.0.0 \
    --name echo-demo | tee /tmp/vimanad-demo.run
pod=$(awk 'NR == 1 {print $2}' /tmp/vimanad-demo.run)
"$vimanad" cri ps
echo "== a gRPC call over HTTP/3 to the example component"
"$vimanad" call --connect 127.0.0.1:443 -v --output text \
    https://example.com/vimana.example.v1.Echo/Unary --text "hello over HTTP/3"
echo "== the component's log"
cat /var/log/pods/echo-demo/component/0.log
echo "== demo done: pod $pod served a gRPC call over HTTP/3"
