//! The data plane: one glommio shard per core serving gRPC over HTTP/3 and,
//! beside it on the same port, HTTP/2 over TLS on TCP (tcp/).
//!
//! Owns UDP and TCP sockets, QUIC connections, HTTP/3 and HTTP/2 streams,
//! gRPC routing and the core-local upstream HTTP/2 pools. It reads the pod pool only through the
//! published routing snapshot (`crate::pool::Reader`) and never touches
//! `control`. Nothing on the request path takes a lock or crosses cores.

mod accept;
mod burst;
mod call;
mod conn;
#[cfg(test)]
mod conn_tests;
mod counters;
mod endpoint;
mod flush;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;
mod grpc;
mod limits;
pub use limits::CallLimits;
#[cfg(test)]
mod pipe;
mod reset;
mod respond;
mod signal;
mod sources;
mod stream;
pub mod tcp;
pub mod tls;
mod token;
mod udp;
mod upstream;

/// For `benches/primitives/` only (benches link the library as an outside
/// crate): the shard primitives it measures, re-exported unchanged. Not an
/// interface; nothing else may use it.
#[doc(hidden)]
pub mod bench {
    pub use super::grpc::{encode_message, parse_timeout, FrameLimiter};
    pub use super::upstream::{key, Upstreams};
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::channel::oneshot;
use glommio::{LocalExecutorBuilder, Placement};

use crate::pool::Publisher;

/// Limits that protect a shard from its clients.
#[derive(Debug, Clone)]
pub struct Settings {
    /// QUIC connections per shard; Initials beyond are dropped.
    pub max_connections: usize,
    /// Above this many connections a shard validates addresses with Retry.
    pub retry_above: usize,
    /// Above this many handshakes in progress a shard validates addresses
    /// with Retry (a handshake flood).
    pub retry_handshakes_above: usize,
    /// Handshakes in progress per source address (IPv6: per /64) and
    /// shard; 0 = no limit.
    pub max_handshakes_per_source: usize,
    /// Connections per source address (IPv6: per /64) and shard; 0 = no
    /// limit.
    pub max_connections_per_source: usize,
    /// A handshake with no packet from the client for this long is
    /// abandoned.
    pub handshake_idle_timeout: Duration,
    /// A handshake not complete after this long is abandoned.
    pub handshake_timeout: Duration,
    /// Stateless resets per second and shard, at most.
    pub stateless_resets_per_second: u32,
    /// Concurrent streams per connection.
    pub max_streams_per_conn: usize,
    /// Largest request message, in bytes.
    pub max_message_size: usize,
    /// Bytes buffered for one connection's calls before it is held back.
    pub conn_buffer_limit: usize,
    /// Bytes buffered for a shard's calls; past it, calls whose client
    /// reads nothing end after the grace period.
    pub shard_buffer_limit: usize,
    /// Streams a client may reset before their response, per second and
    /// connection (0: any number).
    pub reset_rate: u32,
    /// Calls waiting for a stream to one component's pod, per shard.
    pub upstream_queue: usize,
    /// Timeouts of a call (idle, grace over budget, upstream wait).
    pub call: limits::CallLimits,
}

/// The defaults of the `serve` flags.
impl Default for Settings {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            retry_above: 2000,
            retry_handshakes_above: 128,
            max_handshakes_per_source: 64,
            max_connections_per_source: 1000,
            handshake_idle_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            stateless_resets_per_second: 1000,
            max_streams_per_conn: 256,
            max_message_size: 4 << 20,
            conn_buffer_limit: 4 << 20,
            shard_buffer_limit: 256 << 20,
            reset_rate: 100,
            upstream_queue: 1024,
            call: limits::CallLimits::default(),
        }
    }
}
/// The largest header section a request may have (decoded, as HTTP/3
/// counts it); a larger one gets RESOURCE_EXHAUSTED and the connection
/// goes on.
pub const MAX_HEADER_SECTION: usize = 16 * 1024;
/// Past this, quiche itself closes the connection (H3_EXCESSIVE_LOAD):
/// the header block is not even decoded.
const HEADER_SECTION_CEILING: u64 = 4 * MAX_HEADER_SECTION as u64;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The node's counter blocks, one per shard (sized to `shards`).
    pub metrics: std::sync::Arc<crate::pool::metrics::NodeMetrics>,
    pub shards: usize,
    pub tls: tls::TlsFiles,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub settings: Settings,
    /// HTTP/2 over TCP beside HTTP/3 (tcp/).
    pub tcp: TcpConfig,
}

/// The TCP side's addresses and its one timeout of its own (the rest it
/// shares with QUIC: idle timeout, connection and stream limits).
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// HTTP/2 over TLS (by default the UDP address); `None`: off.
    pub listen: Option<SocketAddr>,
    /// Cleartext h2c; `None` (the default): off.
    pub listen_h2c: Option<SocketAddr>,
    /// TLS + HTTP/2 handshake timeout.
    pub handshake_timeout: Duration,
}

/// The running shards.
pub struct Shards {
    threads: Vec<std::thread::JoinHandle<()>>,
    stops: Vec<oneshot::Sender<()>>,
}

const MAX_DATAGRAM: usize = 1350;
/// Kernel buffer per shard socket and direction: about 3,000 datagrams,
/// room for a burst of new connections while the shard is busy.
const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// Starts `config.shards` shards, each pinned to a core and bound to the
/// listen address; returns once all are serving (or the first error).
pub fn start(config: &Config, publisher: &Publisher) -> std::io::Result<Shards> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut shards = Shards {
        threads: Vec::new(),
        stops: Vec::new(),
    };
    for index in 0..config.shards.max(1) {
        let placement = match cores.get(index % cores.len().max(1)) {
            Some(core) => Placement::Fixed(core.id),
            None => Placement::Unbound,
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let config = config.clone();
        let reader = publisher.reader();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("vimanad-shard-{index}"))
            .spawn(move || async move {
                let (shard, tcp) = match setup(index, &config, reader) {
                    Ok(shard) => {
                        let _ = ready_tx.send(Ok(()));
                        shard
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let serving = glommio::spawn_local(std::rc::Rc::clone(&shard).run());
                let accepting = tcp.as_ref().map(|tcp| tcp.run());
                let _ = stop_rx.await;
                let tcp_drain = async {
                    if let Some(tcp) = &tcp {
                        tcp.drain(config.drain_timeout).await;
                    }
                };
                futures::future::join(shard.drain(config.drain_timeout), tcp_drain).await;
                drop(serving);
                drop(accepting);
                let counters = shard.counters();
                tracing::info!(
                    shard = index,
                    connections = counters.handshakes_started.get(),
                    calls = counters.calls(),
                    errors = counters.answered.get(),
                    "shard stopped"
                );
            })
            .map_err(|e| std::io::Error::other(format!("start shard {index}: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(std::io::Error::other(format!(
                    "shard {index} died while starting"
                )))
            }
        }
        shards.stops.push(stop_tx);
        shards.threads.push(std::thread::spawn(move || {
            let _ = handle.join();
        }));
    }
    Ok(shards)
}

type Setup = (
    std::rc::Rc<endpoint::Shard>,
    Option<std::rc::Rc<tcp::Server>>,
);

fn setup(index: usize, config: &Config, reader: crate::pool::Reader) -> std::io::Result<Setup> {
    let socket = glommio::net::UdpSocket::bind(config.listen)
        .map_err(|e| std::io::Error::other(format!("bind UDP {}: {e}", config.listen)))?;
    let granted = udp::set_buffers(std::os::fd::AsRawFd::as_raw_fd(&socket), UDP_SOCKET_BUFFER);
    if granted < UDP_SOCKET_BUFFER {
        tracing::info!(
            shard = index,
            granted,
            wanted = UDP_SOCKET_BUFFER,
            "UDP receive buffer smaller than asked (raise net.core.rmem_max, or run with CAP_NET_ADMIN)"
        );
    }
    let quic = quic_config(config)
        .map_err(|e| std::io::Error::other(format!("QUIC/TLS configuration: {e}")))?;
    let mut h3 = quiche::h3::Config::new().map_err(|e| std::io::Error::other(e.to_string()))?;
    h3.set_max_field_section_size(HEADER_SECTION_CEILING);
    let counters = counters::Counters::new(std::sync::Arc::clone(&config.metrics), index);
    // The stateless reset key is derived from the TLS key: the same on
    // every shard and across restarts (reset.rs).
    let secret = std::fs::read(&config.tls.key)
        .map_err(|e| std::io::Error::other(format!("read {}: {e}", config.tls.key.display())))?;
    let shard = endpoint::Shard::new(
        index,
        socket,
        quic,
        h3,
        reader,
        config.settings.clone(),
        counters,
        &secret,
    )?;
    tracing::info!(shard = index, listen = %config.listen, "shard serving HTTP/3");
    let tcp_settings = tcp::TcpSettings {
        listen: config.tcp.listen,
        listen_h2c: config.tcp.listen_h2c,
        h3_port: config.listen.port(),
        max_connections: config.settings.max_connections,
        max_streams: config.settings.max_streams_per_conn,
        handshake_timeout: config.tcp.handshake_timeout,
        idle_timeout: config.idle_timeout,
    };
    let tcp = tcp::Server::bind(index, tcp_settings, &config.tls, shard.call_shared())?;
    Ok((shard, tcp))
}

fn quic_config(config: &Config) -> Result<quiche::Config, quiche::Error> {
    let mut c = quiche::Config::new(quiche::PROTOCOL_VERSION)?;
    c.load_cert_chain_from_pem_file(&config.tls.cert.to_string_lossy())?;
    c.load_priv_key_from_pem_file(&config.tls.key.to_string_lossy())?;
    c.set_application_protos(quiche::h3::APPLICATION_PROTOCOL)?;
    c.set_max_idle_timeout(config.idle_timeout.as_millis() as u64);
    c.set_max_recv_udp_payload_size(MAX_DATAGRAM);
    c.set_max_send_udp_payload_size(MAX_DATAGRAM);
    c.set_initial_max_data(16 << 20);
    c.set_initial_max_stream_data_bidi_local(1 << 20);
    c.set_initial_max_stream_data_bidi_remote(1 << 20);
    c.set_initial_max_stream_data_uni(1 << 20);
    c.set_initial_max_streams_bidi(config.settings.max_streams_per_conn as u64);
    c.set_initial_max_streams_uni(16);
    c.set_disable_active_migration(true);
    Ok(c)
}

impl Shards {
    /// Asks every shard to drain (GOAWAY, finish in-flight calls within the
    /// drain timeout, close connections) and waits for them.
    pub fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The TLS files to use: given, or self-signed in `state_dir/tls`.
pub fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    state_dir: &std::path::Path,
) -> std::io::Result<tls::TlsFiles> {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let fingerprint = tls::fingerprint(&cert)?;
            tracing::info!(cert = %cert.display(), %fingerprint, "TLS certificate");
            Ok(tls::TlsFiles { cert, key })
        }
        (None, None) => {
            let (files, fingerprint) = tls::self_signed(&state_dir.join("tls"))?;
            tracing::info!(cert = %files.cert.display(), %fingerprint, "self-signed TLS certificate (pass --tls-cert/--tls-key to use your own)");
            Ok(files)
        }
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "--tls-cert and --tls-key go together",
        )),
    }
}
