//! A shard's QUIC endpoint: its UDP socket, its connections by ID, and the
//! tasks that move datagrams in and out and fire connection timers.
//!
//! The kernel (SO_REUSEPORT) steers each client's datagrams to one shard,
//! so a connection lives and dies on one core. Nothing here crosses cores.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::{select, Either};
use glommio::net::UdpSocket;
use quiche::ConnectionId;
use ring::hmac;

use super::call;
use super::conn::{Conn, Signal};
use super::udp::{self, RecvBatch, SendBatch};
use super::upstream::Upstreams;
use super::Settings;
use crate::pool::Reader;

/// Our connection IDs: an HMAC of the client's first destination ID, so a
/// client's retransmitted Initials find the same connection.
const CONN_ID_LEN: usize = quiche::MAX_CONN_ID_LEN;
const MAX_DATAGRAM: usize = super::MAX_DATAGRAM;
const RETRY_TOKEN_LIFETIME_SECS: u64 = 30;
/// Batches of datagrams taken per wake-up before the other tasks (calls,
/// the flusher) get a turn.
const RECV_BATCHES_PER_TURN: usize = 4;

pub struct Shard {
    pub index: usize,
    socket: UdpSocket,
    local: SocketAddr,
    quic_config: RefCell<quiche::Config>,
    pub h3_config: quiche::h3::Config,
    key: hmac::Key,
    conns: RefCell<HashMap<ConnectionId<'static>, Rc<Conn>>>,
    pub routes: RefCell<Reader>,
    pub upstreams: Upstreams,
    pub settings: Settings,
    pub stats: Stats,
    draining: Cell<bool>,
    /// Connections with news for quiche or output to send, in wake order;
    /// the flusher serves them once the tasks ahead of it have run, so a
    /// call's headers, messages and trailers leave in one flush.
    dirty: RefCell<Vec<Rc<Conn>>>,
    flush_due: Signal,
    /// Whether the kernel segments our batched sends (UDP GSO).
    gso: Cell<bool>,
}

/// Per-shard counters (plain cells: only this core writes them).
#[derive(Default)]
pub struct Stats {
    pub connections: Cell<u64>,
    pub calls: Cell<u64>,
    pub errors: Cell<u64>,
}

/// Why a datagram found no connection.
enum Refused {
    /// A stateless answer (version negotiation, retry).
    Reply(Vec<u8>),
    Drop,
}

impl Shard {
    pub fn new(
        index: usize,
        socket: UdpSocket,
        quic_config: quiche::Config,
        h3_config: quiche::h3::Config,
        routes: Reader,
        settings: Settings,
    ) -> std::io::Result<Rc<Self>> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| std::io::Error::other("random key"))?;
        Ok(Rc::new(Self {
            index,
            local: socket.local_addr()?,
            socket,
            quic_config: RefCell::new(quic_config),
            h3_config,
            key,
            conns: RefCell::new(HashMap::new()),
            routes: RefCell::new(routes),
            upstreams: Upstreams::default(),
            settings,
            stats: Stats::default(),
            draining: Cell::new(false),
            dirty: RefCell::new(Vec::new()),
            flush_due: Signal::default(),
            gso: Cell::new(true),
        }))
    }

    /// Receives datagrams until the shard stops: waits for the first through
    /// io_uring, then takes what else is queued in batches.
    pub async fn run(self: Rc<Self>) {
        // Cancelled with this task when the shard stops.
        let _flusher = glommio::spawn_local(Rc::clone(&self).flusher());
        let fd = self.socket.as_raw_fd();
        let mut first = vec![0u8; 65_535];
        let mut batch = RecvBatch::new();
        loop {
            match self.socket.recv_from(&mut first).await {
                Ok((len, from)) => self.on_datagram(&mut first[..len], from),
                Err(e) => {
                    tracing::warn!(shard = self.index, error = %e, "UDP receive failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            for _ in 0..RECV_BATCHES_PER_TURN {
                let n = match batch.recv(fd) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(shard = self.index, error = %e, "UDP batch receive failed");
                        0
                    }
                };
                for i in 0..n {
                    if let Some((datagram, from)) = batch.datagram(i) {
                        self.on_datagram(datagram, from);
                    }
                }
                if n < udp::RECV_BATCH {
                    break;
                }
            }
            // The calls and the flusher go next, even if more datagrams are
            // already waiting (glommio's receive returns at once when they
            // are, without yielding).
            glommio::executor().yield_now().await;
        }
    }

    fn on_datagram(self: &Rc<Self>, buf: &mut [u8], from: SocketAddr) {
        let Ok(header) = quiche::Header::from_slice(buf, CONN_ID_LEN) else {
            return; // not QUIC: ignore, never answer
        };
        let conn = {
            let conns = self.conns.borrow();
            conns
                .get(&header.dcid)
                .or_else(|| conns.get(&ConnectionId::from_vec(self.conn_id_for(&header.dcid))))
                .cloned()
        };
        let conn = match conn {
            Some(conn) => conn,
            None => match self.accept(&header, from) {
                Ok(conn) => conn,
                Err(Refused::Reply(packet)) => {
                    // Best effort: a client that misses it sends again.
                    let _ = udp::send_to(self.fd(), &packet, from);
                    return;
                }
                Err(Refused::Drop) => return,
            },
        };
        let info = quiche::RecvInfo {
            from,
            to: self.local,
        };
        let received = conn.inner.borrow_mut().quic.recv(buf, info);
        if let Err(e) = received {
            // A malformed packet is dropped by quiche; the connection
            // carries on (or closes itself with the protocol's error).
            tracing::trace!(shard = self.index, error = %e, "packet rejected");
        }
        self.wake(&conn);
    }

    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn accept(
        self: &Rc<Self>,
        header: &quiche::Header<'_>,
        from: SocketAddr,
    ) -> Result<Rc<Conn>, Refused> {
        if header.ty != quiche::Type::Initial || self.draining.get() {
            return Err(Refused::Drop);
        }
        let mut out = vec![0u8; MAX_DATAGRAM];
        if !quiche::version_is_supported(header.version) {
            let len = quiche::negotiate_version(&header.scid, &header.dcid, &mut out)
                .map_err(|_| Refused::Drop)?;
            out.truncate(len);
            return Err(Refused::Reply(out));
        }
        let count = self.conns.borrow().len();
        if count >= self.settings.max_connections {
            return Err(Refused::Drop);
        }
        let mut scid = ConnectionId::from_vec(self.conn_id_for(&header.dcid));
        // Address validation once the shard is busy: a Retry costs the
        // client one round trip and spoofed sources get nothing.
        let mut odcid = None;
        if count >= self.settings.retry_above {
            match header.token.as_deref().filter(|t| !t.is_empty()) {
                None => {
                    let token = self.mint_token(&header.dcid, from);
                    let len = quiche::retry(
                        &header.scid,
                        &header.dcid,
                        &scid,
                        &token,
                        header.version,
                        &mut out,
                    )
                    .map_err(|_| Refused::Drop)?;
                    out.truncate(len);
                    return Err(Refused::Reply(out));
                }
                Some(token) => match self.validate_token(token, from) {
                    Some(id) => {
                        odcid = Some(id);
                        // After a Retry the client already uses the ID we
                        // gave it there.
                        scid = header.dcid.clone().into_owned();
                    }
                    None => return Err(Refused::Drop),
                },
            }
        }
        let quic = {
            let mut config = self.quic_config.borrow_mut();
            quiche::accept(&scid, odcid.as_ref(), self.local, from, &mut config)
                .map_err(|_| Refused::Drop)?
        };
        let conn = Conn::new(quic);
        self.conns.borrow_mut().insert(scid, Rc::clone(&conn));
        self.stats.connections.set(self.stats.connections.get() + 1);
        tracing::debug!(shard = self.index, peer = %from, "connection accepted");
        glommio::spawn_local(Rc::clone(self).timer(Rc::clone(&conn))).detach();
        Ok(conn)
    }

    fn conn_id_for(&self, dcid: &[u8]) -> Vec<u8> {
        let tag = hmac::sign(&self.key, dcid);
        tag.as_ref()[..CONN_ID_LEN].to_vec()
    }

    /// `secs(8) | odcid_len(1) | odcid | mac(32 over secs, peer, odcid)`.
    fn mint_token(&self, odcid: &[u8], peer: SocketAddr) -> Vec<u8> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut token = secs.to_be_bytes().to_vec();
        token.push(odcid.len() as u8);
        token.extend_from_slice(odcid);
        let mac = hmac::sign(&self.key, &token_input(&token, peer));
        token.extend_from_slice(mac.as_ref());
        token
    }

    fn validate_token(&self, token: &[u8], peer: SocketAddr) -> Option<ConnectionId<'static>> {
        let (body, mac) = token.split_at_checked(token.len().checked_sub(32)?)?;
        hmac::verify(&self.key, &token_input(body, peer), mac).ok()?;
        let secs = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        if now.saturating_sub(secs) > RETRY_TOKEN_LIFETIME_SECS {
            return None;
        }
        let len = *body.get(8)? as usize;
        let odcid = body.get(9..9 + len)?;
        Some(ConnectionId::from_vec(odcid.to_vec()))
    }

    /// Asks for `conn` to be serviced and flushed once the tasks ahead of
    /// the flusher have run (never now: the caller may hold more output).
    pub fn wake(&self, conn: &Rc<Conn>) {
        if !conn.queued.replace(true) {
            self.dirty.borrow_mut().push(Rc::clone(conn));
            self.flush_due.notify();
        }
    }

    async fn flusher(self: Rc<Self>) {
        let mut out = SendBatch::new(MAX_DATAGRAM);
        let mut batch = Vec::new(); // kept: its room is reused
        loop {
            self.flush_due.wait().await;
            self.flush_dirty(&mut batch, &mut out).await;
        }
    }

    /// Services every dirty connection (starting the calls it brought) and
    /// sends their output, all of it in one system call when it fits.
    async fn flush_dirty(self: &Rc<Self>, batch: &mut Vec<Rc<Conn>>, out: &mut SendBatch) {
        loop {
            std::mem::swap(batch, &mut *self.dirty.borrow_mut());
            if batch.is_empty() {
                break;
            }
            let now = std::time::Instant::now();
            for conn in batch.drain(..) {
                conn.queued.set(false);
                let calls = conn.service(self);
                let started_calls = !calls.is_empty();
                for call in calls {
                    self.stats.calls.set(self.stats.calls.get() + 1);
                    glommio::spawn_local(call::run(Rc::clone(self), Rc::clone(&conn), call))
                        .detach();
                }
                if !conn.hold(started_calls, now) {
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
            let sent = conn.inner.borrow_mut().quic.send(room);
            match sent {
                Ok((len, info)) => out.push(len, info.to),
                Err(quiche::Error::Done) => break,
                Err(e) => {
                    tracing::debug!(shard = self.index, error = %e, "QUIC send failed");
                    let _ = conn
                        .inner
                        .borrow_mut()
                        .quic
                        .close(false, 0x1, b"internal error");
                    break;
                }
            }
        }
        conn.signal.notify();
    }

    /// Puts the gathered datagrams on the wire and empties `out`.
    async fn transmit(&self, out: &mut SendBatch) {
        while let Err(e) = out.send(self.fd(), self.gso.get()) {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                // The socket buffer is full: wait for room through io_uring.
                for (datagram, to) in out.unsent() {
                    if let Err(e) = self.socket.send_to(datagram, to).await {
                        tracing::debug!(shard = self.index, error = %e, "UDP send failed");
                    }
                }
                break;
            }
            if self.gso.get() && udp::gso_unsupported(&e) {
                tracing::info!(shard = self.index, error = %e, "UDP GSO unavailable: sending datagrams one by one");
                self.gso.set(false);
                continue;
            }
            // Lost like any datagram (QUIC recovers); the rest goes on.
            tracing::debug!(shard = self.index, error = %e, "UDP send failed");
            out.skip();
        }
        out.clear();
    }

    /// Fires the connection's QUIC timers; forgets it once closed.
    async fn timer(self: Rc<Self>, conn: Rc<Conn>) {
        loop {
            if conn.is_closed() {
                break;
            }
            let quic_timeout = conn.inner.borrow().quic.timeout();
            let hold = conn
                .hold_until()
                .map(|until| until.saturating_duration_since(std::time::Instant::now()));
            let timeout = match (quic_timeout, hold) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(timeout) = timeout else {
                conn.signal.wait().await;
                continue;
            };
            let sleep = std::pin::pin!(glommio::timer::sleep(timeout));
            let woken = std::pin::pin!(conn.signal.wait());
            if let Either::Left(_) = select(sleep, woken).await {
                conn.inner.borrow_mut().quic.on_timeout();
                self.wake(&conn);
                // An expired timer reads as zero until the flusher has
                // run: let it run before looking again.
                glommio::executor().yield_now().await;
            }
        }
        let _ = conn.service(&self); // aborts any call still attached
        self.conns.borrow_mut().retain(|_, c| !Rc::ptr_eq(c, &conn));
        tracing::debug!(shard = self.index, "connection closed");
    }

    /// Graceful shutdown: GOAWAY on every connection, no new ones, and wait
    /// (up to `deadline`) for their calls to finish.
    pub async fn drain(self: &Rc<Self>, deadline: Duration) {
        self.draining.set(true);
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
        for conn in &conns {
            conn.drain();
            self.wake(conn);
        }
        let start = std::time::Instant::now();
        while start.elapsed() < deadline && conns.iter().any(|c| c.stream_count() > 0) {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        for conn in &conns {
            let _ = conn
                .inner
                .borrow_mut()
                .quic
                .close(true, 0x100, b"shutting down");
            self.wake(conn);
        }
        // Send the closes now: the executor ends after this returns.
        self.flush_dirty(&mut Vec::new(), &mut SendBatch::new(MAX_DATAGRAM))
            .await;
    }
}

fn token_input(body: &[u8], peer: SocketAddr) -> Vec<u8> {
    let mut input = body.to_vec();
    match peer {
        SocketAddr::V4(a) => input.extend_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => input.extend_from_slice(&a.ip().octets()),
    }
    input.extend_from_slice(&peer.port().to_be_bytes());
    input
}
