#!/usr/bin/env python3
"""Clients nobody here wrote, against the kubelet's own HTTPS server (port
10250 style, anonymous auth in the test's kubelet config; its certificate is
self-signed, so it is not verified):

  kubelet_https.py get URL    HTTPS GET (Python's urllib), as kubectl logs
                              reaches /containerLogs through the API server
  kubelet_https.py exec URL   WebSocket (the `websockets` package) with
                              subprotocol v4.channel.k8s.io, as kubectl exec
                              reaches /exec through the API server

Prints one JSON object: get -> {"status", "body"}; exec -> {"protocol",
"stdout", "stderr", "error"} (channel 1, 2 and 3 of the v4 protocol; the
error channel carries a metav1.Status).
"""

import json
import ssl
import sys
import urllib.error
import urllib.request


def insecure():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def get(url):
    try:
        with urllib.request.urlopen(url, context=insecure(), timeout=20) as r:
            return {"status": r.status, "body": r.read().decode("utf-8", "replace")}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read().decode("utf-8", "replace")}


def ws_exec(url):
    from websockets.sync.client import connect

    channels = {1: b"", 2: b"", 3: b""}
    with connect(
        url,
        ssl=insecure(),
        subprotocols=["v4.channel.k8s.io"],
        open_timeout=20,
        close_timeout=5,
    ) as ws:
        protocol = ws.subprotocol
        try:
            while True:
                message = ws.recv(timeout=20)
                if isinstance(message, str):
                    message = message.encode()
                if message and message[0] in channels:
                    channels[message[0]] += message[1:]
        except Exception as e:  # the server closes when the command ends
            if "ConnectionClosed" not in type(e).__name__:
                raise
    return {
        "protocol": protocol,
        "stdout": channels[1].decode("utf-8", "replace"),
        "stderr": channels[2].decode("utf-8", "replace"),
        "error": channels[3].decode("utf-8", "replace"),
    }


def main():
    mode, url = sys.argv[1], sys.argv[2]
    out = get(url) if mode == "get" else ws_exec(url)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
