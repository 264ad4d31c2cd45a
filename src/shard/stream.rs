//! One request stream between its connection and its call task: a bounded
//! inbox of request body bytes filled by the connection, and an outbox of
//! response headers, body and trailers drained by the connection.
//!
//! This is the transport seam: the call's end ([`CallStream`]) is the same
//! whichever transport feeds the other end ([`ConnStream`]): an HTTP/3
//! stream driven by its QUIC connection (conn.rs), or an HTTP/2 stream over
//! TCP driven by its stream task (tcp/). The call wakes that end through its
//! `ConnWaker` (flush.rs) and never knows which it is.
//!
//! The state is private; each side changes it only through its own end:
//! [`ConnStream`] (the connection: request bytes in, response out to quiche,
//! aborts) and [`CallStream`] (the call task: request bytes out, response
//! in). Both directions are bounded so backpressure holds end to end: a full
//! inbox leaves data in quiche (QUIC flow control stops the client); the
//! outbox holds what the component sent within its HTTP/2 window, which the
//! call opens again only as quiche takes the bytes ([`CallStream::poll_drained`]),
//! so HTTP/2 flow control stops the component. Every buffered byte is
//! counted in the connection's and the shard's budget (limits.rs).
//!
//! The response body is followed message by message: the incomplete tail
//! of a message (up to [`HOLD_BACK`]) waits in the outbox until the message
//! is whole, so a call cut short (deadline, budget) ends on a message
//! boundary with its status in trailers ([`CallStream::cut_to_message`]),
//! or, when part of a message has already gone, with a stream reset.
//! Shard-local: `Rc`/`RefCell`, no locks, and no borrow is held across an
//! await.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use quiche::h3::Header;

use super::grpc::MessageCursor;
use super::limits::ConnBudget;

/// Request bytes buffered per stream before pushing back.
pub const STREAM_BUFFER: usize = 256 * 1024;
/// The most of an incomplete response message kept back from quiche; a
/// longer message streams through as it comes (a call cut inside it is
/// reset).
pub const HOLD_BACK: usize = 8 * 1024;
/// Bytes quiche takes before the call gives them back to HTTP/2 flow
/// control, unless nothing more may go now (fewer, larger WINDOW_UPDATEs).
const RELEASE_BATCH: usize = 16 * 1024;

/// The shared state of one stream (private: see the two ends).
struct StreamIo {
    // Request direction (client → component).
    inbox: VecDeque<Bytes>,
    inbox_bytes: usize,
    /// The client finished its request body (or its rest is not wanted).
    request_fin: bool,
    /// The transport (quiche, h2) may hold body bytes we did not take.
    body_pending: bool,
    reader: Option<Waker>,

    // Response direction (component → client).
    out_headers: Option<Vec<Header>>,
    /// The headers end the response (trailers-only or an HTTP error).
    out_headers_fin: bool,
    /// Body bytes from `written` to `pushed`.
    outbox: VecDeque<Bytes>,
    /// Body offsets: pushed by the call, taken by quiche, and the end of
    /// the last whole message pushed.
    pushed: u64,
    written: u64,
    boundary: u64,
    /// Body bytes quiche took that the call has not given back to HTTP/2.
    drained: usize,
    /// Follows the messages quiche took: whether they end on a boundary.
    written_messages: MessageCursor,
    out_trailers: Option<Vec<Header>>,
    /// The call ends the response with a reset (this code), not trailers.
    out_reset: Option<u64>,
    /// The response was started (headers handed to quiche).
    headers_sent: bool,
    /// The response was completed (FIN or reset handed to quiche).
    finished: bool,
    writer: Option<Waker>,
    /// The call task waiting for nothing but an abort.
    watcher: Option<Waker>,

    /// The client reset the stream or stopped reading it, or the
    /// connection closed: the call is over.
    aborted: bool,
    /// Bumped whenever bytes move either way (the call's idle timeout).
    activity: u64,
    budget: Rc<ConnBudget>,
}

/// Opens a stream whose request headers just arrived (its body, if any,
/// is still in quiche): the connection's end and the call's end. Its bytes
/// count in no budget.
#[cfg(test)]
pub fn open() -> (ConnStream, CallStream) {
    open_in(ConnBudget::unlimited())
}

/// [`open`], its buffered bytes counted in `budget`.
pub fn open_in(budget: Rc<ConnBudget>) -> (ConnStream, CallStream) {
    let io = Rc::new(RefCell::new(StreamIo {
        inbox: VecDeque::new(),
        inbox_bytes: 0,
        request_fin: false,
        body_pending: true,
        reader: None,
        out_headers: None,
        out_headers_fin: false,
        outbox: VecDeque::new(),
        pushed: 0,
        written: 0,
        boundary: 0,
        drained: 0,
        written_messages: MessageCursor::default(),
        out_trailers: None,
        out_reset: None,
        headers_sent: false,
        finished: false,
        writer: None,
        watcher: None,
        aborted: false,
        activity: 0,
        budget,
    }));
    (ConnStream(Rc::clone(&io)), CallStream(io))
}

/// What the call task's next read of the request body gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Data(Bytes),
    End,
    Aborted,
}

impl StreamIo {
    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    fn inbox_has_room(&self) -> bool {
        self.inbox_bytes < STREAM_BUFFER
    }

    fn outbox_bytes(&self) -> usize {
        (self.pushed - self.written) as usize
    }

    /// Where quiche may write up to: the last whole message, or all that
    /// was pushed once the tail outgrows [`HOLD_BACK`] or the body ended.
    fn visible(&self) -> u64 {
        if self.out_trailers.is_some() || self.pushed - self.boundary > HOLD_BACK as u64 {
            self.pushed
        } else {
            self.boundary
        }
    }

    /// Drops every buffered byte (the call is over), giving its budget back.
    fn drop_buffers(&mut self) {
        let held = self.inbox_bytes + self.outbox_bytes();
        self.inbox.clear();
        self.inbox_bytes = 0;
        self.outbox.clear();
        self.pushed = self.written;
        self.boundary = self.written;
        self.budget.refund(held);
    }
}

impl Drop for StreamIo {
    fn drop(&mut self) {
        self.budget
            .refund(self.inbox_bytes + (self.pushed - self.written) as usize);
    }
}

/// The connection's end: request body in from quiche, response out to it.
pub struct ConnStream(Rc<RefCell<StreamIo>>);

impl ConnStream {
    /// quiche has (more) request body for this stream.
    pub fn body_arrived(&self) {
        self.0.borrow_mut().body_pending = true;
    }

    /// Whether quiche holds body bytes and the inbox (and the connection's
    /// budget) has room for them.
    pub fn wants_body(&self) -> bool {
        let s = self.0.borrow();
        s.body_pending && s.inbox_has_room() && !s.budget.conn_full()
    }

    pub fn inbox_has_room(&self) -> bool {
        let s = self.0.borrow();
        s.inbox_has_room() && !s.budget.conn_full()
    }

    /// Request body bytes for the call.
    pub fn push_inbound(&self, data: Bytes) {
        let mut s = self.0.borrow_mut();
        if s.aborted {
            return;
        }
        s.budget.charge(data.len());
        s.inbox_bytes += data.len();
        s.activity += 1;
        s.inbox.push_back(data);
        s.wake_reader();
    }

    /// quiche has no more body for now.
    pub fn body_drained(&self) {
        let mut s = self.0.borrow_mut();
        s.body_pending = false;
        s.wake_reader();
    }

    /// The client finished its request.
    pub fn request_finished(&self) {
        let mut s = self.0.borrow_mut();
        s.request_fin = true;
        s.wake_reader();
    }

    /// The connection is gone or the client gave up: drops what the stream
    /// buffered and wakes every waiter of the call.
    pub fn abort(&self) {
        let mut s = self.0.borrow_mut();
        s.aborted = true;
        s.drop_buffers();
        s.wake_reader();
        s.wake_writer();
        if let Some(w) = s.watcher.take() {
            w.wake();
        }
    }

    /// Something for quiche: headers, body, trailers or a reset not yet
    /// written.
    pub fn has_output(&self) -> bool {
        let s = self.0.borrow();
        !s.finished
            && (s.out_headers.is_some()
                || s.written < s.visible()
                || s.out_trailers.is_some()
                || s.out_reset.is_some())
    }

    /// Whether response body bytes may be written (not headers or
    /// trailers alone).
    pub fn has_body(&self) -> bool {
        let s = self.0.borrow();
        s.written < s.visible()
    }

    /// The reset the call ended the response with, if it waits: the
    /// connection resets the stream with this code ([`ConnStream::reset_sent`]).
    pub fn take_reset(&self) -> Option<u64> {
        let s = self.0.borrow();
        if s.finished {
            return None;
        }
        s.out_reset
    }

    /// The stream was reset: the response is over.
    pub fn reset_sent(&self) {
        let mut s = self.0.borrow_mut();
        s.finished = true;
        s.drop_buffers();
        s.wake_writer();
    }

    /// The response headers to write, if they wait, and whether they end
    /// the stream. Give them back with [`ConnStream::headers_unsent`] when
    /// quiche takes none.
    pub fn take_headers(&self) -> Option<(Vec<Header>, bool)> {
        let mut s = self.0.borrow_mut();
        let headers = s.out_headers.take()?;
        Some((headers, s.out_headers_fin))
    }

    /// quiche took the headers; `fin` if they ended the response.
    pub fn headers_sent(&self, fin: bool) {
        let mut s = self.0.borrow_mut();
        s.headers_sent = true;
        if fin {
            s.finished = true;
        }
    }

    /// quiche could not take the headers now: they go on a later write.
    pub fn headers_unsent(&self, headers: Vec<Header>) {
        self.0.borrow_mut().out_headers = Some(headers);
    }

    /// Takes response body that may go (see the module doc) as one owned
    /// piece of at most `max` bytes (for a transport that takes `Bytes`:
    /// HTTP/2), then wakes a call waiting for its bytes to drain. `None`
    /// when nothing may go or `max` is 0.
    pub fn take_body(&self, max: usize) -> Option<Bytes> {
        let mut guard = self.0.borrow_mut();
        let s = &mut *guard;
        let allowed = ((s.visible() - s.written) as usize).min(max);
        if allowed == 0 {
            return None;
        }
        let chunk = s.outbox.front_mut()?;
        let piece = if chunk.len() <= allowed {
            s.outbox.pop_front()?
        } else {
            chunk.split_to(allowed)
        };
        let n = piece.len();
        let _ = s.written_messages.feed(&piece, |_| Ok::<(), ()>(()));
        s.written += n as u64;
        s.drained += n;
        s.activity += 1;
        s.budget.refund(n);
        s.wake_writer();
        Some(piece)
    }

    /// Bytes of response body that may go now.
    pub fn body_len(&self) -> usize {
        let s = self.0.borrow();
        (s.visible() - s.written) as usize
    }

    /// Writes queued body bytes (up to what may go, see the module doc)
    /// through `write` (which returns how many it took, or `None` when it
    /// took nothing and the write should stop) until nothing more may go or
    /// `write` stops; then wakes a call waiting for its bytes to drain.
    /// Returns `false` if `write` failed the stream (`Err`).
    pub fn write_body(&self, mut write: impl FnMut(&[u8]) -> Result<Option<usize>, ()>) -> bool {
        let mut guard = self.0.borrow_mut();
        let s = &mut *guard;
        let visible = s.visible();
        let mut taken = 0;
        while s.written < visible {
            let Some(chunk) = s.outbox.front_mut() else {
                break;
            };
            let allowed = chunk.len().min((visible - s.written) as usize);
            match write(&chunk[..allowed]) {
                Ok(Some(n)) => {
                    let n = n.min(allowed);
                    let _ = s.written_messages.feed(&chunk[..n], |_| Ok::<(), ()>(()));
                    s.written += n as u64;
                    taken += n;
                    if n == chunk.len() {
                        s.outbox.pop_front();
                    } else {
                        let _ = chunk.split_to(n);
                        if n < allowed {
                            break; // quiche took what it could
                        }
                    }
                }
                Ok(None) => break,
                Err(()) => return false,
            }
        }
        if taken > 0 {
            s.drained += taken;
            s.activity += 1;
            s.budget.refund(taken);
            s.wake_writer();
        }
        true
    }

    /// The trailers to write once the body is out, if they wait.
    pub fn take_trailers(&self) -> Option<Vec<Header>> {
        let mut s = self.0.borrow_mut();
        if s.written < s.pushed {
            return None;
        }
        s.out_trailers.take()
    }

    /// quiche could not take the trailers now: they go on a later write.
    pub fn trailers_unsent(&self, trailers: Vec<Header>) {
        self.0.borrow_mut().out_trailers = Some(trailers);
    }

    /// quiche took the trailers (and the FIN).
    pub fn trailers_sent(&self) {
        self.0.borrow_mut().finished = true;
    }

    /// Whether the response is complete while the request is not: the
    /// call answered early (an error), so the rest of the request is not
    /// wanted. Counts the request as ended: true once.
    pub fn answered_early(&self) -> bool {
        let mut s = self.0.borrow_mut();
        if s.finished && !s.request_fin {
            s.request_fin = true;
            return true;
        }
        false
    }

    /// The call is done and everything it produced has been written, or
    /// the stream was aborted: the connection forgets it.
    pub fn is_complete(&self) -> bool {
        let s = self.0.borrow();
        s.finished || s.aborted
    }
}

/// The call task's end: request body out, response in.
pub struct CallStream(Rc<RefCell<StreamIo>>);

impl CallStream {
    /// Whether the inbox is full (quiche keeps the rest of the body).
    pub fn inbox_full(&self) -> bool {
        !self.0.borrow().inbox_has_room()
    }

    /// Whether quiche still holds body bytes the inbox did not take.
    pub fn body_pending(&self) -> bool {
        self.0.borrow().body_pending
    }

    /// Takes the next piece of request body, waiting for it.
    pub async fn recv(&self) -> Inbound {
        poll_fn(|cx| {
            let mut s = self.0.borrow_mut();
            if s.aborted {
                return Poll::Ready(Inbound::Aborted);
            }
            if let Some(data) = s.inbox.pop_front() {
                s.inbox_bytes -= data.len();
                s.budget.refund(data.len());
                return Poll::Ready(Inbound::Data(data));
            }
            if s.request_fin && !s.body_pending {
                return Poll::Ready(Inbound::End);
            }
            s.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The response headers; `end` when they are the whole response
    /// (trailers-only).
    pub fn send_headers(&self, headers: Vec<Header>, end: bool) {
        let mut s = self.0.borrow_mut();
        s.out_headers_fin = end;
        s.out_headers = Some(headers);
    }

    /// A piece of response body that ends on a message boundary (or is not
    /// gRPC framed): it may all go.
    #[cfg(test)]
    pub fn push_outbound(&self, chunk: Bytes) {
        let len = chunk.len();
        self.push_body(chunk, Some(len));
    }

    /// A piece of response body; `boundary` is the offset in it just past
    /// the last message that ends in it, if one does.
    pub fn push_body(&self, chunk: Bytes, boundary: Option<usize>) {
        let mut s = self.0.borrow_mut();
        if s.aborted || s.finished || chunk.is_empty() {
            return;
        }
        s.budget.charge(chunk.len());
        if let Some(b) = boundary {
            s.boundary = s.pushed + b as u64;
        }
        s.pushed += chunk.len() as u64;
        s.activity += 1;
        s.outbox.push_back(chunk);
    }

    /// The trailers ending the response (everything pushed may go first).
    pub fn send_trailers(&self, trailers: Vec<Header>) {
        self.0.borrow_mut().out_trailers = Some(trailers);
    }

    /// Ends the body at the last whole message: drops the incomplete tail
    /// not yet written. False when part of an incomplete message already
    /// went to quiche: then only a reset ends the response cleanly.
    pub fn cut_to_message(&self) -> bool {
        let mut guard = self.0.borrow_mut();
        let s = &mut *guard;
        if s.written > s.boundary {
            return false;
        }
        let mut keep = (s.boundary - s.written) as usize;
        let dropped = (s.pushed - s.boundary) as usize;
        let mut kept = VecDeque::with_capacity(s.outbox.len());
        while keep > 0 {
            let Some(mut chunk) = s.outbox.pop_front() else {
                break;
            };
            if chunk.len() > keep {
                chunk.truncate(keep);
            }
            keep -= chunk.len();
            kept.push_back(chunk);
        }
        s.outbox = kept;
        s.pushed = s.boundary;
        s.budget.refund(dropped);
        true
    }

    /// Drops every body byte not yet written (the call is ended for holding
    /// them). False when what was written ends inside a message: then only
    /// a reset ends the response cleanly.
    pub fn drop_unsent(&self) -> bool {
        let mut guard = self.0.borrow_mut();
        let s = &mut *guard;
        if !s.written_messages.at_boundary() {
            return false;
        }
        let unsent = s.outbox_bytes();
        s.outbox.clear();
        s.pushed = s.written;
        s.boundary = s.written;
        s.budget.refund(unsent);
        true
    }

    /// Ends the response with a stream reset (`code`) instead of trailers,
    /// dropping what was not written.
    pub fn reset(&self, code: u64) {
        let mut s = self.0.borrow_mut();
        if s.aborted || s.finished {
            return;
        }
        s.out_reset = Some(code);
        let unsent = s.outbox_bytes();
        s.outbox.clear();
        s.pushed = s.written;
        s.boundary = s.written;
        s.budget.refund(unsent);
    }

    /// Whether the response was started: headers queued or written.
    pub fn response_started(&self) -> bool {
        let s = self.0.borrow();
        s.headers_sent || s.out_headers.is_some()
    }

    /// Whether nothing more can be answered: the client is gone or the
    /// response is complete.
    pub fn is_over(&self) -> bool {
        let s = self.0.borrow();
        s.aborted || s.finished || s.out_reset.is_some()
    }

    /// Whether the client gave up on the call.
    pub fn is_aborted(&self) -> bool {
        self.0.borrow().aborted
    }

    /// Whether response bytes wait for the client to take them.
    pub fn holds_bytes(&self) -> bool {
        let s = self.0.borrow();
        s.pushed > s.written
    }

    /// Response bytes quiche has taken so far.
    pub fn written(&self) -> u64 {
        self.0.borrow().written
    }

    /// A count that changes whenever bytes move either way.
    pub fn activity(&self) -> u64 {
        self.0.borrow().activity
    }

    /// The connection's and shard's budget this stream counts in.
    pub fn budget(&self) -> Rc<ConnBudget> {
        Rc::clone(&self.0.borrow().budget)
    }

    /// Ready with the number of body bytes quiche took since the last
    /// call (to give back to HTTP/2 flow control), once there are enough
    /// of them or the outbox is empty; `None` if the stream was aborted.
    pub fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<Option<usize>> {
        let mut s = self.0.borrow_mut();
        if s.aborted {
            return Poll::Ready(None);
        }
        // Once quiche took all it may, everything goes back: a held-back
        // tail must never keep the window shut (HOLD_BACK < the window).
        if s.drained >= RELEASE_BATCH || (s.drained > 0 && s.written == s.visible()) {
            return Poll::Ready(Some(std::mem::take(&mut s.drained)));
        }
        s.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Waits until the outbox holds less than [`STREAM_BUFFER`] (or the
    /// stream is aborted: false).
    #[cfg(test)]
    pub async fn writable(&self) -> bool {
        poll_fn(|cx| {
            let mut s = self.0.borrow_mut();
            if s.aborted {
                return Poll::Ready(false);
            }
            if s.outbox_bytes() < STREAM_BUFFER {
                return Poll::Ready(true);
            }
            s.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Resolves when the client abandons the call.
    pub async fn aborted(&self) {
        poll_fn(|cx| {
            let mut s = self.0.borrow_mut();
            if s.aborted {
                return Poll::Ready(());
            }
            s.watcher = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::future::Future;

    fn headers(status: &str) -> Vec<Header> {
        vec![Header::new(b":status", status.as_bytes())]
    }

    #[test]
    fn the_body_ends_only_when_fin_came_and_quiche_holds_nothing() {
        let (conn, call) = open();
        // Headers arrived: the body may still be in quiche.
        assert!(conn.wants_body() && call.body_pending());
        assert_eq!(call.recv().now_or_never(), None);
        conn.push_inbound(Bytes::from_static(b"abc"));
        conn.request_finished();
        assert_eq!(
            call.recv().now_or_never(),
            Some(Inbound::Data(Bytes::from_static(b"abc")))
        );
        // FIN seen but quiche may hold more: not the end yet.
        assert_eq!(call.recv().now_or_never(), None);
        conn.body_drained();
        assert_eq!(call.recv().now_or_never(), Some(Inbound::End));
    }

    #[test]
    fn a_full_inbox_stops_taking_body_until_the_call_reads() {
        let (conn, call) = open();
        conn.push_inbound(Bytes::from(vec![0u8; STREAM_BUFFER - 1]));
        assert!(conn.wants_body() && !call.inbox_full());
        conn.push_inbound(Bytes::from_static(b"x"));
        assert!(!conn.wants_body() && !conn.inbox_has_room() && call.inbox_full());
        assert!(
            matches!(call.recv().now_or_never(), Some(Inbound::Data(d)) if d.len() == STREAM_BUFFER - 1)
        );
        assert!(conn.wants_body() && !call.inbox_full());
        conn.body_drained();
        assert!(!conn.wants_body() && !call.body_pending());
    }

    #[test]
    fn a_waiting_reader_is_woken_by_data_fin_and_abort() {
        let (conn, call) = open();
        let mut recv = Box::pin(call.recv());
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(recv.as_mut().poll(&mut cx).is_pending());
        conn.abort();
        assert_eq!(recv.as_mut().poll(&mut cx), Poll::Ready(Inbound::Aborted));
        // Aborted wins over buffered data: the call is over.
        conn.push_inbound(Bytes::from_static(b"late"));
        assert_eq!(call.recv().now_or_never(), Some(Inbound::Aborted));
        assert_eq!(call.writable().now_or_never(), Some(false));
        assert_eq!(call.aborted().now_or_never(), Some(()));
        assert!(call.is_over() && conn.is_complete());
    }

    #[test]
    fn a_response_goes_headers_body_trailers_then_completes() {
        let (conn, call) = open();
        assert!(!conn.has_output() && !call.response_started());
        call.send_headers(headers("200"), false);
        assert!(call.response_started() && conn.has_output());
        call.push_outbound(Bytes::from_static(b"hello"));
        call.send_trailers(headers("trailer"));

        let Some((h, false)) = conn.take_headers() else {
            panic!("headers first, not ending the stream")
        };
        assert_eq!(h, headers("200"));
        conn.headers_sent(false);
        assert!(conn.take_headers().is_none());
        // Trailers wait behind the body.
        assert!(conn.take_trailers().is_none());
        // A short write keeps the rest.
        let mut written = Vec::new();
        assert!(conn.write_body(|b| {
            written.extend_from_slice(&b[..2]);
            Ok(Some(2))
        }));
        assert!(conn.has_body());
        assert!(conn.write_body(|b| {
            written.extend_from_slice(b);
            Ok(Some(b.len()))
        }));
        assert_eq!(written, b"hello");
        assert!(!conn.has_body());
        let t = conn.take_trailers().expect("trailers after the body");
        assert_eq!(t, headers("trailer"));
        assert!(!conn.is_complete());
        conn.trailers_sent();
        assert!(conn.is_complete() && call.is_over() && !conn.has_output());
    }

    #[test]
    fn owned_body_pieces_respect_the_limit_and_free_room() {
        let (conn, call) = open();
        call.send_headers(headers("200"), false);
        call.push_outbound(Bytes::from(vec![1u8; STREAM_BUFFER]));
        call.push_outbound(Bytes::from_static(b"tail"));
        let mut writable = Box::pin(call.writable());
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(writable.as_mut().poll(&mut cx).is_pending());
        assert_eq!(conn.take_body(0), None);
        assert_eq!(conn.take_body(100).map(|b| b.len()), Some(100));
        assert_eq!(writable.as_mut().poll(&mut cx), Poll::Ready(true));
        assert_eq!(conn.body_len(), STREAM_BUFFER - 100 + 4);
        assert_eq!(
            conn.take_body(usize::MAX).map(|b| b.len()),
            Some(STREAM_BUFFER - 100)
        );
        assert_eq!(conn.take_body(2), Some(Bytes::from_static(b"ta")));
        assert_eq!(conn.take_body(9), Some(Bytes::from_static(b"il")));
        assert_eq!(conn.take_body(9), None);
        assert!(!conn.has_body());
    }

    #[test]
    fn blocked_output_is_given_back_and_written_later() {
        let (conn, call) = open();
        call.send_headers(headers("200"), true);
        let (h, _) = conn.take_headers().expect("headers wait");
        conn.headers_unsent(h);
        assert!(conn.has_output());
        let Some((_, true)) = conn.take_headers() else {
            panic!("trailers-only headers end the stream")
        };
        conn.headers_sent(true);
        assert!(conn.is_complete() && !conn.has_output());
    }

    #[test]
    fn an_early_answer_ends_the_request_once() {
        let (conn, call) = open();
        assert!(!conn.answered_early());
        call.send_headers(headers("200"), true);
        let _ = conn.take_headers();
        conn.headers_sent(true);
        assert!(conn.answered_early());
        assert!(!conn.answered_early());
        // The request counts as ended for the call.
        conn.body_drained();
        assert_eq!(call.recv().now_or_never(), Some(Inbound::End));
    }

    #[test]
    fn the_outbox_bound_makes_the_call_wait_until_written() {
        let (conn, call) = open();
        call.send_headers(headers("200"), false);
        call.push_outbound(Bytes::from(vec![0u8; STREAM_BUFFER]));
        let mut writable = Box::pin(call.writable());
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(writable.as_mut().poll(&mut cx).is_pending());
        assert!(conn.write_body(|_| Ok(None)));
        assert!(writable.as_mut().poll(&mut cx).is_pending());
        assert!(conn.write_body(|b| Ok(Some(b.len() / 2))));
        assert_eq!(writable.as_mut().poll(&mut cx), Poll::Ready(true));
        // A failed write reports it; the connection then aborts.
        assert!(!conn.write_body(|_| Err(())));
    }
}
