//! One HTTP/3 request stream as its call task sees it: a bounded inbox of
//! request body bytes filled by the connection, and a bounded outbox of
//! response headers, body and trailers drained into QUIC by the connection.
//!
//! Both sides are bounded so backpressure holds end to end: a full inbox
//! leaves data in quiche (QUIC flow control stops the client); a full
//! outbox stops the call task reading from HTTP/2 (HTTP/2 flow control
//! stops the component). Shard-local: `Rc`/`RefCell`, no locks.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use quiche::h3::Header;

/// Bytes buffered per stream in each direction before pushing back.
pub const STREAM_BUFFER: usize = 256 * 1024;

#[derive(Default)]
pub struct StreamIo {
    // Request direction (client → component).
    pub inbox: VecDeque<Bytes>,
    pub inbox_bytes: usize,
    /// The client finished its request body.
    pub request_fin: bool,
    /// quiche holds body bytes we did not take (inbox was full).
    pub body_pending: bool,
    reader: Option<Waker>,

    // Response direction (component → client).
    pub out_headers: Option<Vec<Header>>,
    /// The headers end the response (trailers-only or an HTTP error).
    pub out_headers_fin: bool,
    pub outbox: VecDeque<Bytes>,
    pub outbox_bytes: usize,
    pub out_trailers: Option<Vec<Header>>,
    /// The response was started (headers handed to quiche).
    pub headers_sent: bool,
    /// The response was completed (FIN handed to quiche).
    pub finished: bool,
    writer: Option<Waker>,
    /// The call task waiting for nothing but an abort.
    watcher: Option<Waker>,

    /// The client reset the stream or stopped reading it, or the
    /// connection closed: the call is over.
    pub aborted: bool,
}

pub type SharedStream = Rc<RefCell<StreamIo>>;

/// What the call task's next read of the request body gives.
pub enum Inbound {
    Data(Bytes),
    End,
    Aborted,
}

impl StreamIo {
    pub fn has_output(&self) -> bool {
        !self.finished
            && (self.out_headers.is_some()
                || !self.outbox.is_empty()
                || self.out_trailers.is_some())
    }

    pub fn inbox_has_room(&self) -> bool {
        self.inbox_bytes < STREAM_BUFFER
    }

    pub fn push_inbound(&mut self, data: Bytes) {
        self.inbox_bytes += data.len();
        self.inbox.push_back(data);
        self.wake_reader();
    }

    pub fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    pub fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// The connection is gone or the client gave up.
    pub fn abort(&mut self) {
        self.aborted = true;
        self.wake_reader();
        self.wake_writer();
        if let Some(w) = self.watcher.take() {
            w.wake();
        }
    }

    /// The call is done and everything it produced has been written.
    pub fn is_complete(&self) -> bool {
        self.finished || self.aborted
    }
}

/// Takes the next piece of request body, waiting for it.
pub async fn recv(io: &SharedStream) -> Inbound {
    poll_fn(|cx| {
        let mut s = io.borrow_mut();
        if s.aborted {
            return Poll::Ready(Inbound::Aborted);
        }
        if let Some(data) = s.inbox.pop_front() {
            s.inbox_bytes -= data.len();
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

/// Waits until the outbox has room (or the stream is aborted: false).
pub async fn writable(io: &SharedStream) -> bool {
    poll_fn(|cx| {
        let mut s = io.borrow_mut();
        if s.aborted {
            return Poll::Ready(false);
        }
        if s.outbox_bytes < STREAM_BUFFER {
            return Poll::Ready(true);
        }
        s.writer = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// Resolves when the client abandons the call.
pub async fn aborted(io: &SharedStream) {
    poll_fn(|cx| {
        let mut s = io.borrow_mut();
        if s.aborted {
            return Poll::Ready(());
        }
        s.watcher = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}
