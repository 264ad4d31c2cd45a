//! A shard's QUIC endpoint: its UDP socket, its connections by ID, and the
//! tasks that move datagrams in, start calls, fire connection timers and
//! drain. The top of the shard: it wires the connections (conn.rs), the
//! flush (flush.rs) and the calls (call.rs) together; none of them knows it.
//!
//! The kernel (SO_REUSEPORT) steers each client's datagrams to one shard,
//! so a connection lives and dies on one core. Nothing here crosses cores.
//!
//! A connection still in its handshake is held to the handshake deadlines
//! (`--handshake-idle-timeout` since its last packet, `--handshake-timeout`
//! in all) and then forgotten silently, as an idle timeout would: a
//! half-open connection keeps its slot for seconds, not the idle timeout.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{select, Either};
use glommio::net::UdpSocket;
use quiche::ConnectionId;

use super::accept::{Acceptor, Limits, Load, Refused, Reply, CONN_ID_LEN};
use super::burst::Burst;
use super::call::{self, CallContext};
use super::conn::{Conn, ConnSettings};
use super::counters::Counters;
use super::flush::{ConnWaker, FlushQueue, Wire};
use super::limits::{CallLimits, ShardBudget};
use super::udp::{self, RecvBatch, SendBatch};
use super::upstream::Upstreams;
use super::Settings;
use crate::pool::metrics::{Drop, ShardMetrics};
use crate::pool::Reader;

const MAX_DATAGRAM: usize = super::MAX_DATAGRAM;
/// Batches of datagrams taken per wake-up before the other tasks (calls,
/// the flusher) get a turn.
const RECV_BATCHES_PER_TURN: usize = 4;

pub struct Shard {
    pub index: usize,
    wire: Wire,
    local: SocketAddr,
    acceptor: Acceptor,
    conn_settings: ConnSettings,
    conns: RefCell<HashMap<ConnectionId<'static>, Rc<Conn>>>,
    routes: Rc<RefCell<Reader>>,
    upstreams: Rc<Upstreams>,
    settings: Settings,
    call_limits: Rc<CallLimits>,
    /// This shard's block of the node's metrics.
    counters: Rc<Counters>,
    draining: Cell<bool>,
    /// Connections whose handshake is in progress.
    handshakes: Cell<usize>,
    /// One log line per burst of each refusal, of Retries asked for a
    /// flood, and of handshake timeouts (burst.rs).
    refusals: [Burst; Drop::ALL.len()],
    flood: Burst,
    timeouts: Burst,
    /// Connections with news (see flush.rs).
    queue: Rc<FlushQueue>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)] // each is one piece the shard wires
    pub fn new(
        index: usize,
        socket: UdpSocket,
        quic_config: quiche::Config,
        h3_config: quiche::h3::Config,
        routes: Reader,
        settings: Settings,
        counters: Counters,
        reset_secret: &[u8],
    ) -> std::io::Result<Rc<Self>> {
        let local = socket.local_addr()?;
        let counters = Rc::new(counters);
        Ok(Rc::new(Self {
            index,
            local,
            wire: Wire::new(socket, index, Rc::clone(&counters)),
            acceptor: Acceptor::new(quic_config, local, limits(&settings), reset_secret)?,
            conn_settings: ConnSettings {
                h3: h3_config,
                max_streams: settings.max_streams_per_conn,
                shard: index,
                counters: Rc::clone(&counters),
                buffers: ShardBudget::new(settings.shard_buffer_limit, Some(Rc::clone(&counters))),
                conn_buffer_limit: settings.conn_buffer_limit,
                reset_rate: settings.reset_rate,
                reset_floods: Default::default(),
                body_scratch: Default::default(),
            },
            conns: RefCell::new(HashMap::new()),
            routes: Rc::new(RefCell::new(routes)),
            upstreams: Rc::new(
                Upstreams::with_limits(
                    settings.upstream_queue,
                    super::upstream::window_for(
                        settings.conn_buffer_limit,
                        settings.max_streams_per_conn,
                    ),
                )
                .reporting(Rc::clone(&counters)),
            ),
            call_limits: Rc::new(settings.call.clone()),
            settings,
            counters,
            draining: Cell::new(false),
            handshakes: Cell::new(0),
            refusals: Default::default(),
            flood: Burst::default(),
            timeouts: Burst::default(),
            queue: Rc::new(FlushQueue::default()),
        }))
    }

    /// Receives datagrams until the shard stops: waits for the first through
    /// io_uring, then takes what else is queued in batches.
    pub async fn run(self: Rc<Self>) {
        // Cancelled with this task when the shard stops.
        let _flusher = glommio::spawn_local(Rc::clone(&self).flusher());
        let fd = self.wire.fd();
        let mut first = vec![0u8; 65_535];
        let mut batch = RecvBatch::new();
        loop {
            match self.wire.socket().recv_from(&mut first).await {
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

    /// What the shard's calls over HTTP/2 (tcp/) share with its QUIC
    /// calls: the same routing reader, upstream pool and counters.
    pub fn call_shared(&self) -> call::Shared {
        call::Shared {
            routes: Rc::clone(&self.routes),
            upstreams: Rc::clone(&self.upstreams),
            counters: Rc::clone(&self.counters),
            max_message_size: self.settings.max_message_size,
            limits: Rc::clone(&self.call_limits),
            buffers: Rc::clone(&self.conn_settings.buffers),
            conn_buffer_limit: self.settings.conn_buffer_limit,
        }
    }

    /// This shard's counters (for its shutdown log).
    pub fn counters(&self) -> &ShardMetrics {
        self.counters.get()
    }

    fn on_datagram(self: &Rc<Self>, buf: &mut [u8], from: SocketAddr) {
        let counters = self.counters.get();
        counters.datagrams_in.inc();
        let Ok(header) = quiche::Header::from_slice(buf, CONN_ID_LEN) else {
            counters.dropped(Drop::Malformed);
            return; // not QUIC: ignore, never answer
        };
        let conn = {
            let conns = self.conns.borrow();
            conns
                .get(&header.dcid)
                .or_else(|| {
                    // A client's retransmitted first Initial (or 0-RTT)
                    // still carries its own destination ID.
                    (header.ty != quiche::Type::Short)
                        .then(|| conns.get(&self.acceptor.conn_id_for(&header.dcid)))
                        .flatten()
                })
                .cloned()
        };
        let len = buf.len();
        let conn = match conn {
            Some(conn) => conn,
            None => match self.accept(&header, len, from) {
                Ok(conn) => conn,
                Err(Refused::Reply(packet, kind)) => {
                    match kind {
                        Reply::Retry { flood } => {
                            counters.retries_sent.inc();
                            if flood {
                                if let Some(n) = self.flood.hit(Instant::now()) {
                                    tracing::warn!(
                                        shard = self.index,
                                        handshakes = self.handshakes.get(),
                                        retries = n,
                                        "handshake flood: new clients must pass a Retry"
                                    );
                                }
                            }
                        }
                        Reply::VersionNegotiation => counters.version_negotiations_sent.inc(),
                        Reply::StatelessReset => counters.stateless_resets_sent.inc(),
                    }
                    // Best effort: a client that misses it sends again.
                    if udp::send_to(self.wire.fd(), &packet, from).is_ok() {
                        counters.datagrams_out.inc();
                    }
                    return;
                }
                Err(Refused::Drop(why)) => {
                    counters.dropped(why);
                    self.log_refusal(why, from);
                    return;
                }
            },
        };
        let info = quiche::RecvInfo {
            from,
            to: self.local,
        };
        if let Err(e) = conn.recv(buf, info) {
            counters.dropped(Drop::Rejected);
            // A malformed packet is dropped by quiche; the connection
            // carries on (or closes itself with the protocol's error).
            tracing::trace!(shard = self.index, error = %e, "packet rejected");
        }
        self.wake(&conn);
    }

    /// Files a new connection for an Initial and starts its timer task.
    fn accept(
        self: &Rc<Self>,
        header: &quiche::Header<'_>,
        len: usize,
        from: SocketAddr,
    ) -> Result<Rc<Conn>, Refused> {
        let load = Load {
            connections: self.conns.borrow().len(),
            handshakes: self.handshakes.get(),
            draining: self.draining.get(),
        };
        let accepted = self.acceptor.accept(header, len, from, load)?;
        let conn = Conn::new(accepted.quic);
        self.conns
            .borrow_mut()
            .insert(accepted.scid, Rc::clone(&conn));
        let counters = self.counters.get();
        counters.handshakes_started.inc();
        counters.connections_open.inc();
        self.handshakes.set(self.handshakes.get() + 1);
        counters
            .handshakes_pending
            .set(self.handshakes.get() as u64);
        tracing::debug!(shard = self.index, peer = %from, "connection accepted");
        let timer = Rc::clone(self).timer(Rc::clone(&conn), accepted.source);
        glommio::spawn_local(timer).detach();
        Ok(conn)
    }

    /// One warning per burst of refusals for a limit (not for garbage).
    fn log_refusal(&self, why: Drop, from: SocketAddr) {
        let what = match why {
            Drop::ConnectionLimit => "connection limit reached (--max-connections)",
            Drop::SourceLimit => "a source holds its connections (--max-connections-per-source)",
            Drop::SourceHandshakeLimit => {
                "a source holds its handshakes (--max-handshakes-per-source)"
            }
            Drop::InvalidToken => "invalid Retry tokens",
            Drop::TooSmall => "Initials in datagrams under 1200 bytes",
            _ => return,
        };
        if let Some(n) = self.refusals[why as usize].hit(Instant::now()) {
            tracing::warn!(shard = self.index, last = %from, refused = n, "{what}: Initials dropped");
        }
    }

    /// The handshake is over (completed, or the connection is gone).
    fn handshake_over(&self) {
        self.handshakes.set(self.handshakes.get().saturating_sub(1));
        self.counters
            .get()
            .handshakes_pending
            .set(self.handshakes.get() as u64);
    }

    /// Asks for `conn` to be serviced and flushed (see flush.rs).
    fn wake(&self, conn: &Rc<Conn>) {
        self.queue.wake(conn);
    }

    async fn flusher(self: Rc<Self>) {
        let mut out = SendBatch::new(MAX_DATAGRAM);
        let mut batch = Vec::new(); // kept: its room is reused
        loop {
            self.queue.wait().await;
            self.flush(&mut batch, &mut out).await;
        }
    }

    /// Services every dirty connection, starting the calls it brought, and
    /// sends their output.
    async fn flush(self: &Rc<Self>, batch: &mut Vec<Rc<Conn>>, out: &mut SendBatch) {
        let queue = Rc::clone(&self.queue);
        self.wire
            .flush(&queue, batch, out, |conn, now| {
                let calls = conn.service(&self.conn_settings);
                let started_calls = !calls.is_empty();
                for call in calls {
                    self.start_call(conn, call);
                }
                conn.hold(started_calls, now)
            })
            .await;
    }

    /// Spawns one call task with its context.
    fn start_call(&self, conn: &Rc<Conn>, call: super::conn::NewCall) {
        let ctx = CallContext {
            stream: call.stream,
            routes: Rc::clone(&self.routes),
            upstreams: Rc::clone(&self.upstreams),
            waker: ConnWaker::new(conn, &self.queue),
            max_message_size: self.settings.max_message_size,
            limits: Rc::clone(&self.call_limits),
            counters: Rc::clone(&self.counters),
            observed: call::Observed::default(),
        };
        glommio::spawn_local(call::serve(ctx, call.headers, self.index)).detach();
    }

    /// Fires the connection's QUIC timers and, until its handshake
    /// completes, the handshake deadlines; forgets it once closed.
    async fn timer(self: Rc<Self>, conn: Rc<Conn>, source: super::sources::Source) {
        let mut handshake = Some(Handshake::new(&self.settings, conn.packets_received()));
        loop {
            if conn.is_closed() {
                break;
            }
            if let Some(h) = &mut handshake {
                if conn.is_established() {
                    handshake = None;
                    self.handshake_over();
                    // QUIC's handshake, whether HTTP/3 then sets up or not.
                    self.counters.get().handshakes_done.inc();
                    self.acceptor.sources().established(source);
                } else if h.expired(conn.packets_received(), Instant::now()) {
                    // Silently, like an idle timeout (RFC 9000 §10.1): a
                    // close would answer a source that may be spoofed.
                    self.counters.get().handshake_timeouts.inc();
                    if let Some(n) = self.timeouts.hit(Instant::now()) {
                        tracing::warn!(
                            shard = self.index,
                            timeouts = n,
                            "handshakes abandoned at their deadline"
                        );
                    }
                    break;
                }
            }
            let quic_timeout = conn.quic_timeout();
            let now = Instant::now();
            let hold = conn
                .hold_until()
                .map(|until| until.saturating_duration_since(now));
            let deadline = handshake
                .as_ref()
                .map(|h| h.deadline().saturating_duration_since(now));
            let timeout = [quic_timeout, hold, deadline].into_iter().flatten().min();
            let Some(timeout) = timeout else {
                conn.timer_changed().await;
                continue;
            };
            let sleep = std::pin::pin!(glommio::timer::sleep(timeout));
            let woken = std::pin::pin!(conn.timer_changed());
            if let Either::Left(_) = select(sleep, woken).await {
                conn.on_timeout();
                self.wake(&conn);
                // An expired timer reads as zero until the flusher has
                // run: let it run before looking again.
                glommio::executor().yield_now().await;
            }
        }
        let _ = conn.service(&self.conn_settings); // aborts any call still attached
        if handshake.is_some() {
            self.handshake_over();
        }
        self.acceptor.sources().closed(source, handshake.is_some());
        self.counters.get().connections_open.dec();
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
            conn.close(true, 0x100, b"shutting down");
            self.wake(conn);
        }
        // Send the closes now: the executor ends after this returns.
        self.flush(&mut Vec::new(), &mut SendBatch::new(MAX_DATAGRAM))
            .await;
    }
}

/// A connection's handshake deadlines: idle since its last packet, and in
/// all since it was accepted.
struct Handshake {
    started: Instant,
    last_packet: Instant,
    packets: usize,
    idle: Duration,
    limit: Duration,
}

impl Handshake {
    fn new(settings: &Settings, packets: usize) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last_packet: now,
            packets,
            idle: settings.handshake_idle_timeout,
            limit: settings.handshake_timeout,
        }
    }

    /// When the connection is forgotten if nothing comes.
    fn deadline(&self) -> Instant {
        (self.last_packet + self.idle).min(self.started + self.limit)
    }

    /// Notes the packets received so far; whether a deadline passed.
    fn expired(&mut self, packets: usize, now: Instant) -> bool {
        if packets != self.packets {
            self.packets = packets;
            self.last_packet = now;
        }
        now >= self.deadline()
    }
}

fn limits(settings: &Settings) -> Limits {
    Limits {
        max_connections: settings.max_connections,
        retry_above: settings.retry_above,
        retry_handshakes_above: settings.retry_handshakes_above,
        max_handshakes_per_source: settings.max_handshakes_per_source,
        max_connections_per_source: settings.max_connections_per_source,
        stateless_resets_per_second: settings.stateless_resets_per_second,
    }
}
