#!/usr/bin/env python3
"""An independent gRPC-over-HTTP/2 client for vimanad's tests: Python grpcio
(Google's gRPC core) over TLS, verifying the node's certificate.

Takes the same JSON spec on stdin as aioquic_grpc.py and prints the same
result shape, so one table of cases runs over HTTP/3 (aioquic) and HTTP/2
(grpcio). Exits 0 whatever happens to the calls; a malformed spec exits 2.

Spec keys (beyond aioquic_grpc.py's; keys grpcio cannot express are refused):
  ca_cert      PEM file of the certificate to trust (the node's) [required
               unless plaintext]
  server_name  the name the certificate is checked against [localhost]
  plaintext    h2c instead of TLS [false]
Each call runs as a stream-stream RPC (on the wire every gRPC call is the
same HTTP/2 request; the server decides how many messages come back).
Request headers become metadata, except grpc-timeout, which becomes the
call's deadline (grpcio sends grpc-timeout itself).

Result per call: "status" is 200 once the server answered (grpcio hides the
HTTP status), "headers" are the initial metadata, "trailers" the trailing
metadata, "grpc_status"/"grpc_message" the call's code and details;
"body_hex", "reset_code", "stop_sending_code" stay null.
"""

import json
import sys
import threading
import time

import grpc

from peer_result import new_result

UNSUPPORTED = {"method", "content_type", "body_hex", "chunk_size", "half_close", "ping_pong"}
CALL_DEFAULTS = {
    "authority": None,
    "headers": [],
    "messages_hex": [],
    "send_interval_ms": 0,
    "cancel_after_ms": None,
    "read_limit": None,
}


class SpecError(Exception):
    pass


def parse_timeout(value):
    units = {"H": 3600, "M": 60, "S": 1, "m": 1e-3, "u": 1e-6, "n": 1e-9}
    if len(value) < 2 or value[-1] not in units or not value[:-1].isdigit():
        raise SpecError(f"bad grpc-timeout {value!r}")
    return int(value[:-1]) * units[value[-1]]


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
    calls = []
    for i, c in enumerate(spec["calls"]):
        if not isinstance(c, dict) or not isinstance(c.get("path"), str):
            raise SpecError(f"call {i} needs a 'path' string")
        bad = {k for k, v in c.items() if k in UNSUPPORTED and v is not None}
        if bad:
            raise SpecError(f"call {i}: grpcio cannot send {sorted(bad)}")
        unknown = set(c) - set(CALL_DEFAULTS) - UNSUPPORTED - {"path"}
        if unknown:
            raise SpecError(f"call {i}: unknown keys {sorted(unknown)}")
        call = {**CALL_DEFAULTS, **{k: v for k, v in c.items() if k in CALL_DEFAULTS and v is not None}}
        call["path"] = c["path"]
        call["timeout"] = None
        metadata = []
        for k, v in call["headers"]:
            if k.lower() == "grpc-timeout":
                call["timeout"] = parse_timeout(v)
            else:
                metadata.append((k.lower(), v))
        call["metadata"] = metadata
        call["messages"] = [bytes.fromhex(m) for m in call["messages_hex"]]
        calls.append(call)
    if not spec.get("plaintext") and not spec.get("ca_cert"):
        raise SpecError("TLS needs 'ca_cert'")
    return spec, calls



def channel_for(spec, authority, cache):
    if authority in cache:
        return cache[authority]
    options = [("grpc.default_authority", authority), ("grpc.enable_retries", 0)]
    if spec.get("plaintext"):
        channel = grpc.insecure_channel(spec["connect"], options=options)
    else:
        with open(spec["ca_cert"], "rb") as f:
            roots = f.read()
        # The certificate must name the call's authority (grpcio checks it).
        name = spec.get("server_name") or authority.rsplit(":", 1)[0].strip("[]")
        options.append(("grpc.ssl_target_name_override", name))
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        channel = grpc.secure_channel(spec["connect"], credentials, options=options)
    cache[authority] = channel
    return channel


def run_call(spec, call, channel, deadline):
    result = new_result()
    started = time.monotonic()
    ms = lambda: round((time.monotonic() - started) * 1000, 3)

    def requests():
        for i, m in enumerate(call["messages"]):
            if i and call["send_interval_ms"]:
                time.sleep(call["send_interval_ms"] / 1000)
            yield m

    rpc = channel.stream_stream(call["path"])
    timeout = call["timeout"]
    remaining = max(0.1, deadline - time.monotonic())
    timeout = remaining if timeout is None else min(timeout, remaining)
    responses = rpc(requests(), timeout=timeout, metadata=call["metadata"] or None, wait_for_ready=False)
    timer = None
    if call["cancel_after_ms"] is not None:
        def cancel():
            result["cancelled"] = "cancel_after_ms"
            responses.cancel()
        timer = threading.Timer(call["cancel_after_ms"] / 1000, cancel)
        timer.start()
    try:
        for message in responses:
            result["messages_hex"].append(message.hex())
            result["message_ms"].append(ms())
            if call["read_limit"] is not None and len(result["messages_hex"]) >= call["read_limit"]:
                result["cancelled"] = "read_limit"
                responses.cancel()
                break
    except grpc.RpcError:
        pass  # the status is read below
    except Exception as e:  # report, never crash
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        if timer is not None:
            timer.cancel()
    try:
        code = responses.code()
        result["grpc_status"] = code.value[0] if code is not None else None
        result["grpc_message"] = responses.details() or None
        initial = responses.initial_metadata() or ()
        trailing = responses.trailing_metadata() or ()
        result["headers"] = [[k, v if isinstance(v, str) else v.hex()] for k, v in initial]
        result["trailers"] = [[k, v if isinstance(v, str) else v.hex()] for k, v in trailing]
        # An answer from the server, not a transport failure of grpcio's own.
        if result["headers"] or result["trailers"] or code == grpc.StatusCode.OK:
            result["status"] = 200
    except Exception as e:
        result["error"] = result["error"] or f"{type(e).__name__}: {e}"
    result["elapsed_ms"] = ms()
    return result


def main():
    try:
        spec, calls = parse_spec(sys.stdin.read())
    except SpecError as e:
        print(json.dumps({"error": f"bad spec: {e}", "calls": []}))
        return 2
    timeout = float(spec.get("timeout_s") or 10)
    deadline = time.monotonic() + timeout
    cache = {}
    results = [None] * len(calls)

    def one(i):
        call = calls[i]
        channel = channel_for(spec, call["authority"] or spec["authority"], cache)
        results[i] = run_call(spec, call, channel, deadline)

    # Channels are made before the threads start: one per authority.
    for call in calls:
        channel_for(spec, call["authority"] or spec["authority"], cache)
    if spec.get("concurrent", True):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(len(calls)):
            one(i)
    for channel in cache.values():
        channel.close()
    print(json.dumps({"error": None, "calls": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
