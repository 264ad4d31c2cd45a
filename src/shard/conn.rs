//! One QUIC connection and its HTTP/3 streams: turning quiche's events into
//! calls, feeding request bodies to them and their responses back to quiche.
//!
//! Everything here is synchronous and runs on the shard's thread between
//! awaits; no borrow of a connection is ever held across an await. It knows
//! neither the shard nor the calls: [`Conn::service`] returns the calls to
//! start, and each stream's state changes only through its two ends
//! (stream.rs).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiche::h3;

use super::limits::{Burst, ConnBudget, ResetBucket, ShardBudget};
use super::signal::Signal;
use super::stream::{self, CallStream, ConnStream};

/// The H3_NO_ERROR code for stopping a stream's read side politely.
const H3_NO_ERROR: u64 = 0x100;
/// H3_REQUEST_CANCELLED: a stream the shard could not take.
const H3_REQUEST_CANCELLED: u64 = 0x10c;
/// H3_EXCESSIVE_LOAD: a connection closed for resetting too many streams.
const H3_EXCESSIVE_LOAD: u64 = 0x107;
/// How long a connection's acknowledgement of new requests may wait for
/// their first response bytes to ride along. Far under the 25 ms
/// max_ack_delay we advertise, so peers see no loss.
const ACK_HOLD: Duration = Duration::from_millis(1);
/// Body bytes one stream hands quiche per turn while others wait to write
/// (see [`Conn::service`]).
const QUANTUM: usize = 16 * 1024;
/// The least credit worth a body write (see [`worth_writing`]).
const MIN_BODY_WRITE: usize = 64;
/// The most request body bytes read from quiche at a time.
const BODY_CHUNK: usize = 16 * 1024;

/// What every connection of a shard is configured with.
pub struct ConnSettings {
    pub h3: h3::Config,
    /// Concurrent streams per connection; more are refused.
    pub max_streams: usize,
    /// The shard's index, for logs.
    pub shard: usize,
    /// The shard's counters (streams refused, limits hit).
    pub counters: Rc<super::counters::Counters>,
    /// Bytes buffered for the shard's calls, and its limit.
    pub buffers: Rc<ShardBudget>,
    /// Bytes buffered for one connection's calls before it is held back.
    pub conn_buffer_limit: usize,
    /// Streams a client may reset before their response, per second and
    /// connection (0: any number).
    pub reset_rate: u32,
    /// Logs a burst of connections closed for their resets once.
    pub reset_floods: Burst,
    /// Where request bodies pass on their way from quiche to the calls.
    pub body_scratch: BodyScratch,
}

/// One buffer per shard that every connection's [`Conn::service`] borrows
/// in turn for reading request bodies. A fresh zeroed array per pass cost
/// about a third of the instructions of a one-stream unary call.
#[derive(Default)]
pub struct BodyScratch(Cell<Option<Box<[u8]>>>);

impl BodyScratch {
    /// The buffer; a new one only on first use.
    fn lend(&self) -> Box<[u8]> {
        self.0
            .take()
            .unwrap_or_else(|| vec![0; BODY_CHUNK].into_boxed_slice())
    }

    fn give_back(&self, buffer: Box<[u8]>) {
        self.0.set(Some(buffer));
    }

    /// Where the buffer is while no pass holds it (none before first use).
    #[cfg(test)]
    pub fn parked_at(&self) -> Option<*const u8> {
        let buffer = self.0.take();
        let at = buffer.as_ref().map(|b| b.as_ptr());
        self.0.set(buffer);
        at
    }
}

pub struct Conn {
    inner: RefCell<ConnInner>,
    /// Wakes the connection's timer task when its timeout may have changed.
    signal: Signal,
    /// Waiting in the shard's flush queue.
    queued: Cell<bool>,
    /// Output held back until then (see [`Conn::hold`]).
    hold_until: Cell<Option<Instant>>,
}

struct ConnInner {
    quic: quiche::Connection,
    h3: Option<h3::Connection>,
    streams: HashMap<u64, ConnStream>,
    /// A graceful close has begun: no new calls.
    draining: bool,
    /// Calls wrote to quiche since the last send.
    wrote: bool,
    /// Bytes buffered for this connection's calls (made with HTTP/3).
    budget: Option<Rc<ConnBudget>>,
    /// Streams the client reset before their response.
    resets: ResetBucket,
    /// The streams with output, in the order they are written (reused).
    order: Vec<u64>,
    /// The stream whose output went to quiche last (see [`Conn::service`]).
    last_written: u64,
}

/// A call to start: the stream's headers, and the call's end of it.
pub struct NewCall {
    pub headers: Vec<h3::Header>,
    pub stream: CallStream,
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
                budget: None,
                resets: ResetBucket::default(),
                order: Vec::new(),
                last_written: 0,
            }),
            signal: Signal::default(),
            queued: Cell::new(false),
            hold_until: Cell::new(None),
        })
    }

    /// Hands quiche's news to the calls and the calls' output to quiche.
    /// Returns the calls to start.
    pub fn service(&self, settings: &ConnSettings) -> Vec<NewCall> {
        let mut new_calls = Vec::new();
        let mut inner = self.inner.borrow_mut();
        let ConnInner {
            quic,
            h3,
            streams,
            draining,
            wrote,
            budget,
            resets,
            order,
            last_written,
        } = &mut *inner;
        if quic.is_closed() {
            for io in streams.values() {
                io.abort();
            }
            streams.clear();
            return new_calls;
        }
        // Once: a connection whose setup failed is closing (no retry).
        if h3.is_none()
            && quic.local_error().is_none()
            && (quic.is_established() || quic.is_in_early_data())
        {
            match h3::Connection::with_transport(quic, &settings.h3) {
                Ok(conn) => {
                    *h3 = Some(conn);
                    *budget = Some(ConnBudget::new(
                        settings.conn_buffer_limit,
                        Rc::clone(&settings.buffers),
                    ));
                    *wrote = true; // SETTINGS
                }
                Err(e) => {
                    tracing::debug!(shard = settings.shard, error = %e, "HTTP/3 setup failed");
                    let _ = quic.close(true, 0x101, b"h3 setup failed");
                    return new_calls;
                }
            }
        }
        let (Some(h3), Some(budget)) = (h3, budget.as_ref()) else {
            return new_calls;
        };
        let mut early_resets = 0u32;

        let mut scratch: Option<Box<[u8]>> = None;
        loop {
            loop {
                match h3.poll(quic) {
                    Ok((stream_id, h3::Event::Headers { list, .. })) => {
                        if streams.contains_key(&stream_id) {
                            continue; // request trailers: gRPC clients send none
                        }
                        if *draining || streams.len() >= settings.max_streams {
                            settings.counters.get().streams_refused.inc();
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
                        let (conn_end, call_end) = stream::open_in(Rc::clone(budget));
                        streams.insert(stream_id, conn_end);
                        new_calls.push(NewCall {
                            headers: list,
                            stream: call_end,
                        });
                    }
                    Ok((stream_id, h3::Event::Data)) => match streams.get(&stream_id) {
                        Some(io) => io.body_arrived(),
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
                            io.request_finished();
                        }
                    }
                    Ok((stream_id, h3::Event::Reset(_))) => {
                        if let Some(io) = streams.remove(&stream_id) {
                            io.abort();
                            early_resets += 1;
                        }
                    }
                    Ok((_, h3::Event::PriorityUpdate | h3::Event::GoAway)) => {}
                    Err(h3::Error::Done) => break,
                    Err(e) => {
                        tracing::debug!(shard = settings.shard, error = %e, "HTTP/3 connection error");
                        break;
                    }
                }
            }
            // Reading a body can queue more events (a FIN that came in the
            // same packet as the data): poll again until reading brings
            // nothing new.
            let mut read_any = false;
            for (&stream_id, io) in streams.iter() {
                if io.wants_body() {
                    let buffer = scratch.get_or_insert_with(|| settings.body_scratch.lend());
                    read_any |= pull_body(h3, quic, stream_id, io, buffer);
                }
            }
            if !read_any {
                break;
            }
        }
        if let Some(buffer) = scratch {
            settings.body_scratch.give_back(buffer);
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
                io.abort();
                early_resets += 1;
            }
        }
        if early_resets > 0 && reset_flood(settings, resets, early_resets) {
            for io in streams.values() {
                io.abort();
            }
            streams.clear();
            let _ = quic.close(true, H3_EXCESSIVE_LOAD, b"too many streams reset");
            *wrote = true;
            drop(inner);
            self.signal.notify();
            return new_calls;
        }

        // Output goes to quiche in turn, starting after the stream written
        // last: quiche's send capacity (the congestion window, the client's
        // connection window) is often less than the streams want, and the
        // streams first in a fixed order would take it all, every time.
        // Many concurrent long streams on one connection would starve the
        // rest, their headers and final statuses included.
        order.clear();
        order.extend(
            streams
                .iter()
                .filter(|(_, io)| io.has_output())
                .map(|(&id, _)| id),
        );
        if order.len() > 1 {
            order.sort_unstable();
            let after = order.partition_point(|&id| id <= *last_written);
            order.rotate_left(after);
        }
        // With more than one, each takes at most QUANTUM of body bytes per
        // turn, and turns go on while one of them wants more.
        let quantum = if order.len() > 1 { QUANTUM } else { usize::MAX };
        loop {
            let mut more = false;
            for &stream_id in order.iter() {
                let Some(io) = streams.get(&stream_id) else {
                    continue;
                };
                if io.has_output() && worth_writing(quic, stream_id, io) {
                    more |= write_output(h3, quic, stream_id, io, quantum);
                    *wrote = true;
                    *last_written = stream_id;
                }
            }
            if !more {
                break;
            }
        }
        streams.retain(|&stream_id, io| {
            if io.answered_early() {
                // Answered before the request ended (an error): the rest
                // of the request is not wanted.
                let _ = quic.stream_shutdown(stream_id, quiche::Shutdown::Read, H3_NO_ERROR);
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

    /// Whether the QUIC handshake has completed.
    pub fn is_established(&self) -> bool {
        self.inner.borrow().quic.is_established()
    }

    /// Packets received so far (the handshake deadlines watch it).
    pub fn packets_received(&self) -> usize {
        self.inner.borrow().quic.stats().recv
    }

    /// Gives quiche one received datagram.
    pub fn recv(&self, buf: &mut [u8], info: quiche::RecvInfo) -> quiche::Result<usize> {
        self.inner.borrow_mut().quic.recv(buf, info)
    }

    /// Takes quiche's next datagram to send into `out`;
    /// `Err(quiche::Error::Done)` when it has none.
    pub fn send(&self, out: &mut [u8]) -> quiche::Result<(usize, quiche::SendInfo)> {
        self.inner.borrow_mut().quic.send(out)
    }

    /// Closes the connection (the CONNECTION_CLOSE goes out on the next
    /// send).
    pub fn close(&self, app: bool, code: u64, reason: &[u8]) {
        let _ = self.inner.borrow_mut().quic.close(app, code, reason);
    }

    /// When quiche's next timer fires, from now.
    pub fn quic_timeout(&self) -> Option<Duration> {
        self.inner.borrow().quic.timeout()
    }

    /// quiche's timer fired.
    pub fn on_timeout(&self) {
        self.inner.borrow_mut().quic.on_timeout();
    }

    /// Marks the connection as waiting in the flush queue; false if it
    /// already was.
    pub fn enqueue(&self) -> bool {
        !self.queued.replace(true)
    }

    /// The flusher took the connection off its queue.
    pub fn dequeue(&self) {
        self.queued.set(false);
    }

    /// Tells the timer task its timeout may have changed.
    pub fn notify_timer(&self) {
        self.signal.notify();
    }

    /// The timer task's wait for [`Conn::notify_timer`].
    pub async fn timer_changed(&self) {
        self.signal.wait().await
    }

    pub fn stream_count(&self) -> usize {
        self.inner.borrow().streams.len()
    }
}

/// Counts `n` streams the client reset before their response; true when
/// that takes it over its budget (the connection is then closed).
fn reset_flood(settings: &ConnSettings, bucket: &mut ResetBucket, n: u32) -> bool {
    let limits = &settings.counters.get().limits;
    limits.early_resets.add(u64::from(n));
    let now = Instant::now();
    if (0..n).all(|_| bucket.allow(settings.reset_rate, now)) {
        return false;
    }
    limits.reset_floods.inc();
    if let Some(hidden) = settings.reset_floods.hit() {
        tracing::warn!(
            shard = settings.shard,
            limit = settings.reset_rate,
            "a client reset more than --reset-rate streams per second before their response: its connection is closed (H3_EXCESSIVE_LOAD); {hidden} more such closes since the last log"
        );
    }
    true
}

/// Whether the stream has the credit for a write. One that falls short
/// makes quiche announce the block again (DATA_BLOCKED), which a client
/// that does not read acknowledges, and its acknowledgement brings us
/// back here: a ping-pong as fast as the loopback. Below
/// [`MIN_BODY_WRITE`] bytes only headers and trailers are tried.
fn worth_writing(quic: &mut quiche::Connection, stream_id: u64, io: &ConnStream) -> bool {
    if io.take_reset().is_some() {
        return true; // a reset needs no credit
    }
    match quic.stream_capacity(stream_id) {
        Ok(credit) => credit >= MIN_BODY_WRITE || (!io.has_body() && credit > 0),
        Err(_) => true, // the write reports it
    }
}

/// Moves request body bytes from quiche into the stream's inbox while it has
/// room; returns whether anything changed.
fn pull_body(
    h3: &mut h3::Connection,
    quic: &mut quiche::Connection,
    stream_id: u64,
    io: &ConnStream,
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
                io.body_drained();
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

/// Hands the stream's waiting output to quiche: headers, then body (at
/// most `quantum` bytes of it), then trailers, as far as quiche takes them.
/// Returns whether the quantum stopped it (more may go in another turn).
fn write_output(
    h3: &mut h3::Connection,
    quic: &mut quiche::Connection,
    stream_id: u64,
    io: &ConnStream,
    quantum: usize,
) -> bool {
    if let Some(code) = io.take_reset() {
        let _ = quic.stream_shutdown(stream_id, quiche::Shutdown::Write, code);
        let _ = quic.stream_shutdown(stream_id, quiche::Shutdown::Read, H3_NO_ERROR);
        io.reset_sent();
        return false;
    }
    if let Some((headers, fin)) = io.take_headers() {
        match h3.send_response(quic, stream_id, &headers, fin) {
            Ok(()) => {
                io.headers_sent(fin);
                if fin {
                    return false;
                }
            }
            Err(h3::Error::StreamBlocked | h3::Error::Done) => {
                io.headers_unsent(headers);
                return false;
            }
            Err(_) => {
                io.abort();
                return false;
            }
        }
    }
    let (mut left, mut stopped) = (quantum, false);
    let written = io.write_body(|chunk| {
        if left == 0 {
            stopped = true;
            return Ok(None);
        }
        let chunk = &chunk[..chunk.len().min(left)];
        match h3.send_body(quic, stream_id, chunk, false) {
            Ok(n) => {
                left -= n.min(left);
                stopped |= left == 0 && n == chunk.len();
                Ok(Some(n))
            }
            Err(h3::Error::Done | h3::Error::StreamBlocked) => Ok(None),
            Err(_) => Err(()),
        }
    });
    if !written {
        io.abort();
        return false;
    }
    if stopped {
        return true;
    }
    if let Some(trailers) = io.take_trailers() {
        match h3.send_additional_headers(quic, stream_id, &trailers, true, true) {
            Ok(()) => io.trailers_sent(),
            Err(h3::Error::StreamBlocked | h3::Error::Done) => io.trailers_unsent(trailers),
            Err(_) => io.abort(),
        }
    }
    false
}
