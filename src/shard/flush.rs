//! The shard's output side: the queue of connections with news (woken by
//! datagrams, timers and calls), and the flush that serves them and puts
//! what quiche produced on the wire, batched (udp/send.rs).
//!
//! A call never sends: it wakes its connection ([`ConnWaker`]) and the
//! flusher runs once the tasks queued before it have run, so a call's
//! headers, messages and trailers leave in one flush. What serving a
//! connection means (HTTP/3 events, starting calls) is the endpoint's
//! business, passed in as a closure.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

use glommio::net::UdpSocket;

use super::conn::Conn;
use super::signal::Signal;
use super::udp::{self, SendBatch};

/// Connections with news for quiche or output to send, in wake order.
#[derive(Default)]
pub struct FlushQueue {
    dirty: RefCell<Vec<Rc<Conn>>>,
    due: Signal,
}

impl FlushQueue {
    /// Asks for `conn` to be serviced and flushed once the tasks ahead of
    /// the flusher have run (never now: the caller may hold more output).
    pub fn wake(&self, conn: &Rc<Conn>) {
        if conn.enqueue() {
            self.dirty.borrow_mut().push(Rc::clone(conn));
            self.due.notify();
        }
    }

    /// Waits until a connection was woken.
    pub async fn wait(&self) {
        self.due.wait().await
    }
}

/// A call's only handle on its connection: ask for it to be flushed. The
/// transport seam on the wake side: a QUIC connection is put on the
/// shard's flush queue; an HTTP/2 stream's driver task (shard/tcp/) is
/// signalled. The call cannot tell which.
#[derive(Clone)]
pub struct ConnWaker(Target);

#[derive(Clone)]
enum Target {
    Quic {
        conn: Rc<Conn>,
        queue: Rc<FlushQueue>,
    },
    Task(Rc<Signal>),
}

impl ConnWaker {
    pub fn new(conn: &Rc<Conn>, queue: &Rc<FlushQueue>) -> Self {
        Self(Target::Quic {
            conn: Rc::clone(conn),
            queue: Rc::clone(queue),
        })
    }

    /// Wakes the task that moves a stream's output to its transport.
    pub fn signal(signal: &Rc<Signal>) -> Self {
        Self(Target::Task(Rc::clone(signal)))
    }

    pub fn wake(&self) {
        match &self.0 {
            Target::Quic { conn, queue } => queue.wake(conn),
            Target::Task(signal) => signal.notify(),
        }
    }
}

/// The shard's UDP socket as the flush sees it.
pub struct Wire {
    socket: UdpSocket,
    /// Whether the kernel segments our batched sends (UDP GSO).
    gso: Cell<bool>,
    shard: usize,
    counters: Rc<super::counters::Counters>,
}

impl Wire {
    pub fn new(socket: UdpSocket, shard: usize, counters: Rc<super::counters::Counters>) -> Self {
        Self {
            socket,
            gso: Cell::new(true),
            shard,
            counters,
        }
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Services every dirty connection with `serve` (which returns whether
    /// to hold the connection's output back for now) and sends their
    /// output, all of it in one system call when it fits. `batch` keeps
    /// its room between flushes.
    pub async fn flush(
        &self,
        queue: &FlushQueue,
        batch: &mut Vec<Rc<Conn>>,
        out: &mut SendBatch,
        mut serve: impl FnMut(&Rc<Conn>, Instant) -> bool,
    ) {
        loop {
            std::mem::swap(batch, &mut *queue.dirty.borrow_mut());
            if batch.is_empty() {
                break;
            }
            let now = Instant::now();
            for conn in batch.drain(..) {
                conn.dequeue();
                if !serve(&conn, now) {
                    self.gather(&conn, out).await;
                }
            }
        }
        self.transmit(out).await;
    }

    /// Takes all that quiche has to send for `conn` into `out` (sending
    /// `out` first whenever it is full).
    async fn gather(&self, conn: &Conn, out: &mut SendBatch) {
        conn.sent();
        loop {
            let Some(room) = out.room() else {
                self.transmit(out).await;
                continue;
            };
            match conn.send(room) {
                Ok((len, info)) => {
                    out.push(len, info.to);
                    self.counters.get().datagrams_out.inc();
                }
                Err(quiche::Error::Done) => break,
                Err(e) => {
                    tracing::debug!(shard = self.shard, error = %e, "QUIC send failed");
                    conn.close(false, 0x1, b"internal error");
                    break;
                }
            }
        }
        conn.notify_timer();
    }

    /// Puts the gathered datagrams on the wire and empties `out`.
    async fn transmit(&self, out: &mut SendBatch) {
        while let Err(e) = out.send(self.fd(), self.gso.get()) {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                // The socket buffer is full: wait for room through io_uring.
                for (datagram, to) in out.unsent() {
                    if let Err(e) = self.socket.send_to(datagram, to).await {
                        tracing::debug!(shard = self.shard, error = %e, "UDP send failed");
                    }
                }
                break;
            }
            if self.gso.get() && udp::gso_unsupported(&e) {
                tracing::info!(shard = self.shard, error = %e, "UDP GSO unavailable: sending datagrams one by one");
                self.gso.set(false);
                continue;
            }
            // Lost like any datagram (QUIC recovers); the rest goes on.
            tracing::debug!(shard = self.shard, error = %e, "UDP send failed");
            out.skip();
        }
        out.clear();
    }
}
