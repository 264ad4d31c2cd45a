#!/usr/bin/env python3
"""An independent gRPC-over-HTTP/3 client for vimanad's tests, built on aioquic.

Reads a JSON spec on stdin, makes the calls on ONE QUIC connection, and prints
a JSON result on stdout. It exits 0 whatever happens to the calls (errors go in
the result); only a malformed spec exits 2 (with {"error": ...} on stdout).

Spec (defaults in brackets):
  connect      "HOST:PORT" or "[V6]:PORT" the packets go to
  authority    default :authority, e.g. "example.com"
  server_name  TLS SNI [the authority's host]; certificates are not verified
  concurrent   run the calls at once as asyncio tasks, or one after another [true]
  timeout_s    bound on the whole run [10]
  calls        list of:
    path              ":path", e.g. "/vimana.example.v1.Echo/Unary"
    authority         overrides the spec's authority for this call
    method            [POST]
    content_type      [application/grpc]; null sends no content-type
    headers           [[name, value], ...] extra request headers [[]]
    messages_hex      request messages, each sent as one gRPC frame [[]]
    body_hex          raw request body instead of messages_hex (no gRPC framing)
    send_interval_ms  pause between request messages [0]
    chunk_size        send each framed message in DATA frames of at most this
                      many bytes (tests reassembly on the server) [null: whole]
    ping_pong         before sending message i, wait until i response messages
                      arrived (bidi streaming without buffering) [false]
    half_close        end the request stream (FIN) after the messages [true]
    cancel_after_ms   cancel the call this long after it started: RESET_STREAM
                      and STOP_SENDING with H3_REQUEST_CANCELLED [null]
    read_limit        cancel the same way once this many response messages
                      arrived (a client that stops reading a stream) [null]

Result: {"error": connection error or null, "calls": [per call, in spec order:
  {"status": :status or null, "headers": [[k, v]...], "trailers": [[k, v]...],
   "messages_hex": [...], "message_ms": [ms since the call started, per message],
   "grpc_status": from trailers, else from the headers (trailers-only), or null,
   "grpc_message": percent-decoded, or null,
   "body_hex": raw body when the response is not gRPC (else null),
   "error": transport error / timeout / malformed gRPC body, or null,
   "cancelled": null or "cancel_after_ms" / "read_limit" / "timeout",
   "reset_code": the server's RESET_STREAM code, or null,
   "stop_sending_code": the server's STOP_SENDING code, or null,
   "elapsed_ms": float}]}
"""

import asyncio
import json
import ssl
import struct
import sys
import time
import urllib.parse

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StopSendingReceived, StreamReset

from peer_result import new_result

H3_REQUEST_CANCELLED = 0x10C
MAX_MESSAGE = 64 << 20


class SpecError(Exception):
    pass


def _text(b):
    return b.decode("utf-8", "replace")


class Call:
    """One request stream: what the spec asked for and what came back."""

    def __init__(self, spec):
        self.spec = spec
        self.stream_id = None
        self.started = None
        self.buf = bytearray()
        self.grpc = None  # decided by the final response headers
        self.body = bytearray()
        self.finished = asyncio.Event()
        self.progress = asyncio.Event()  # set on every response message
        self.result = new_result()

    def ms(self):
        return round((time.monotonic() - self.started) * 1000, 3)

    def finish(self, error=None):
        if self.finished.is_set():
            return
        if error is not None and self.result["error"] is None:
            self.result["error"] = error
        if error is None and self.grpc and self.buf:
            self.result["error"] = f"response body ended inside a gRPC frame ({len(self.buf)} bytes left)"
        if self.grpc is False:
            self.result["body_hex"] = self.body.hex()
        fields = self.result["trailers"] or self.result["headers"]
        for k, v in fields:
            if k == "grpc-status":
                try:
                    self.result["grpc_status"] = int(v)
                except ValueError:
                    self.result["error"] = self.result["error"] or f"invalid grpc-status {v!r}"
            elif k == "grpc-message":
                self.result["grpc_message"] = urllib.parse.unquote(v)
        self.result["elapsed_ms"] = self.ms()
        self.finished.set()
        self.progress.set()

    def on_headers(self, headers):
        fields = [[_text(k), _text(v)] for k, v in headers]
        if self.result["status"] is None:
            status = next((v for k, v in fields if k == ":status"), None)
            if status is None or not status.isdigit():
                return self.finish(f"response headers without a valid :status: {fields}")
            if 100 <= int(status) < 200:
                return  # informational; the final headers follow
            self.result["status"] = int(status)
            self.result["headers"] = fields
            ctype = next((v for k, v in fields if k == "content-type"), "")
            self.grpc = int(status) == 200 and ctype.startswith("application/grpc")
        else:
            self.result["trailers"] = fields

    def on_data(self, data):
        """Returns why the call must be cancelled now, if it must."""
        if not self.grpc:
            self.body += data
            return None
        self.buf += data
        while len(self.buf) >= 5:
            flag = self.buf[0]
            (length,) = struct.unpack(">I", self.buf[1:5])
            if length > MAX_MESSAGE:
                self.result["error"] = f"response message of {length} bytes is over {MAX_MESSAGE}"
                return "too_large"
            if len(self.buf) < 5 + length:
                break
            message = bytes(self.buf[5 : 5 + length])
            del self.buf[: 5 + length]
            if flag != 0:
                self.result["error"] = f"response message with compressed flag {flag}"
            self.result["messages_hex"].append(message.hex())
            self.result["message_ms"].append(self.ms())
            self.progress.set()
            limit = self.spec["read_limit"]
            if limit is not None and len(self.result["messages_hex"]) >= limit:
                return "read_limit"
        return None


class GrpcClient(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.calls = {}
        self.closed = None

    def cancel(self, call, why):
        """RESET_STREAM + STOP_SENDING (H3_REQUEST_CANCELLED), then the call is over."""
        if call.finished.is_set():
            return
        call.result["cancelled"] = why
        sid = call.stream_id
        for stop in (self._quic.reset_stream, self._quic.stop_stream):
            try:
                stop(sid, H3_REQUEST_CANCELLED)
            except Exception:  # already finished or reset in that direction
                pass
        self.transmit()
        call.finish()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            self.closed = f"connection closed: error 0x{event.error_code:x} {event.reason_phrase!r}"
            for call in self.calls.values():
                call.finish(self.closed)
            return
        call = self.calls.get(getattr(event, "stream_id", None))
        if isinstance(event, StreamReset) and call is not None and not call.finished.is_set():
            call.result["reset_code"] = event.error_code
            call.finish(f"stream reset by the server (code 0x{event.error_code:x})")
        elif isinstance(event, StopSendingReceived) and call is not None and not call.finished.is_set():
            call.result["stop_sending_code"] = event.error_code
        for ev in self.http.handle_event(event):
            call = self.calls.get(getattr(ev, "stream_id", None))
            if call is None or call.finished.is_set():
                continue
            if isinstance(ev, HeadersReceived):
                call.on_headers(ev.headers)
            elif isinstance(ev, DataReceived):
                why = call.on_data(ev.data)
                if why is not None:
                    self.cancel(call, why)
            if ev.stream_ended:
                call.finish()

    async def run_call(self, call, authority, deadline):
        spec = call.spec
        call.started = time.monotonic()
        sid = self._quic.get_next_available_stream_id()
        if self.closed or time.monotonic() >= deadline:
            return call.finish(self.closed or "timed out (timeout_s) before the call started")
        call.stream_id = sid
        self.calls[sid] = call
        headers = [
            (b":method", spec["method"].encode()),
            (b":scheme", b"https"),
            (b":authority", (spec["authority"] or authority).encode()),
            (b":path", spec["path"].encode()),
        ]
        if spec["content_type"] is not None:
            headers.append((b"content-type", spec["content_type"].encode()))
        headers.append((b"te", b"trailers"))
        headers.append((b"user-agent", b"aioquic-grpc-peer"))
        headers += [(k.encode(), v.encode()) for k, v in spec["headers"]]  # as given
        if spec["body_hex"] is not None:
            pieces = [bytes.fromhex(spec["body_hex"])] if spec["body_hex"] else []
        else:
            pieces = [b"\0" + struct.pack(">I", len(m)) + m for m in map(bytes.fromhex, spec["messages_hex"])]
        cancel_task = None
        if spec["cancel_after_ms"] is not None:
            async def cancel_later():
                await asyncio.sleep(spec["cancel_after_ms"] / 1000)
                self.cancel(call, "cancel_after_ms")
            cancel_task = asyncio.ensure_future(cancel_later())
        try:
            self.http.send_headers(sid, headers, end_stream=spec["half_close"] and not pieces)
            self.transmit()
            for i, piece in enumerate(pieces):
                if i and spec["send_interval_ms"]:
                    await asyncio.sleep(spec["send_interval_ms"] / 1000)
                if spec["ping_pong"]:
                    while len(call.result["messages_hex"]) < i and not call.finished.is_set():
                        call.progress.clear()
                        await asyncio.wait_for(call.progress.wait(), max(0.0, deadline - time.monotonic()))
                if call.finished.is_set() or call.result["stop_sending_code"] is not None:
                    break
                size = spec["chunk_size"] or len(piece)
                chunks = [piece[j : j + size] for j in range(0, len(piece), size)]
                for j, chunk in enumerate(chunks):
                    last = i == len(pieces) - 1 and j == len(chunks) - 1
                    self.http.send_data(sid, chunk, end_stream=spec["half_close"] and last)
                    self.transmit()
            await asyncio.wait_for(call.finished.wait(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            call.result["error"] = f"timed out after {deadline - call.started:.3f} s (timeout_s)"
            self.cancel(call, "timeout")
        except Exception as e:  # e.g. sending on a stream the server stopped
            call.finish(f"{type(e).__name__}: {e}")
        finally:
            if cancel_task is not None:
                cancel_task.cancel()
        return None


def parse_connect(addr):
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise SpecError(f"connect {addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


CALL_DEFAULTS = {
    "authority": None,
    "method": "POST",
    "content_type": "application/grpc",
    "headers": [],
    "messages_hex": [],
    "body_hex": None,
    "send_interval_ms": 0,
    "chunk_size": None,
    "ping_pong": False,
    "half_close": True,
    "cancel_after_ms": None,
    "read_limit": None,
}


def parse_spec(raw):
    try:
        spec = json.loads(raw)
    except ValueError as e:
        raise SpecError(f"spec is not JSON: {e}")
    if not isinstance(spec, dict) or not isinstance(spec.get("calls"), list):
        raise SpecError("spec must be an object with a list of calls")
    for key in ("connect", "authority"):
        if not isinstance(spec.get(key), str):
            raise SpecError(f"spec needs {key!r} (a string)")
    parse_connect(spec["connect"])
    calls = []
    for i, c in enumerate(spec["calls"]):
        if not isinstance(c, dict) or not isinstance(c.get("path"), str):
            raise SpecError(f"call {i} needs a 'path' string")
        unknown = set(c) - set(CALL_DEFAULTS) - {"path"}
        if unknown:
            raise SpecError(f"call {i}: unknown keys {sorted(unknown)}")
        call = {**CALL_DEFAULTS, **{k: v for k, v in c.items() if v is not None or k == "content_type"}}
        try:
            call["headers"] = [(str(k), str(v)) for k, v in call["headers"]]
            [bytes.fromhex(m) for m in call["messages_hex"]]
            if call["body_hex"] is not None:
                bytes.fromhex(call["body_hex"])
        except (TypeError, ValueError) as e:
            raise SpecError(f"call {i}: {e}")
        calls.append(call)
    return {
        "connect": spec["connect"],
        "authority": spec["authority"],
        "server_name": spec.get("server_name"),
        "concurrent": spec.get("concurrent", True),
        "timeout_s": float(spec.get("timeout_s") or 10),
        "calls": calls,
    }


async def run(spec):
    calls = [Call(c) for c in spec["calls"]]
    result = {"error": None, "calls": [c.result for c in calls]}
    host, port = parse_connect(spec["connect"])
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        verify_mode=ssl.CERT_NONE,
        server_name=spec["server_name"] or spec["authority"].rsplit(":", 1)[0].strip("[]"),
        idle_timeout=spec["timeout_s"] + 5,
    )
    started = time.monotonic()
    deadline = started + spec["timeout_s"]
    handshake = {"done": False}

    async def session():
        async with connect(
            host, port, configuration=config, create_protocol=GrpcClient, wait_connected=False
        ) as client:
            client.transmit()  # connect() holds back the first flight without wait_connected
            await asyncio.wait_for(client.wait_connected(), spec["timeout_s"])
            handshake["done"] = True
            if spec["concurrent"]:
                await asyncio.gather(*(client.run_call(c, spec["authority"], deadline) for c in calls))
            else:
                for c in calls:
                    await client.run_call(c, spec["authority"], deadline)

    # aioquic fails its handshake waiter when a connection ends, awaited or not.
    def quiet(loop, context):
        if not isinstance(context.get("exception"), ConnectionError):
            loop.default_exception_handler(context)

    asyncio.get_running_loop().set_exception_handler(quiet)
    try:
        # The calls time themselves out at the deadline; this bounds the
        # closing of the connection too.
        await asyncio.wait_for(session(), spec["timeout_s"] + 2)
    except Exception as e:  # report, never crash
        timeout = isinstance(e, asyncio.TimeoutError)
        what = f"timed out ({'during' if not handshake['done'] else 'after'} the handshake)"
        what = what if timeout else f"{type(e).__name__}: {e}"
        result["error"] = f"connection to {spec['connect']}: {what}"
        for c in calls:
            if c.started is None:
                c.started = started
            if not c.finished.is_set():
                c.finish(result["error"])
    return result


def main():
    try:
        spec = parse_spec(sys.stdin.read())
    except SpecError as e:
        print(json.dumps({"error": f"bad spec: {e}", "calls": []}))
        return 2
    print(json.dumps(asyncio.run(run(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
