//! HTTP/2 over TCP beside HTTP/3, on the shard's own executor: a TCP
//! listener per shard on the data-plane address (SO_REUSEPORT: the kernel
//! spreads connections over the shards as it spreads datagrams), TLS 1.3 and
//! 1.2 with ALPN `h2` from the same certificate as QUIC (tls.rs), optionally
//! cleartext h2c on a separate address, and HTTP/2 by the h2 crate
//! (conn.rs), each request handed to the shard's one call path
//! (`call::serve` on a `shard::stream` pair, stream.rs): the same
//! validation, routing, upstream pool, deadlines, limits and statuses as
//! HTTP/3. Responses advertise HTTP/3 (`alt-svc: h3=":PORT"`).
//!
//! Knows nothing of QUIC: it shares with the rest of the shard only what
//! calls share (`call::Shared`). No lock: `Rc`/`Cell` on the shard.

mod conn;
mod stream;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use http::HeaderValue;

use super::call::Shared;
use super::signal::Signal;

/// What the TCP side of a shard is configured with.
#[derive(Debug, Clone)]
pub struct TcpSettings {
    /// HTTP/2 over TLS; `None` switches it off.
    pub listen: Option<SocketAddr>,
    /// Cleartext HTTP/2 (h2c), for node-local clients; off by default.
    pub listen_h2c: Option<SocketAddr>,
    /// The UDP port advertised in `alt-svc`.
    pub h3_port: u16,
    /// TCP connections per shard (each transport counts its own).
    pub max_connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_streams: usize,
    /// TLS and HTTP/2 handshakes must finish within this.
    pub handshake_timeout: Duration,
    /// A connection without streams this long is closed (GOAWAY).
    pub idle_timeout: Duration,
}

/// One shard's TCP side.
pub struct Server {
    shared: Shared,
    tls: tokio_rustls::TlsAcceptor,
    settings: TcpSettings,
    alt_svc: HeaderValue,
    shard: usize,
    listeners: RefCell<Vec<(TcpListener, bool)>>,
    /// The open connections' wake-ups (for the drain).
    conns: RefCell<Vec<Weak<Signal>>>,
    open: Cell<usize>,
    draining: Cell<bool>,
}

impl Server {
    /// Binds the shard's listeners (errors name the address) and loads
    /// TLS; serves nothing until [`Server::run`]. `None` when both
    /// listeners are off.
    pub fn bind(
        shard: usize,
        settings: TcpSettings,
        tls: &super::tls::TlsFiles,
        shared: Shared,
    ) -> std::io::Result<Option<Rc<Server>>> {
        let mut listeners = Vec::new();
        for (addr, tls) in [(settings.listen, true), (settings.listen_h2c, false)] {
            let Some(addr) = addr else { continue };
            let listener = TcpListener::bind(addr)
                .map_err(|e| std::io::Error::other(format!("bind TCP {addr}: {e}")))?;
            tracing::info!(shard, listen = %addr, tls, "shard serving HTTP/2 over TCP");
            listeners.push((listener, tls));
        }
        if listeners.is_empty() {
            return Ok(None);
        }
        let config = tls::server_config(tls)?;
        let alt_svc = HeaderValue::from_str(&format!("h3=\":{}\"", settings.h3_port))
            .map_err(std::io::Error::other)?;
        Ok(Some(Rc::new(Server {
            shared,
            tls: tokio_rustls::TlsAcceptor::from(config),
            settings,
            alt_svc,
            shard,
            listeners: RefCell::new(listeners),
            conns: RefCell::new(Vec::new()),
            open: Cell::new(0),
            draining: Cell::new(false),
        })))
    }

    /// The bound addresses (port 0 resolved), TLS first.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .borrow()
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Accepts connections until the shard stops (the returned tasks are
    /// cancelled when dropped).
    pub fn run(self: &Rc<Self>) -> Vec<glommio::task::JoinHandle<()>> {
        let listeners = std::mem::take(&mut *self.listeners.borrow_mut());
        listeners
            .into_iter()
            .map(|(listener, tls)| {
                let server = Rc::clone(self);
                let task = glommio::spawn_local(async move { server.accept(listener, tls).await });
                task.detach()
            })
            .collect()
    }

    async fn accept(self: Rc<Self>, listener: TcpListener, tls: bool) {
        let counters = Rc::clone(&self.shared.counters);
        loop {
            let tcp = match listener.accept().await {
                Ok(tcp) => tcp,
                Err(e) => {
                    // Out of descriptors or the like: wait, never spin.
                    tracing::warn!(shard = self.shard, error = %e, "TCP accept failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if self.draining.get() {
                break;
            }
            counters.get().tcp_accepted.inc();
            if self.open.get() >= self.settings.max_connections {
                counters.get().tcp_refused.inc();
                drop(tcp); // closed at once
                continue;
            }
            self.open.set(self.open.get() + 1);
            counters.get().tcp_connections_open.inc();
            let server = Rc::clone(&self);
            glommio::spawn_local(async move {
                conn::serve(Rc::clone(&server), tcp, tls).await;
                server.open.set(server.open.get() - 1);
                server.shared.counters.get().tcp_connections_open.dec();
            })
            .detach();
        }
    }

    /// Files a connection's wake-up for the drain (forgetting those of
    /// connections that ended).
    fn register(&self, signal: &Rc<Signal>) {
        let mut conns = self.conns.borrow_mut();
        conns.retain(|w| w.strong_count() > 0);
        conns.push(Rc::downgrade(signal));
    }

    /// Graceful shutdown: no new connections, GOAWAY on every one, and wait
    /// (up to `deadline`) for their streams to finish.
    pub async fn drain(&self, deadline: Duration) {
        self.draining.set(true);
        for signal in self.conns.borrow().iter().filter_map(Weak::upgrade) {
            signal.notify();
        }
        let start = Instant::now();
        while start.elapsed() < deadline && self.open.get() > 0 {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }
}
