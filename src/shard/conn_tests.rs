//! A [`Conn`](super::conn::Conn) driven in memory by a real quiche HTTP/3
//! client (pipe.rs): requests in, calls out, responses back, and the ways a
//! client or the node ends a stream early. What the integration tests see
//! through sockets and real components, seen here step by step.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use quiche::h3::{Header, NameValue};

use super::call::{self, CallContext};
use super::conn::NewCall;
use super::flush::{ConnWaker, FlushQueue};
use super::pipe::{grpc_request, ClientEvent, Pipe};
use super::respond::{self, CallError};
use super::stream::{Inbound, STREAM_BUFFER};
use super::upstream::Upstreams;
use crate::pool::Publisher;

/// H3_REQUEST_CANCELLED, as the connection refuses a stream.
const H3_REQUEST_CANCELLED: u64 = 0x10c;

fn one_call(calls: Vec<NewCall>) -> NewCall {
    assert_eq!(calls.len(), 1, "one call started");
    calls.into_iter().next().unwrap()
}

fn header<'h>(headers: &'h [Header], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|h| h.name() == name.as_bytes())
        .map(|h| h.value())
}

/// The whole body the call can take now (without waiting).
fn drain_inbox(call: &NewCall) -> (Vec<u8>, Option<Inbound>) {
    let mut body = Vec::new();
    loop {
        match call.stream.recv().now_or_never() {
            Some(Inbound::Data(data)) => body.extend_from_slice(&data),
            other => return (body, other),
        }
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn request_headers_start_a_call_and_the_body_reaches_it() {
    let mut pipe = Pipe::new(100, 100);
    let id = pipe.request(&grpc_request("example.com", "/a.S/M"), false);
    assert_eq!(pipe.send_body(id, b"\0\0\0\0\x05hello", true), 10);
    let call = one_call(pipe.advance());
    assert_eq!(header(&call.headers, ":path"), Some(&b"/a.S/M"[..]));
    assert_eq!(
        header(&call.headers, ":authority"),
        Some(&b"example.com"[..])
    );
    assert_eq!(pipe.conn.stream_count(), 1);
    let (body, end) = drain_inbox(&call);
    assert_eq!(body, b"\0\0\0\0\x05hello");
    assert_eq!(end, Some(Inbound::End));
    // Nothing more starts a call: request trailers or a second look.
    assert!(pipe.advance().is_empty());
}

#[test]
fn bodies_pass_through_one_buffer_that_each_pass_gives_back() {
    let mut pipe = Pipe::new(100, 100);
    let scratch = &pipe.settings.body_scratch;
    assert_eq!(scratch.parked_at(), None, "made only when a body comes");
    let id = pipe.request(&grpc_request("example.com", "/a.S/M"), false);
    pipe.send_body(id, b"\0\0\0\0\x05hello", false);
    let call = one_call(pipe.advance());
    let first = pipe.settings.body_scratch.parked_at();
    assert!(first.is_some(), "given back after the pass");
    pipe.send_body(id, b"\0\0\0\0\x05world", true);
    assert!(pipe.advance().is_empty());
    assert_eq!(
        pipe.settings.body_scratch.parked_at(),
        first,
        "the same buffer"
    );
    let (body, end) = drain_inbox(&call);
    assert_eq!(body, b"\0\0\0\0\x05hello\0\0\0\0\x05world");
    assert_eq!(end, Some(Inbound::End));
}

#[test]
fn a_response_reaches_the_client_as_headers_messages_trailers() {
    let mut pipe = Pipe::new(100, 100);
    let id = pipe.request(&grpc_request("example.com", "/a.S/M"), true);
    let call = one_call(pipe.advance());
    call.stream.send_headers(
        vec![
            Header::new(b":status", b"200"),
            Header::new(b"content-type", b"application/grpc"),
        ],
        false,
    );
    call.stream
        .push_outbound(Bytes::from_static(b"\0\0\0\0\x02hi"));
    call.stream.send_trailers(vec![
        Header::new(b"grpc-status", b"0"),
        Header::new(b"grpc-message", b""),
    ]);
    assert!(pipe.advance().is_empty());
    assert_eq!(
        pipe.client_events(),
        vec![
            ClientEvent::Headers(
                id,
                pairs(&[(":status", "200"), ("content-type", "application/grpc")])
            ),
            ClientEvent::Data(id, b"\0\0\0\0\x02hi".to_vec()),
            ClientEvent::Headers(id, pairs(&[("grpc-status", "0"), ("grpc-message", "")])),
            ClientEvent::Finished(id),
        ]
    );
    // Complete: the connection forgot the stream and the call sees it over.
    assert_eq!(pipe.conn.stream_count(), 0);
    assert!(call.stream.is_over());
}

#[test]
fn a_routing_failure_is_a_trailers_only_status_and_stops_the_request() {
    let mut pipe = Pipe::new(100, 100);
    // The request body never ends: the answer comes first.
    let id = pipe.request(&grpc_request("nowhere.example", "/a.S/M"), false);
    let call = one_call(pipe.advance());
    let publisher = Publisher::new();
    let ctx = CallContext {
        stream: call.stream,
        routes: Rc::new(RefCell::new(publisher.reader())),
        upstreams: Rc::new(Upstreams::default()),
        waker: ConnWaker::new(&pipe.conn, &Rc::new(FlushQueue::default())),
        max_message_size: 4 << 20,
        counters: super::pipe::test_counters(),
        limits: Default::default(),
        observed: Default::default(),
    };
    let outcome = call::run(ctx, call.headers)
        .now_or_never()
        .expect("a call with no route answers without waiting");
    assert!(
        matches!(outcome, Some(CallError::Unimplemented(_))),
        "{outcome:?}"
    );
    assert!(pipe.advance().is_empty());
    let events = pipe.client_events();
    let [ClientEvent::Headers(hid, headers), ClientEvent::Finished(fid)] = &events[..] else {
        panic!("one trailers-only response: {events:?}")
    };
    assert_eq!((*hid, *fid), (id, id));
    assert!(
        headers.contains(&("grpc-status".into(), "12".into())),
        "{headers:?}"
    );
    assert!(headers.contains(&(
        "grpc-message".into(),
        "no component serves domain \"nowhere.example\"".into()
    )));
    // The rest of the request is not wanted: the client was told to stop
    // (STOP_SENDING), and its quiche ended the request stream for it.
    let stats = pipe.client.stats();
    assert_eq!(stats.stopped_stream_count_remote, 1);
    assert_eq!(
        pipe.client.stream_send(id, b"more", false),
        Err(quiche::Error::Done)
    );
    assert_eq!(pipe.conn.stream_count(), 0);
}

#[test]
fn a_request_that_is_not_grpc_gets_415() {
    let mut pipe = Pipe::new(100, 100);
    let get = [
        Header::new(b":method", b"GET"),
        Header::new(b":scheme", b"https"),
        Header::new(b":authority", b"example.com"),
        Header::new(b":path", b"/"),
    ];
    let id = pipe.request(&get, true);
    let call = one_call(pipe.advance());
    respond::answer(&call.stream, &CallError::NotGrpc(415));
    pipe.advance();
    assert_eq!(
        pipe.client_events(),
        vec![
            ClientEvent::Headers(id, pairs(&[(":status", "415")])),
            ClientEvent::Finished(id)
        ]
    );
}

#[test]
fn a_full_inbox_leaves_the_body_in_quiche_until_the_call_reads() {
    let mut pipe = Pipe::new(100, 100);
    let id = pipe.request(&grpc_request("example.com", "/a.S/M"), false);
    // Far more than the stream's QUIC window (1 MiB) and the inbox.
    let total = 8 << 20;
    let body: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    let mut calls = Vec::new();

    // The call does not read: the client writes until flow control stops it.
    let mut stalled = 0;
    while stalled < 3 {
        let n = pipe.send_body(id, &body[sent..], false);
        sent += n;
        stalled = if n == 0 { stalled + 1 } else { 0 };
        calls.extend(pipe.advance());
    }
    let call = one_call(calls);
    assert!(
        sent < total / 2,
        "QUIC flow control held the client back at {sent} bytes"
    );
    assert!(call.stream.inbox_full(), "the inbox filled");
    assert!(call.stream.body_pending(), "quiche keeps the rest");
    let (first, end) = drain_inbox(&call);
    assert_eq!(end, None, "more to come, not aborted");
    assert!(
        (STREAM_BUFFER..STREAM_BUFFER + 16 * 1024).contains(&first.len()),
        "the inbox held {} bytes",
        first.len()
    );
    assert!(first.len() < sent, "the rest stayed in quiche");

    // Now the call reads as it goes: the whole body arrives, in order.
    let mut received = first;
    let mut fin_sent = false;
    for round in 0.. {
        assert!(round < 10_000, "the body never arrived");
        if sent < total {
            sent += pipe.send_body(id, &body[sent..], false);
        } else if !fin_sent {
            pipe.send_body(id, b"", true);
            fin_sent = true;
        }
        assert!(pipe.advance().is_empty());
        let (chunk, end) = drain_inbox(&call);
        assert!(
            chunk.len() < STREAM_BUFFER + 16 * 1024,
            "bounded: {}",
            chunk.len()
        );
        received.extend_from_slice(&chunk);
        if end == Some(Inbound::End) {
            break;
        }
        assert_eq!(end, None, "waiting for more, not aborted");
    }
    assert_eq!(received.len(), total);
    assert!(received == body, "the body arrived whole and in order");
}

#[test]
fn a_client_reset_aborts_the_call() {
    let mut pipe = Pipe::new(100, 100);
    let id = pipe.request(&grpc_request("example.com", "/a.S/M"), false);
    let call = one_call(pipe.advance());
    assert!(call.stream.aborted().now_or_never().is_none());
    pipe.client
        .stream_shutdown(id, quiche::Shutdown::Write, H3_REQUEST_CANCELLED)
        .unwrap();
    pipe.advance();
    assert_eq!(call.stream.recv().now_or_never(), Some(Inbound::Aborted));
    assert_eq!(call.stream.aborted().now_or_never(), Some(()));
    assert_eq!(call.stream.writable().now_or_never(), Some(false));
    assert_eq!(pipe.conn.stream_count(), 0);
    // A late answer goes nowhere.
    respond::answer(&call.stream, &CallError::Internal("late".into()));
    pipe.advance();
    assert!(pipe.client_events().is_empty());
}

#[test]
fn stop_sending_aborts_the_call_before_the_component_answers() {
    let mut pipe = Pipe::new(100, 100);
    let id = pipe.request(&grpc_request("example.com", "/a.S/M"), true);
    let call = one_call(pipe.advance());
    pipe.client
        .stream_shutdown(id, quiche::Shutdown::Read, H3_REQUEST_CANCELLED)
        .unwrap();
    pipe.advance();
    assert_eq!(call.stream.aborted().now_or_never(), Some(()));
    assert_eq!(pipe.conn.stream_count(), 0);
}

#[test]
fn streams_beyond_the_limit_are_refused() {
    // QUIC allows three; the connection takes two.
    let mut pipe = Pipe::new(3, 2);
    let ids: Vec<u64> = (0..3)
        .map(|_| pipe.request(&grpc_request("example.com", "/a.S/M"), true))
        .collect();
    let calls = pipe.advance();
    assert_eq!(calls.len(), 2);
    assert_eq!(pipe.conn.stream_count(), 2);
    let events = pipe.client_events();
    assert!(
        events.contains(&ClientEvent::Reset(ids[2], H3_REQUEST_CANCELLED)),
        "{events:?}"
    );
}

#[test]
fn a_draining_connection_sends_goaway_and_refuses_new_streams() {
    let mut pipe = Pipe::new(100, 100);
    let first = pipe.request(&grpc_request("example.com", "/a.S/M"), true);
    let call = one_call(pipe.advance());
    // The client's next request crosses the GOAWAY.
    let second = pipe.request(&grpc_request("example.com", "/a.S/M"), true);
    pipe.conn.drain();
    assert!(pipe.advance().is_empty(), "no call starts while draining");
    let events = pipe.client_events();
    assert!(events.contains(&ClientEvent::GoAway), "{events:?}");
    assert!(
        events.contains(&ClientEvent::Reset(second, H3_REQUEST_CANCELLED)),
        "{events:?}"
    );
    // The call in flight still finishes.
    respond::answer(&call.stream, &CallError::Unavailable("bye".into()));
    pipe.advance();
    let events = pipe.client_events();
    assert!(events.contains(&ClientEvent::Finished(first)), "{events:?}");
    assert_eq!(pipe.conn.stream_count(), 0);
}

#[test]
fn a_closed_connection_aborts_every_call() {
    let mut pipe = Pipe::new(100, 100);
    pipe.request(&grpc_request("example.com", "/a.S/M"), false);
    pipe.request(&grpc_request("example.com", "/a.S/M"), false);
    let calls = pipe.advance();
    assert_eq!(calls.len(), 2);
    pipe.client.close(true, 0x100, b"bye").unwrap();
    pipe.advance();
    // The server closes after its draining period (quiche's timer).
    let start = Instant::now();
    while !pipe.conn.is_closed() {
        assert!(start.elapsed() < Duration::from_secs(5), "never closed");
        let wait = pipe.conn.quic_timeout().unwrap_or(Duration::from_millis(1));
        std::thread::sleep(wait.min(Duration::from_millis(100)));
        pipe.conn.on_timeout();
    }
    pipe.advance();
    assert_eq!(pipe.conn.stream_count(), 0);
    for call in &calls {
        assert_eq!(call.stream.recv().now_or_never(), Some(Inbound::Aborted));
    }
}

#[test]
fn a_client_resetting_streams_past_its_budget_is_closed_with_excessive_load() {
    // The pipe's connections allow 100 early resets per second.
    let mut pipe = Pipe::new(1000, 1000);
    let mut calls = Vec::new();
    for round in 0..20 {
        let ids: Vec<u64> = (0..16)
            .map(|_| pipe.request(&grpc_request("example.com", "/a.S/M"), false))
            .collect();
        calls.extend(pipe.advance());
        for id in ids {
            let _ = pipe
                .client
                .stream_shutdown(id, quiche::Shutdown::Write, H3_REQUEST_CANCELLED);
            let _ = pipe
                .client
                .stream_shutdown(id, quiche::Shutdown::Read, H3_REQUEST_CANCELLED);
        }
        pipe.advance();
        if pipe.client.peer_error().is_some() {
            assert!(
                (round + 1) * 16 > 100,
                "closed after {} resets",
                (round + 1) * 16
            );
            break;
        }
    }
    let error = pipe
        .client
        .peer_error()
        .expect("the server closed the connection");
    assert!(error.is_app);
    assert_eq!(error.error_code, 0x107, "H3_EXCESSIVE_LOAD");
    for call in &calls {
        assert_eq!(call.stream.recv().now_or_never(), Some(Inbound::Aborted));
    }
    let limits = &pipe.settings.counters.get().limits;
    assert_eq!(limits.reset_floods.get(), 1);
    assert!(limits.early_resets.get() > 100);
}
