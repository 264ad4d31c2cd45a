#!/usr/bin/env python3
"""Raw HTTP/2 frames over TLS (Python's ssl, ALPN h2) for the adversarial
HTTP/2 tests: what no polite client does. Spec on stdin (JSON):
  connect "HOST:PORT", authority, mode:
    "rapid_reset": N streams, each HEADERS then RST_STREAM(CANCEL), in one burst
    "idle":        preface + SETTINGS, then nothing (wait for the server)
    "silent":      TCP connected, no TLS ClientHello at all
  count (rapid_reset) [500], wait_s: how long to wait for the close [10]
Prints {"closed_after_s": float or null, "goaway_code": int or null,
        "frames": {type: count}, "error": str or null}.
"""

import json
import socket
import ssl
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    # Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2).
    name, value = name.encode(), value.encode()
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def main():
    spec = json.loads(sys.stdin.read())
    host, port = spec["connect"].rsplit(":", 1)
    wait_s = float(spec.get("wait_s", 10))
    out = {"closed_after_s": None, "goaway_code": None, "frames": {}, "error": None}
    raw = socket.create_connection((host.strip("[]"), int(port)), timeout=wait_s)
    started = time.monotonic()
    try:
        if spec["mode"] == "silent":
            sock = raw
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            sock = ctx.wrap_socket(raw, server_hostname="localhost")
            assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
            sock.sendall(PREFACE + frame(0x4, 0, 0))
            started = time.monotonic()
        if spec["mode"] == "rapid_reset":
            block = b"".join([
                literal(":method", "POST"), literal(":scheme", "https"),
                literal(":authority", spec["authority"]),
                literal(":path", "/vimana.example.v1.Echo/Unary"),
                literal("content-type", "application/grpc"), literal("te", "trailers"),
            ])
            burst = bytearray()
            for i in range(int(spec.get("count", 500))):
                sid = 2 * i + 1
                burst += frame(0x1, 0x4, sid, block)  # HEADERS, END_HEADERS
                burst += frame(0x3, 0, sid, struct.pack(">I", 0x8))  # RST_STREAM CANCEL
            try:
                sock.sendall(bytes(burst))
            except OSError:
                pass  # closed on us mid-burst: read what came
        buf = b""
        while True:
            try:
                data = sock.recv(65536)
            except (socket.timeout, TimeoutError):
                out["error"] = "not closed within wait_s"
                break
            except OSError:
                data = b""
            if not data:
                out["closed_after_s"] = round(time.monotonic() - started, 3)
                break
            buf += data
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                kind = buf[3]
                payload = buf[9 : 9 + length]
                out["frames"][str(kind)] = out["frames"].get(str(kind), 0) + 1
                if kind == 0x7 and len(payload) >= 8:
                    out["goaway_code"] = struct.unpack(">I", payload[4:8])[0]
                buf = buf[9 + length :]
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
