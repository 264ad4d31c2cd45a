//! One HTTP/2 request stream as the call path sees it: the adapter between
//! h2's server stream (request body in, response out) and the stream's
//! connection end (`shard::stream::ConnStream`). The call task runs the
//! same `call::serve` as over HTTP/3, on the call end, woken the same way.
//!
//! Backpressure as over HTTP/3: request body moves into the inbox only
//! while it has room (the rest stays in h2, whose stream window holds the
//! client back, since capacity is released only for what the inbox took);
//! response body leaves the outbox only as far as h2 grants send capacity
//! (bounded by the client's window and h2's per-stream send buffer), so a
//! client that never reads holds the call, then the component, back.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue};
use quiche::h3::{Header, NameValue};

use crate::shard::call::{self, Shared};
use crate::shard::flush::ConnWaker;
use crate::shard::limits::ConnBudget;
use crate::shard::signal::Signal;
use crate::shard::stream::{self, ConnStream};

/// How a stream ended, for the connection's reset budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The response went out complete.
    Complete,
    /// The client reset the stream (or the connection failed under it).
    Reset,
}

/// Serves one accepted request: the call on one end, the h2 stream on the
/// other, until both are done.
pub async fn serve(
    request: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
    shared: &Shared,
    budget: &Rc<ConnBudget>,
    alt_svc: &HeaderValue,
    shard: usize,
) -> Ended {
    let (parts, body) = request.into_parts();
    let headers = request_headers(&parts);
    let (conn_end, call_end) = stream::open_in(Rc::clone(budget));
    let signal = Rc::new(Signal::default());
    let ctx = shared.context(call_end, ConnWaker::signal(&signal));
    let mut driver = Driver {
        io: conn_end,
        body: Some(body),
        respond: Some(respond),
        send: None,
        signal,
        alt_svc,
        ended: None,
    };
    let drive = poll_fn(|cx| driver.poll(cx));
    let ((), ended) = futures::future::join(call::serve(ctx, headers, shard), drive).await;
    ended
}

/// The request's pseudo-headers and headers, as the call path reads them
/// (the HTTP/3 field list: `:method`, `:scheme`, `:authority`, `:path`).
fn request_headers(parts: &http::request::Parts) -> Vec<Header> {
    let mut out = Vec::with_capacity(parts.headers.len() + 4);
    out.push(Header::new(b":method", parts.method.as_str().as_bytes()));
    if let Some(scheme) = parts.uri.scheme_str() {
        out.push(Header::new(b":scheme", scheme.as_bytes()));
    }
    // HTTP/2 allows Host instead of :authority (RFC 9113 §8.3.1).
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(http::header::HOST).map(|h| h.as_bytes()));
    if let Some(authority) = authority {
        out.push(Header::new(b":authority", authority));
    }
    if let Some(path) = parts.uri.path_and_query() {
        out.push(Header::new(b":path", path.as_str().as_bytes()));
    }
    for (name, value) in &parts.headers {
        out.push(Header::new(name.as_str().as_bytes(), value.as_bytes()));
    }
    out
}

/// The call path's response field list → an h2 response (`:status`
/// first) with `alt-svc` added.
fn response(headers: &[Header], alt_svc: &HeaderValue) -> http::Response<()> {
    let mut status = http::StatusCode::OK;
    let mut map = HeaderMap::with_capacity(headers.len() + 1);
    for h in headers {
        if h.name() == b":status" {
            if let Some(s) = std::str::from_utf8(h.value())
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .and_then(|s| http::StatusCode::from_u16(s).ok())
            {
                status = s;
            }
            continue;
        }
        append(&mut map, h);
    }
    map.insert(http::header::ALT_SVC, alt_svc.clone());
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = map;
    response
}

fn trailers(headers: &[Header]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        append(&mut map, h);
    }
    map
}

/// Adds one field; pseudo-headers and fields HTTP/2 forbids (RFC 9113
/// §8.2.2) are left out, invalid ones too (they came from a component's
/// HTTP/2 response, so they parse).
fn append(map: &mut HeaderMap, h: &Header) {
    const CONNECTION_SPECIFIC: [&[u8]; 5] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
    ];
    let name = h.name();
    if name.starts_with(b":") || CONNECTION_SPECIFIC.contains(&name) {
        return;
    }
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name),
        HeaderValue::from_bytes(h.value()),
    ) {
        map.append(name, value);
    }
}

/// The h2 side of one stream, polled as one future beside the call.
struct Driver<'a> {
    io: ConnStream,
    /// The request body, until it ended (or is no longer wanted).
    body: Option<RecvStream>,
    /// Until the response headers go out.
    respond: Option<SendResponse<Bytes>>,
    /// After them, until the response ends.
    send: Option<SendStream<Bytes>>,
    /// The call's wake-ups (`ConnWaker::signal`).
    signal: Rc<Signal>,
    alt_svc: &'a HeaderValue,
    ended: Option<Ended>,
}

impl Driver<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        // Consumed, then registered: a wake-up from the call during this
        // poll is kept for the next one.
        while self.signal.poll_wait(cx).is_ready() {}
        self.pull_body(cx);
        self.watch_reset(cx);
        if self.ended.is_none() {
            self.push_output(cx);
        }
        if self.io.answered_early() {
            // Answered before the request ended (an error): the rest is
            // not wanted; dropping the body lets h2 end the client's side
            // (RST_STREAM NO_ERROR once the response is complete).
            self.body = None;
        }
        if let Some(ended) = self.ended {
            return Poll::Ready(ended);
        }
        if self.io.is_complete() {
            return Poll::Ready(Ended::Complete);
        }
        Poll::Pending
    }

    fn abort(&mut self) {
        self.io.abort();
        self.ended = Some(Ended::Reset);
    }

    /// Request body from h2 into the inbox while it has room.
    fn pull_body(&mut self, cx: &mut Context<'_>) {
        let Some(body) = &mut self.body else { return };
        while self.io.inbox_has_room() {
            match body.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Credit back only what the inbox took.
                    let _ = body.flow_control().release_capacity(data.len());
                    self.io.body_arrived();
                    self.io.push_inbound(data);
                    if body.is_end_stream() {
                        self.io.request_finished();
                        self.io.body_drained();
                        self.body = None;
                        return;
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    // The client reset the stream or the connection failed.
                    self.body = None;
                    self.abort();
                    return;
                }
                Poll::Ready(None) => {
                    // Ended (request trailers, which gRPC clients do not
                    // send, are not passed on).
                    self.io.request_finished();
                    self.io.body_drained();
                    self.body = None;
                    return;
                }
                Poll::Pending => {
                    self.io.body_drained(); // h2 wakes us when more comes
                    return;
                }
            }
        }
    }

    /// A client reset ends the call now, not when the component answers.
    fn watch_reset(&mut self, cx: &mut Context<'_>) {
        let reset = match (&mut self.respond, &mut self.send) {
            (Some(respond), _) => respond.poll_reset(cx).is_ready(),
            (None, Some(send)) => send.poll_reset(cx).is_ready(),
            (None, None) => false,
        };
        if reset {
            self.abort();
        }
    }

    /// Response headers, body within h2's send capacity, then trailers.
    fn push_output(&mut self, cx: &mut Context<'_>) {
        if let Some((headers, fin)) = self.io.take_headers() {
            let Some(mut respond) = self.respond.take() else {
                return self.abort();
            };
            match respond.send_response(response(&headers, self.alt_svc), fin) {
                Ok(send) => {
                    self.io.headers_sent(fin);
                    if fin {
                        return;
                    }
                    self.send = Some(send);
                }
                Err(_) => return self.abort(),
            }
        }
        let Some(send) = &mut self.send else { return };
        loop {
            let waiting = self.io.body_len();
            if waiting == 0 {
                break;
            }
            send.reserve_capacity(waiting);
            // poll_capacity reports only increases: capacity left over from
            // an earlier grant is taken as it is.
            let granted = match send.capacity() {
                0 => send.poll_capacity(cx),
                n => Poll::Ready(Some(Ok(n))),
            };
            match granted {
                Poll::Ready(Some(Ok(0))) | Poll::Pending => break,
                Poll::Ready(Some(Ok(n))) => {
                    let Some(piece) = self.io.take_body(n) else {
                        break;
                    };
                    if send.send_data(piece, false).is_err() {
                        return self.abort();
                    }
                }
                Poll::Ready(Some(Err(_)) | None) => return self.abort(),
            }
        }
        if let Some(t) = self.io.take_trailers() {
            match send.send_trailers(trailers(&t)) {
                Ok(()) => {
                    self.io.trailers_sent();
                    self.send = None;
                }
                Err(_) => self.abort(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fields_read_like_http3() {
        let request = http::Request::builder()
            .method("POST")
            .uri("https://example.com:443/a.S/M")
            .header("content-type", "application/grpc")
            .header("grpc-timeout", "5S")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let fields = request_headers(&parts);
        let get = |n: &str| {
            fields
                .iter()
                .find(|h| h.name() == n.as_bytes())
                .map(|h| h.value().to_vec())
        };
        assert_eq!(get(":method").unwrap(), b"POST");
        assert_eq!(get(":authority").unwrap(), b"example.com:443");
        assert_eq!(get(":path").unwrap(), b"/a.S/M");
        assert_eq!(get("grpc-timeout").unwrap(), b"5S");

        // No :authority, only Host.
        let request = http::Request::builder()
            .uri("/a.S/M")
            .header("host", "example.org")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let fields = request_headers(&parts);
        assert!(fields
            .iter()
            .any(|h| h.name() == b":authority" && h.value() == b"example.org"));
    }

    #[test]
    fn responses_carry_alt_svc_and_drop_connection_fields() {
        let alt = HeaderValue::from_static("h3=\":443\"");
        let fields = vec![
            Header::new(b":status", b"415"),
            Header::new(b"connection", b"close"),
            Header::new(b"x-a", b"1"),
            Header::new(b"x-a", b"2"),
        ];
        let r = response(&fields, &alt);
        assert_eq!(r.status(), 415);
        assert_eq!(r.headers()["alt-svc"], "h3=\":443\"");
        assert!(r.headers().get("connection").is_none());
        assert_eq!(r.headers().get_all("x-a").iter().count(), 2);
        let t = trailers(&[
            Header::new(b"grpc-status", b"0"),
            Header::new(b"bad name", b"x"),
        ]);
        assert_eq!(t.len(), 1);
    }
}
