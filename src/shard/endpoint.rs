//! A shard's QUIC endpoint: its UDP socket, its connections by ID, and the
//! tasks that move datagrams in and out and fire connection timers.
//!
//! The kernel (SO_REUSEPORT) steers each client's datagrams to one shard,
//! so a connection lives and dies on one core. Nothing here crosses cores.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::{select, Either};
use glommio::net::UdpSocket;
use quiche::ConnectionId;
use ring::hmac;

use super::call;
use super::conn::Conn;
use super::upstream::Upstreams;
use super::Settings;
use crate::pool::Reader;

/// Our connection IDs: an HMAC of the client's first destination ID, so a
/// client's retransmitted Initials find the same connection.
const CONN_ID_LEN: usize = quiche::MAX_CONN_ID_LEN;
const MAX_DATAGRAM: usize = super::MAX_DATAGRAM;
const RETRY_TOKEN_LIFETIME_SECS: u64 = 30;

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
}

/// Per-shard counters (plain cells: only this core writes them).
#[derive(Default)]
pub struct Stats {
    pub connections: Cell<u64>,
    pub calls: Cell<u64>,
    pub errors: Cell<u64>,
}

enum Incoming {
    /// Handled by this connection; it may have output.
    Conn(Rc<Conn>),
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
        }))
    }

    /// Receives datagrams until the socket fails.
    pub async fn run(self: Rc<Self>) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let (len, from) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(shard = self.index, error = %e, "UDP receive failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            match self.on_datagram(&mut buf[..len], from) {
                Incoming::Conn(conn) => self.drive(&conn).await,
                Incoming::Reply(packet) => {
                    let _ = self.socket.send_to(&packet, from).await;
                }
                Incoming::Drop => {}
            }
        }
    }

    fn on_datagram(self: &Rc<Self>, buf: &mut [u8], from: SocketAddr) -> Incoming {
        let Ok(header) = quiche::Header::from_slice(buf, CONN_ID_LEN) else {
            return Incoming::Drop; // not QUIC: ignore, never answer
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
                Err(incoming) => return incoming,
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
        Incoming::Conn(conn)
    }

    fn accept(
        self: &Rc<Self>,
        header: &quiche::Header<'_>,
        from: SocketAddr,
    ) -> Result<Rc<Conn>, Incoming> {
        if header.ty != quiche::Type::Initial || self.draining.get() {
            return Err(Incoming::Drop);
        }
        let mut out = vec![0u8; MAX_DATAGRAM];
        if !quiche::version_is_supported(header.version) {
            let len = quiche::negotiate_version(&header.scid, &header.dcid, &mut out)
                .map_err(|_| Incoming::Drop)?;
            out.truncate(len);
            return Err(Incoming::Reply(out));
        }
        let count = self.conns.borrow().len();
        if count >= self.settings.max_connections {
            return Err(Incoming::Drop);
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
                    .map_err(|_| Incoming::Drop)?;
                    out.truncate(len);
                    return Err(Incoming::Reply(out));
                }
                Some(token) => match self.validate_token(token, from) {
                    Some(id) => {
                        odcid = Some(id);
                        // After a Retry the client already uses the ID we
                        // gave it there.
                        scid = header.dcid.clone().into_owned();
                    }
                    None => return Err(Incoming::Drop),
                },
            }
        }
        let quic = {
            let mut config = self.quic_config.borrow_mut();
            quiche::accept(&scid, odcid.as_ref(), self.local, from, &mut config)
                .map_err(|_| Incoming::Drop)?
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

    /// Services a connection and sends what it has to send: called after
    /// every datagram, timer and call progress.
    pub async fn drive(self: &Rc<Self>, conn: &Rc<Conn>) {
        for call in conn.service(self) {
            self.stats.calls.set(self.stats.calls.get() + 1);
            glommio::spawn_local(call::run(Rc::clone(self), Rc::clone(conn), call)).detach();
        }
        self.flush(conn).await;
    }

    async fn flush(&self, conn: &Conn) {
        let mut out = [0u8; MAX_DATAGRAM];
        loop {
            let sent = conn.inner.borrow_mut().quic.send(&mut out);
            match sent {
                Ok((len, info)) => {
                    if let Err(e) = self.socket.send_to(&out[..len], info.to).await {
                        tracing::debug!(shard = self.index, error = %e, "UDP send failed");
                    }
                }
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

    /// Fires the connection's QUIC timers; forgets it once closed.
    async fn timer(self: Rc<Self>, conn: Rc<Conn>) {
        loop {
            if conn.is_closed() {
                break;
            }
            let timeout = conn.inner.borrow().quic.timeout();
            let Some(timeout) = timeout else {
                conn.signal.wait().await;
                continue;
            };
            let sleep = std::pin::pin!(glommio::timer::sleep(timeout));
            let woken = std::pin::pin!(conn.signal.wait());
            if let Either::Left(_) = select(sleep, woken).await {
                conn.inner.borrow_mut().quic.on_timeout();
                self.drive(&conn).await;
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
            self.drive(conn).await;
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
            self.drive(conn).await;
        }
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
