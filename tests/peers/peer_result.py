"""The result of one call, in the shape every gRPC peer here prints
(aioquic_grpc.py over HTTP/3, grpcio_grpc.py over HTTP/2; tests/common/peers.rs
reads it). Each peer fills what its library shows and leaves the rest None."""


def new_result():
    return {
        "status": None,
        "headers": [],
        "trailers": [],
        "messages_hex": [],
        "message_ms": [],
        "grpc_status": None,
        "grpc_message": None,
        "body_hex": None,
        "error": None,
        "cancelled": None,
        "reset_code": None,
        "stop_sending_code": None,
        "elapsed_ms": None,
    }
