#!/usr/bin/env python3
"""A client that never reads its responses, over HTTP/2 + TLS, built on the
Python `h2` library (nobody here wrote it): it opens many gRPC calls with a
tiny stream window (SETTINGS_INITIAL_WINDOW_SIZE) and never releases any
capacity (no WINDOW_UPDATE), so the server can send each call at most that
many bytes; it keeps reading frames (HEADERS, trailers, RST_STREAM) to see
how each call ends, then leaves (closes its connections).

Spec on stdin (JSON):
  connect "HOST:PORT", authority, path, message_hex (one request message),
  connections [4], streams (per connection) [64], window (bytes) [0],
  hold_s: how long to stay connected [4], ca_cert (PEM; else no verification)
Prints {"calls": [{"grpc_status": int|null, "reset_code": int|null,
         "partial_bytes": int, "ended_after_s": float|null}],
        "goaway_codes": [int], "errors": [str]}.
"""

import json
import selectors
import socket
import ssl
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings


def tls_context(spec):
    if spec.get("ca_cert"):
        ctx = ssl.create_default_context(cafile=spec["ca_cert"])
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    return ctx


class Conn:
    def __init__(self, spec, ctx, started, index):
        self.index = index
        host, port = spec["connect"].rsplit(":", 1)
        raw = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname=spec["authority"])
        assert self.sock.selected_alpn_protocol() == "h2"
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.initiate_connection()
        self.h2.update_settings({
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: int(spec.get("window", 0)),
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.started = started
        self.calls = {}
        self.goaway = None
        self.open = True
        self.ready = False
        self.flush()

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def start_calls(self, spec, n):
        message = bytes.fromhex(spec["message_hex"])
        body = b"\x00" + struct.pack(">I", len(message)) + message
        headers = [
            (":method", "POST"), (":scheme", "https"), (":authority", spec["authority"]),
            (":path", spec["path"]), ("content-type", "application/grpc"), ("te", "trailers"),
        ]
        for _ in range(n):
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, headers)
            self.h2.send_data(sid, body, end_stream=True)
            self.calls[sid] = {"connection": self.index, "stream": sid, "grpc_status": None, "reset_code": None,
                               "partial_bytes": 0, "ended_after_s": None}
        self.flush()

    def on_readable(self):
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return
        except OSError:
            data = b""
        if not data:
            self.open = False
            return
        for event in self.h2.receive_data(data):
            self.on_event(event)
        self.flush()

    def on_event(self, event):
        call = self.calls.get(getattr(event, "stream_id", None))
        now = round(time.monotonic() - self.started, 3)
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)) and call:
            for name, value in event.headers:
                if name == "grpc-status":
                    call["grpc_status"] = int(value)
        elif isinstance(event, h2.events.DataReceived) and call:
            # Counted, never acknowledged: the window stays closed.
            call["partial_bytes"] += len(event.data)
        elif isinstance(event, h2.events.StreamEnded) and call:
            call["ended_after_s"] = now
        elif isinstance(event, h2.events.StreamReset) and call:
            call["reset_code"] = int(event.error_code)
            call["ended_after_s"] = now
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.ready = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = int(event.error_code)


def main():
    spec = json.loads(sys.stdin.read())
    out = {"calls": [], "goaway_codes": [], "errors": []}
    started = time.monotonic()
    ctx = tls_context(spec)
    conns = []
    try:
        for i in range(int(spec.get("connections", 4))):
            conns.append(Conn(spec, ctx, started, i))
    except Exception as e:
        out["errors"].append(f"connect: {type(e).__name__}: {e}")
    selector = selectors.DefaultSelector()
    for c in conns:
        c.sock.setblocking(False)
        selector.register(c.sock, selectors.EVENT_READ, c)
    # The server's SETTINGS first (its stream limit), then the calls.
    streams = int(spec.get("streams", 64))
    pending = list(conns)
    deadline = started + float(spec.get("hold_s", 4))
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.05):
            c = key.data
            try:
                c.on_readable()
            except Exception as e:
                out["errors"].append(f"read: {type(e).__name__}: {e}")
                c.open = False
            if not c.open:
                selector.unregister(c.sock)
        for c in [c for c in pending if c.ready]:
            try:
                c.start_calls(spec, streams)
            except Exception as e:
                out["errors"].append(f"start: {type(e).__name__}: {e}")
            pending.remove(c)
    # Leave: every connection closed at once, nothing read.
    for c in conns:
        out["calls"].extend(c.calls.values())
        if c.goaway is not None:
            out["goaway_codes"].append(c.goaway)
        try:
            c.sock.close()
        except OSError:
            pass
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
