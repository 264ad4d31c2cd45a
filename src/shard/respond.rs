//! Every status decision of the data path, in one place: a failure becomes
//! a gRPC status in trailers or a trailers-only response (whichever the
//! stream's state allows), or an HTTP status for requests that are not
//! gRPC; a component's response is passed on with the deadline rule
//! applied, and one that ends without a status gets UNAVAILABLE.
//!
//! Decides what the client sees; writes only through the call's end of the
//! stream, never to quiche.

use std::time::Instant;

use quiche::h3::Header;

use super::grpc::{encode_message, Code};
use super::stream::CallStream;

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

    /// Whether the shard counts it as an error it answered (a client that
    /// went away is not one).
    pub fn counts(&self) -> bool {
        *self != CallError::Cancelled
    }
}

/// Ends a call the data plane answers itself: a trailers-only response if
/// nothing of the response was queued yet, the status in trailers after
/// headers (and maybe messages); nothing once the client is gone or the
/// response is complete.
pub fn answer(stream: &CallStream, error: &CallError) {
    if stream.is_over() {
        return;
    }
    if stream.response_started() {
        stream.send_trailers(status_trailers(error));
    } else {
        stream.send_headers(trailers_only(error), true);
    }
}

/// A component's response headers for the client (`:status` first).
pub fn response_headers(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    deadline: Option<Instant>,
) -> Vec<Header> {
    let mut out = Vec::with_capacity(headers.len() + 1);
    out.push(Header::new(b":status", status.as_str().as_bytes()));
    forward(&mut out, headers, deadline);
    out
}

/// A component's trailers for the client; a response that ended without
/// them has no status, and the client gets UNAVAILABLE.
pub fn response_trailers(
    trailers: Option<&http::HeaderMap>,
    deadline: Option<Instant>,
) -> Vec<Header> {
    match trailers {
        Some(trailers) => {
            let mut out = Vec::with_capacity(trailers.len());
            forward(&mut out, trailers, deadline);
            out
        }
        None => status_trailers(&CallError::Unavailable(
            "the component ended the call without a status".into(),
        )),
    }
}

/// Copies a component's headers. A component's own deadline handling
/// answers CANCELLED; to the client, once the deadline it set has passed,
/// that is DEADLINE_EXCEEDED.
fn forward(out: &mut Vec<Header>, map: &http::HeaderMap, deadline: Option<Instant>) {
    let expired = deadline.is_some_and(|d| Instant::now() >= d);
    for (name, value) in map {
        if expired && name == "grpc-status" && value == "1" {
            out.push(Header::new(
                b"grpc-status",
                Code::DeadlineExceeded.as_str().as_bytes(),
            ));
            continue;
        }
        out.push(Header::new(name.as_str().as_bytes(), value.as_bytes()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::stream;
    use quiche::h3::NameValue;

    fn get<'h>(headers: &'h [Header], name: &str) -> Option<&'h [u8]> {
        headers
            .iter()
            .find(|h| h.name() == name.as_bytes())
            .map(|h| h.value())
    }

    #[test]
    fn an_error_before_any_response_is_trailers_only() {
        let (conn, call) = stream::open();
        answer(&call, &CallError::Unimplemented("no such domain".into()));
        let (headers, fin) = conn.take_headers().expect("a response");
        assert!(fin, "the headers end the stream");
        assert_eq!(get(&headers, ":status"), Some(&b"200"[..]));
        assert_eq!(
            get(&headers, "content-type"),
            Some(&b"application/grpc"[..])
        );
        assert_eq!(get(&headers, "grpc-status"), Some(&b"12"[..]));
        assert_eq!(get(&headers, "grpc-message"), Some(&b"no such domain"[..]));
        assert!(conn.take_trailers().is_none());
    }

    #[test]
    fn an_error_after_the_headers_is_a_status_in_trailers() {
        let (conn, call) = stream::open();
        call.send_headers(vec![Header::new(b":status", b"200")], false);
        answer(&call, &CallError::Unavailable("gone".into()));
        let (_, fin) = conn.take_headers().expect("the component's headers");
        assert!(!fin);
        conn.headers_sent(false);
        let trailers = conn.take_trailers().expect("trailers");
        assert_eq!(get(&trailers, "grpc-status"), Some(&b"14"[..]));
        assert_eq!(get(&trailers, "grpc-message"), Some(&b"gone"[..]));
    }

    #[test]
    fn nothing_is_answered_once_the_client_is_gone_or_the_response_is_done() {
        let (conn, call) = stream::open();
        conn.abort();
        answer(&call, &CallError::Internal("late".into()));
        assert!(!conn.has_output());

        let (conn, call) = stream::open();
        call.send_headers(trailers_only(&CallError::Cancelled), true);
        let _ = conn.take_headers();
        conn.headers_sent(true);
        answer(&call, &CallError::Internal("late".into()));
        assert!(!conn.has_output());
    }

    #[test]
    fn not_grpc_is_a_bare_http_status() {
        assert_eq!(
            trailers_only(&CallError::NotGrpc(415)),
            vec![Header::new(b":status", b"415")]
        );
        assert!(!CallError::Cancelled.counts());
        assert!(CallError::NotGrpc(415).counts());
    }

    #[test]
    fn cancelled_after_the_deadline_reads_deadline_exceeded() {
        let mut map = http::HeaderMap::new();
        map.insert("grpc-status", "1".parse().unwrap());
        map.insert("grpc-message", "context canceled".parse().unwrap());
        let past = Some(Instant::now() - std::time::Duration::from_millis(1));
        let future = Some(Instant::now() + std::time::Duration::from_secs(60));
        let trailers = response_trailers(Some(&map), past);
        assert_eq!(get(&trailers, "grpc-status"), Some(&b"4"[..]));
        assert_eq!(
            get(&trailers, "grpc-message"),
            Some(&b"context canceled"[..])
        );
        for deadline in [future, None] {
            let trailers = response_trailers(Some(&map), deadline);
            assert_eq!(get(&trailers, "grpc-status"), Some(&b"1"[..]));
        }
        // Trailers-only from the component: the status is in the headers.
        let headers = response_headers(http::StatusCode::OK, &map, past);
        assert_eq!(headers[0], Header::new(b":status", b"200"));
        assert_eq!(get(&headers, "grpc-status"), Some(&b"4"[..]));
    }

    #[test]
    fn a_response_without_trailers_is_unavailable() {
        let trailers = response_trailers(None, None);
        assert_eq!(get(&trailers, "grpc-status"), Some(&b"14"[..]));
        assert_eq!(
            get(&trailers, "grpc-message"),
            Some(&b"the component ended the call without a status"[..])
        );
    }
}
