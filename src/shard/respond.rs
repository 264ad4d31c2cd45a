//! Every failure on the data path becomes a response here, in one place:
//! a gRPC status in trailers (or a trailers-only response), or an HTTP
//! status for requests that are not gRPC.

use quiche::h3::Header;

use super::grpc::{encode_message, Code};

/// Why the data plane answered a call itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Internal(String),
    /// Not a gRPC request: an HTTP status, no gRPC status.
    #[error("HTTP {0}")]
    NotGrpc(u16),
    /// The client went away; nothing to answer.
    #[error("cancelled by the client")]
    Cancelled,
}

impl CallError {
    pub fn code(&self) -> Code {
        match self {
            CallError::Unimplemented(_) => Code::Unimplemented,
            CallError::Unavailable(_) => Code::Unavailable,
            CallError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CallError::ResourceExhausted(_) => Code::ResourceExhausted,
            CallError::Internal(_) | CallError::NotGrpc(_) => Code::Internal,
            CallError::Cancelled => Code::Cancelled,
        }
    }
}

/// A complete response for a call that never reached a component, or whose
/// component failed before sending headers.
pub fn trailers_only(error: &CallError) -> Vec<Header> {
    if let CallError::NotGrpc(status) = error {
        return vec![Header::new(b":status", status.to_string().as_bytes())];
    }
    let mut headers = vec![
        Header::new(b":status", b"200"),
        Header::new(b"content-type", b"application/grpc"),
    ];
    headers.extend(status_trailers(error));
    headers
}

/// The trailers ending a response whose headers were already sent.
pub fn status_trailers(error: &CallError) -> Vec<Header> {
    vec![
        Header::new(b"grpc-status", error.code().as_str().as_bytes()),
        Header::new(
            b"grpc-message",
            encode_message(&error.to_string()).as_bytes(),
        ),
    ]
}
