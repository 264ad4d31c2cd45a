//! One QUIC connection and its HTTP/3 streams: turning quiche's events into
//! calls, feeding request bodies to them and their responses back to quiche.
//!
//! Everything here is synchronous and runs on the shard's thread between
//! awaits; no borrow of a connection is ever held across an await.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiche::h3;

use super::endpoint::Shard;
use super::stream::{SharedStream, StreamIo};

/// The H3_NO_ERROR code for stopping a stream's read side politely.
const H3_NO_ERROR: u64 = 0x100;
/// H3_REQUEST_CANCELLED: a stream the shard could not take.
const H3_REQUEST_CANCELLED: u64 = 0x10c;
/// How long a connection's acknowledgement of new requests may wait for
/// their first response bytes to ride along. Far under the 25 ms
/// max_ack_delay we advertise, so peers see no loss.
const ACK_HOLD: Duration = Duration::from_millis(1);
/// The least credit worth a body write (see [`worth_writing`]).
const MIN_BODY_WRITE: usize = 64;

pub struct Conn {
    pub inner: RefCell<ConnInner>,
    /// Wakes the connection's timer task when its timeout may have changed.
    pub signal: Signal,
    /// Waiting in the shard's flush queue.
    pub queued: Cell<bool>,
    /// Output held back until then (see [`Conn::hold`]).
    hold_until: Cell<Option<Instant>>,
}

pub struct ConnInner {
    pub quic: quiche::Connection,
    pub h3: Option<h3::Connection>,
    pub streams: HashMap<u64, SharedStream>,
    /// A graceful close has begun: no new calls.
    pub draining: bool,
    /// Calls wrote to quiche since the last send.
    pub wrote: bool,
}

/// A call to start: the stream's headers, and its I/O.
pub struct NewCall {
    pub headers: Vec<h3::Header>,
    pub io: SharedStream,
}

impl Conn {
    pub fn new(quic: quiche::Connection) -> Rc<Self> {
        Rc::new(Self {
            inner: RefCell::new(ConnInner {
                quic,
                h3: None,
                streams: HashMap::new(),
                draining: false,
                wrote: false,
            }),
            signal: Signal::default(),
            queued: Cell::new(false),
            hold_until: Cell::new(None),
        })
    }

    /// Hands quiche's news to the calls and the calls' output to quiche.
    /// Returns the calls to start.
    pub fn service(&self, shard: &Shard) -> Vec<NewCall> {
        let mut new_calls = Vec::new();
        let mut inner = self.inner.borrow_mut();
        let ConnInner {
            quic,
            h3,
            streams,
            draining,
            wrote,
        } = &mut *inner;
        if quic.is_closed() {
            for io in streams.values() {
                io.borrow_mut().abort();
            }
            streams.clear();
            return new_calls;
        }
        if h3.is_none() && (quic.is_established() || quic.is_in_early_data()) {
            match h3::Connection::with_transport(quic, &shard.h3_config) {
                Ok(conn) => {
                    *h3 = Some(conn);
                    *wrote = true; // SETTINGS
                }
                Err(e) => {
                    tracing::debug!(shard = shard.index, error = %e, "HTTP/3 setup failed");
                    let _ = quic.close(true, 0x101, b"h3 setup failed");
                    return new_calls;
                }
            }
        }
        let Some(h3) = h3 else { return new_calls };

        let mut scratch = [0u8; 16 * 1024];
        loop {
            loop {
                match h3.poll(quic) {
                    Ok((stream_id, h3::Event::Headers { list, .. })) => {
                        if streams.contains_key(&stream_id) {
                            continue; // request trailers: gRPC clients send none
                        }
                        if *draining || streams.len() >= shard.settings.max_streams_per_conn {
                            let _ = quic.stream_shutdown(
                                stream_id,
                                quiche::Shutdown::Read,
                                H3_REQUEST_CANCELLED,
                            );
                            let _ = quic.stream_shutdown(
                                stream_id,
                                quiche::Shutdown::Write,
                                H3_REQUEST_CANCELLED,
                            );
                            continue;
                        }
                        let io: SharedStream = Rc::new(RefCell::new(StreamIo::default()));
                        io.borrow_mut().body_pending = true;
                        streams.insert(stream_id, Rc::clone(&io));
                        new_calls.push(NewCall { headers: list, io });
                    }
                    Ok((stream_id, h3::Event::Data)) => match streams.get(&stream_id) {
                        Some(io) => io.borrow_mut().body_pending = true,
                        None => {
                            let _ = quic.stream_shutdown(
                                stream_id,
                                quiche::Shutdown::Read,
                                H3_NO_ERROR,
                            );
                        }
                    },
                    Ok((stream_id, h3::Event::Finished)) => {
                        if let Some(io) = streams.get(&stream_id) {
                            let mut io = io.borrow_mut();
                            io.request_fin = true;
                            io.wake_reader();
                        }
                    }
                    Ok((stream_id, h3::Event::Reset(_))) => {
                        if let Some(io) = streams.remove(&stream_id) {
                            io.borrow_mut().abort();
                        }
                    }
                    Ok((_, h3::Event::PriorityUpdate | h3::Event::GoAway)) => {}
                    Err(h3::Error::Done) => break,
                    Err(e) => {
                        tracing::debug!(shard = shard.index, error = %e, "HTTP/3 connection error");
                        break;
                    }
                }
            }
            // Reading a body can queue more events (a FIN that came in the
            // same packet as the data): poll again until reading brings
            // nothing new.
            let mut read_any = false;
            for (&stream_id, io) in streams.iter() {
                let mut io = io.borrow_mut();
                if io.body_pending && io.inbox_has_room() {
                    read_any |= pull_body(h3, quic, stream_id, &mut io, &mut scratch);
                }
            }
            if !read_any {
                break;
            }
        }

        // A client that stops reading (STOP_SENDING) shows up as a writable
        // stream whose writes fail: end its call now, not when the
        // component answers.
        let stopped: Vec<u64> = quic
            .writable()
            .filter(|id| {
                matches!(
                    quic.stream_capacity(*id),
                    Err(quiche::Error::StreamStopped(_))
                )
            })
            .collect();
        for stream_id in stopped {
            if let Some(io) = streams.remove(&stream_id) {
                io.borrow_mut().abort();
            }
        }

        streams.retain(|&stream_id, io| {
            let mut io = io.borrow_mut();
            if io.has_output() && worth_writing(quic, stream_id, &io) {
                write_output(h3, quic, stream_id, &mut io);
                *wrote = true;
            }
            if io.finished && !io.request_fin {
                // Answered before the request ended (an error): the rest
                // of the request is not wanted.
                let _ = quic.stream_shutdown(stream_id, quiche::Shutdown::Read, H3_NO_ERROR);
                io.request_fin = true;
            }
            !io.is_complete()
        });
        drop(inner);
        self.signal.notify();
        new_calls
    }

    /// Whether to keep this connection's output back for now. After new
    /// requests arrive, quiche would send a datagram with nothing but their
    /// acknowledgement; holding it until a call writes (or [`ACK_HOLD`]
    /// passes) lets the acknowledgement ride with the response: one
    /// datagram per unary call instead of two. Only new calls start a
    /// hold, only on an established connection with nothing else written.
    pub fn hold(&self, started_calls: bool, now: Instant) -> bool {
        let inner = self.inner.borrow();
        match self.hold_until.get() {
            Some(until) if !inner.wrote && now < until => true,
            Some(_) => {
                self.hold_until.set(None);
                false
            }
            None if started_calls
                && !inner.wrote
                && !inner.draining
                && inner.quic.is_established() =>
            {
                self.hold_until.set(Some(now + ACK_HOLD));
                self.signal.notify(); // the timer ends the hold
                true
            }
            None => false,
        }
    }

    /// When a hold ends at the latest.
    pub fn hold_until(&self) -> Option<Instant> {
        self.hold_until.get()
    }

    /// Output is going out: forget what was written.
    pub fn sent(&self) {
        self.inner.borrow_mut().wrote = false;
    }

    /// Starts a graceful close: HTTP/3 GOAWAY, no new calls.
    pub fn drain(&self) {
        let mut inner = self.inner.borrow_mut();
        let ConnInner {
            quic,
            h3,
            draining,
            wrote,
            ..
        } = &mut *inner;
        *draining = true;
        *wrote = true;
        if let Some(h3) = h3 {
            let _ = h3.send_goaway(quic, 0);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.borrow().quic.is_closed()
    }

    pub fn stream_count(&self) -> usize {
        self.inner.borrow().streams.len()
    }
}

/// Whether the stream has the credit for a write. One that falls short
/// makes quiche announce the block again (DATA_BLOCKED), which a client
/// that does not read acknowledges, and its acknowledgement brings us
/// back here: a ping-pong as fast as the loopback. Below
/// [`MIN_BODY_WRITE`] bytes only headers and trailers are tried.
fn worth_writing(quic: &mut quiche::Connection, stream_id: u64, io: &StreamIo) -> bool {
    match quic.stream_capacity(stream_id) {
        Ok(credit) => credit >= MIN_BODY_WRITE || (io.outbox.is_empty() && credit > 0),
        Err(_) => true, // the write reports it
    }
}

/// Moves request body bytes from quiche into the stream's inbox while it has
/// room; returns whether anything changed.
fn pull_body(
    h3: &mut h3::Connection,
    quic: &mut quiche::Connection,
    stream_id: u64,
    io: &mut StreamIo,
    scratch: &mut [u8],
) -> bool {
    let mut changed = false;
    while io.inbox_has_room() {
        match h3.recv_body(quic, stream_id, scratch) {
            Ok(n) => {
                io.push_inbound(Bytes::copy_from_slice(&scratch[..n]));
                changed = true;
            }
            Err(h3::Error::Done) => {
                io.body_pending = false;
                io.wake_reader();
                return true;
            }
            Err(_) => {
                io.abort();
                return true;
            }
        }
    }
    changed
}

fn write_output(
    h3: &mut h3::Connection,
    quic: &mut quiche::Connection,
    stream_id: u64,
    io: &mut StreamIo,
) {
    if let Some(headers) = io.out_headers.take() {
        match h3.send_response(quic, stream_id, &headers, io.out_headers_fin) {
            Ok(()) => {
                io.headers_sent = true;
                if io.out_headers_fin {
                    io.finished = true;
                    return;
                }
            }
            Err(h3::Error::StreamBlocked | h3::Error::Done) => {
                io.out_headers = Some(headers);
                return;
            }
            Err(_) => {
                io.abort();
                return;
            }
        }
    }
    while let Some(chunk) = io.outbox.front_mut() {
        match h3.send_body(quic, stream_id, chunk, false) {
            Ok(n) => {
                io.outbox_bytes -= n;
                if n == chunk.len() {
                    io.outbox.pop_front();
                } else {
                    let _ = chunk.split_to(n);
                    break;
                }
            }
            Err(h3::Error::Done | h3::Error::StreamBlocked) => break,
            Err(_) => {
                io.abort();
                return;
            }
        }
    }
    io.wake_writer();
    if io.outbox.is_empty() {
        if let Some(trailers) = io.out_trailers.take() {
            match h3.send_additional_headers(quic, stream_id, &trailers, true, true) {
                Ok(()) => io.finished = true,
                Err(h3::Error::StreamBlocked | h3::Error::Done) => io.out_trailers = Some(trailers),
                Err(_) => io.abort(),
            }
        }
    }
}

/// A one-slot, shard-local wake-up: `notify` before or during `wait` is
/// never lost.
#[derive(Default)]
pub struct Signal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
