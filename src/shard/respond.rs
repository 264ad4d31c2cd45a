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
    /// RESOURCE_EXHAUSTED for a call holding buffers its client does not
    /// take: what it holds is dropped, not delivered.
    #[error("{0}")]
    OverBudget(String),
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
            CallError::ResourceExhausted(_) | CallError::OverBudget(_) => Code::ResourceExhausted,
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

/// H3_REQUEST_CANCELLED: the code of a response ended by a reset.
pub const H3_REQUEST_CANCELLED: u64 = 0x10c;

/// Ends a call the data plane answers itself: a trailers-only response if
/// nothing of the response was queued yet, the status in trailers after
/// headers and whole messages (an incomplete message not yet sent is
/// dropped); nothing once the client is gone or the response is complete.
/// When part of an incomplete message has already gone, a status would
/// follow half a message: the stream is reset instead (returns true).
pub fn answer(stream: &CallStream, error: &CallError) -> bool {
    if stream.is_over() {
        return false;
    }
    let clean = match error {
        CallError::OverBudget(_) => stream.drop_unsent(),
        _ => stream.cut_to_message(),
    };
    if !stream.response_started() {
        stream.send_headers(trailers_only(error), true);
    } else if clean {
        stream.send_trailers(status_trailers(error));
    } else {
        stream.reset(H3_REQUEST_CANCELLED);
        return true;
    }
    false
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

    /// Written body bytes, as quiche would take them (all it is offered).
    fn written(conn: &stream::ConnStream) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(conn.write_body(|b| {
            out.extend_from_slice(b);
            Ok(Some(b.len()))
        }));
        out
    }

    #[test]
    fn an_error_inside_a_message_drops_its_tail_before_the_status() {
        let (conn, call) = stream::open();
        call.send_headers(vec![Header::new(b":status", b"200")], false);
        let _ = conn.take_headers();
        conn.headers_sent(false);
        // One whole message and the first 2 of a 4-byte one.
        let body = bytes::Bytes::from_static(b"\0\0\0\0\x01a\0\0\0\0\x04bc");
        call.push_body(body, Some(6));
        // Only the whole message may go to quiche.
        assert_eq!(written(&conn), b"\0\0\0\0\x01a");
        assert!(!answer(&call, &CallError::DeadlineExceeded("late".into())));
        assert!(written(&conn).is_empty(), "the half message is dropped");
        let trailers = conn.take_trailers().expect("the status follows");
        assert_eq!(get(&trailers, "grpc-status"), Some(&b"4"[..]));
        assert!(!call.holds_bytes());
    }

    #[test]
    fn an_error_inside_a_message_already_partly_sent_resets_the_stream() {
        let (conn, call) = stream::open();
        call.send_headers(vec![Header::new(b":status", b"200")], false);
        let _ = conn.take_headers();
        conn.headers_sent(false);
        // The head of a message too long to hold back goes at once.
        let mut head = vec![0, 0, 1, 0, 0];
        head.resize(stream::HOLD_BACK + 10, 7);
        call.push_body(bytes::Bytes::from(head.clone()), None);
        assert_eq!(written(&conn), head);
        call.push_body(bytes::Bytes::from_static(b"more"), None);
        assert!(answer(&call, &CallError::DeadlineExceeded("late".into())));
        assert_eq!(conn.take_reset(), Some(H3_REQUEST_CANCELLED));
        assert!(conn.take_trailers().is_none() && !call.holds_bytes());
        conn.reset_sent();
        assert!(conn.is_complete() && call.is_over() && !conn.has_output());
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
