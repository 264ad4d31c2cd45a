//! The client's QUIC connection: a quiche connection on its own connected,
//! blocking `UdpSocket` whose read timeout follows `conn.timeout()`;
//! handshake, flushing packets out, waiting for packets or timers, and
//! describing why a connection closed. Knows nothing of HTTP/3 or gRPC.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use quiche::h3::{self, WireErrorCode};

const IDLE_TIMEOUT_MS: u64 = 30_000;
const MAX_DATAGRAM: usize = 1350;

fn describe_close(e: &quiche::ConnectionError) -> String {
    let what = match (e.is_app, e.error_code) {
        (true, code) => format!("HTTP/3 error 0x{code:x}"),
        (false, code @ 0x100..=0x1ff) => format!(
            "TLS alert {}{}",
            code - 0x100,
            match code - 0x100 {
                42 | 46 | 48 => " (certificate not accepted: check --ca and --server-name)",
                120 => " (no_application_protocol: the server does not speak h3)",
                _ => "",
            }
        ),
        (false, code) => format!("QUIC transport error 0x{code:x}"),
    };
    match String::from_utf8_lossy(&e.reason) {
        reason if reason.is_empty() => what,
        reason => format!("{what}: {reason}"),
    }
}

/// A client QUIC connection on its own connected UDP socket.
pub(super) struct Quic {
    socket: UdpSocket,
    pub(super) conn: quiche::Connection,
    pub(super) peer: SocketAddr,
    local: SocketAddr,
    buf: Vec<u8>,
}

impl Quic {
    pub(super) fn connect(peer: SocketAddr, sni: Option<&str>, ca: Option<&Path>) -> Result<Quic> {
        let bind = if peer.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(bind).context("bind a UDP socket")?;
        // Connected, so an ICMP port-unreachable surfaces as ECONNREFUSED.
        socket
            .connect(peer)
            .with_context(|| format!("connect a UDP socket to {peer}"))?;
        let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION)?;
        config.set_application_protos(h3::APPLICATION_PROTOCOL)?;
        config.verify_peer(ca.is_some());
        if let Some(ca) = ca {
            let path = ca
                .to_str()
                .ok_or_else(|| anyhow!("--ca path is not UTF-8"))?;
            config
                .load_verify_locations_from_file(path)
                .with_context(|| format!("load {path}"))?;
        }
        config.set_max_idle_timeout(IDLE_TIMEOUT_MS);
        config.set_max_recv_udp_payload_size(65527);
        config.set_max_send_udp_payload_size(MAX_DATAGRAM);
        config.set_initial_max_data(16 << 20);
        config.set_initial_max_stream_data_bidi_local(4 << 20);
        config.set_initial_max_stream_data_uni(1 << 20);
        config.set_initial_max_streams_uni(16);
        config.set_disable_active_migration(true);
        let mut scid = [0u8; quiche::MAX_CONN_ID_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut scid)
            .map_err(|_| anyhow!("no randomness for a connection ID"))?;
        let local = socket.local_addr()?;
        let conn = quiche::connect(
            sni,
            &quiche::ConnectionId::from_ref(&scid),
            local,
            peer,
            &mut config,
        )?;
        let mut quic = Quic {
            socket,
            conn,
            peer,
            local,
            buf: vec![0; 65535],
        };
        quic.flush()?;
        Ok(quic)
    }

    pub(super) fn handshake(&mut self, until: Instant) -> Result<()> {
        let started = Instant::now();
        while !self.conn.is_established() {
            if Instant::now() >= until {
                let waited = until.saturating_duration_since(started);
                bail!(
                    "no QUIC handshake with {} within {waited:?} (no HTTP/3 server there?)",
                    self.peer
                );
            }
            self.wait(until)?;
            self.flush()?;
        }
        Ok(())
    }

    /// Sends every packet quiche has ready.
    pub(super) fn flush(&mut self) -> Result<()> {
        let mut out = [0u8; MAX_DATAGRAM];
        loop {
            let n = match self.conn.send(&mut out) {
                Ok((n, _)) => n,
                Err(quiche::Error::Done) => return Ok(()),
                Err(e) => bail!("QUIC send to {}: {e}", self.peer),
            };
            match self.socket.send(&out[..n]) {
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                    return Err(self.io_error(e))
                }
                _ => {} // sent, or dropped like a lost packet: QUIC recovers
            }
        }
    }

    fn io_error(&self, e: std::io::Error) -> anyhow::Error {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                anyhow!(
                    "nothing listening on UDP {} (connection refused)",
                    self.peer
                )
            }
            _ => anyhow!("UDP {}: {e}", self.peer),
        }
    }

    /// Blocks until a packet arrives (and feeds it to quiche) or quiche's
    /// timer or `until` fires; fails if the connection is then closed.
    pub(super) fn wait(&mut self, until: Instant) -> Result<()> {
        let limit = until.saturating_duration_since(Instant::now());
        let wait = self.conn.timeout().map_or(limit, |t| t.min(limit));
        self.socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match self.socket.recv(&mut self.buf) {
            Ok(n) => {
                let info = quiche::RecvInfo {
                    from: self.peer,
                    to: self.local,
                };
                // A bad packet is quiche's to drop, or to close the connection over.
                let _ = self.conn.recv(&mut self.buf[..n], info);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                self.conn.on_timeout()
            }
            Err(e) => return Err(self.io_error(e)),
        }
        if !self.conn.is_closed() {
            return Ok(());
        }
        let stage = if self.conn.is_established() {
            "connection to"
        } else {
            "QUIC handshake with"
        };
        Err(match (self.conn.peer_error(), self.conn.local_error()) {
            _ if self.conn.is_timed_out() => anyhow!("{stage} {} timed out", self.peer),
            (Some(e), _) => anyhow!(
                "{stage} {} closed by the server: {}",
                self.peer,
                describe_close(e)
            ),
            (None, Some(e)) => anyhow!("{stage} {} failed: {}", self.peer, describe_close(e)),
            (None, None) => anyhow!("{stage} {} closed", self.peer),
        })
    }

    /// Best effort: tell the server we are done (CONNECTION_CLOSE H3_NO_ERROR).
    pub(super) fn close(&mut self) {
        let _ = self.conn.close(true, WireErrorCode::NoError as u64, b"");
        let _ = self.flush();
    }
}
