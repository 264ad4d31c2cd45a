//! Fuzzing entry points for the shard's inputs from the network, driven by
//! the libFuzzer targets in fuzz/ (built with `--cfg fuzzing`) and by the
//! unit test below, which replays the seed corpus on every `cargo test`.
//! Not an interface: compiled only for those two.
//!
//! [`Datagrams`] is the receive path of a shard without its socket and
//! tasks: header parsing, the connection lookup, admission (accept.rs:
//! limits, Retry and its tokens, stateless resets) and quiche's receive,
//! with a real quiche client whose datagrams the input may mutate, so the
//! fuzzer reaches Retry tokens and handshakes, not only garbage. Its
//! oracles: nothing panics, and nothing but a smaller stateless reset
//! answers a datagram under 1,200 bytes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::OnceLock;

use quiche::ConnectionId;

use super::accept::{Acceptor, Limits, Load, Refused, Reply, CONN_ID_LEN, MIN_INITIAL_DATAGRAM};
use super::grpc::{parse_timeout, FrameLimiter};
use super::sources::Source;

const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 443);
/// Most datagrams one step may move, so every input ends quickly.
const MAX_STEPS: usize = 64;

fn tls() -> &'static super::tls::TlsFiles {
    static TLS: OnceLock<super::tls::TlsFiles> = OnceLock::new();
    TLS.get_or_init(|| {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("vimanad-fuzz-tls-{}", std::process::id()));
        super::tls::self_signed(&dir).expect("a self-signed pair").0
    })
}

fn server_config() -> quiche::Config {
    let tls = tls();
    let config = super::Config {
        listen: LOCAL,
        metrics: crate::pool::metrics::NodeMetrics::new(1, Default::default()),
        shards: 1,
        tls: tls.clone(),
        idle_timeout: std::time::Duration::from_secs(30),
        drain_timeout: std::time::Duration::from_secs(1),
        settings: super::Settings::default(),
        tcp: super::TcpConfig {
            listen: None,
            listen_h2c: None,
            handshake_timeout: std::time::Duration::from_secs(10),
        },
    };
    super::quic_config(&config).expect("server QUIC configuration")
}

struct Server {
    quic: quiche::Connection,
    source: Source,
    handshaking: bool,
}

/// One shard's receive path and one client (see the module comment).
pub struct Datagrams {
    acceptor: Acceptor,
    conns: HashMap<ConnectionId<'static>, Server>,
    client: Option<quiche::Connection>,
    client_from: SocketAddr,
    /// What the server sent the client, not yet delivered.
    to_client: Vec<Vec<u8>>,
}

impl Default for Datagrams {
    fn default() -> Self {
        Self::new()
    }
}

impl Datagrams {
    pub fn new() -> Self {
        let limits = Limits {
            max_connections: 16,
            retry_above: 8,
            retry_handshakes_above: 4,
            max_handshakes_per_source: 3,
            max_connections_per_source: 6,
            stateless_resets_per_second: 1_000_000,
        };
        Self {
            acceptor: Acceptor::new(server_config(), LOCAL, limits, b"fuzz").expect("acceptor"),
            conns: HashMap::new(),
            client: None,
            client_from: from(0),
            to_client: Vec::new(),
        }
    }

    /// Runs one input: a first byte of flags, then steps (see below).
    pub fn run(&mut self, data: &[u8]) {
        let Some((&flags, mut data)) = data.split_first() else {
            return;
        };
        let flood = flags & 1 != 0;
        for _ in 0..MAX_STEPS {
            let Some((&op, rest)) = data.split_first() else {
                break;
            };
            data = rest;
            match op % 6 {
                // A datagram of the input's bytes, from one of 8 sources.
                0 => {
                    let (&head, rest) = data.split_first().unwrap_or((&0, &[]));
                    let len = (head as usize * 8).min(rest.len());
                    let (datagram, rest) = rest.split_at(len);
                    data = rest;
                    self.server_recv(&mut datagram.to_vec(), from(op / 6), flood);
                }
                // The client's next datagram, as it is.
                1 => self.client_step(None, flood),
                // The client's next datagram with one byte changed (or, for
                // a change of 0, cut there).
                2 => {
                    let (mutation, rest) = data.split_at(data.len().min(3));
                    data = rest;
                    let pos = mutation.first().copied().unwrap_or(0) as usize
                        | (mutation.get(1).copied().unwrap_or(0) as usize) << 8;
                    self.client_step(Some((pos, mutation.get(2).copied().unwrap_or(1))), flood);
                }
                // The server's answers reach the client.
                3 => self.deliver(),
                // The client moves to another port (its token must fail).
                4 => self.client_from = from(op / 6 + 1),
                // A new client, its ID made of the next byte.
                _ => {
                    let (&seed, rest) = data.split_first().unwrap_or((&0, &[]));
                    data = rest;
                    let scid = [seed; 16];
                    let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("config");
                    config.verify_peer(false);
                    let _ = config.set_application_protos(quiche::h3::APPLICATION_PROTOCOL);
                    config.set_max_idle_timeout(30_000);
                    self.client = quiche::connect(
                        Some("localhost"),
                        &ConnectionId::from_ref(&scid),
                        self.client_from,
                        LOCAL,
                        &mut config,
                    )
                    .ok();
                    self.to_client.clear();
                }
            }
        }
    }

    fn client_step(&mut self, mutation: Option<(usize, u8)>, flood: bool) {
        let Some(client) = &mut self.client else {
            return;
        };
        let mut out = vec![0u8; 1350];
        let Ok((n, _)) = client.send(&mut out) else {
            return;
        };
        out.truncate(n);
        match mutation {
            // Cut short: an Initial in a datagram under 1,200 bytes.
            Some((pos, 0)) => out.truncate(pos % n.max(1)),
            Some((pos, xor)) => out[pos % n.max(1)] ^= xor,
            None => {}
        }
        self.server_recv(&mut out, self.client_from, flood);
    }

    fn deliver(&mut self) {
        let Some(client) = &mut self.client else {
            return;
        };
        for mut datagram in self.to_client.drain(..) {
            let info = quiche::RecvInfo {
                from: LOCAL,
                to: self.client_from,
            };
            let _ = client.recv(&mut datagram, info);
        }
    }

    /// What `endpoint.rs` does with one datagram, socket aside.
    fn server_recv(&mut self, buf: &mut [u8], from: SocketAddr, flood: bool) {
        let len = buf.len();
        let Ok(header) = quiche::Header::from_slice(buf, CONN_ID_LEN) else {
            return;
        };
        let mut key = header.dcid.clone().into_owned();
        if !self.conns.contains_key(&key) && header.ty != quiche::Type::Short {
            let derived = self.acceptor.conn_id_for(&header.dcid);
            if self.conns.contains_key(&derived) {
                key = derived;
            }
        }
        if !self.conns.contains_key(&key) {
            let handshakes = self.conns.values().filter(|c| c.handshaking).count();
            let load = Load {
                connections: self.conns.len(),
                handshakes: if flood { usize::MAX } else { handshakes },
                draining: false,
            };
            match self.acceptor.accept(&header, len, from, load) {
                Ok(accepted) => {
                    key = accepted.scid;
                    let server = Server {
                        quic: accepted.quic,
                        source: accepted.source,
                        handshaking: true,
                    };
                    self.conns.insert(key.clone(), server);
                }
                Err(Refused::Reply(packet, kind)) => {
                    // No amplification: under 1,200 bytes only a smaller
                    // stateless reset answers.
                    assert!(
                        len >= MIN_INITIAL_DATAGRAM
                            || (kind == Reply::StatelessReset && packet.len() < len),
                        "{kind:?} of {} bytes for a datagram of {len}",
                        packet.len()
                    );
                    if kind == Reply::StatelessReset {
                        assert!(packet.len() < len, "a reset larger than its trigger");
                    }
                    if from == self.client_from {
                        self.to_client.push(packet);
                    }
                    return;
                }
                Err(Refused::Drop(_)) => return,
            }
        }
        let Some(server) = self.conns.get_mut(&key) else {
            return;
        };
        let _ = server.quic.recv(buf, quiche::RecvInfo { from, to: LOCAL });
        if server.handshaking && server.quic.is_established() {
            server.handshaking = false;
            self.acceptor.sources().established(server.source);
        }
        let mut out = vec![0u8; 1350];
        for _ in 0..8 {
            match server.quic.send(&mut out) {
                Ok((n, info)) if info.to == self.client_from => {
                    self.to_client.push(out[..n].to_vec())
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if server.quic.is_closed() {
            if let Some(gone) = self.conns.remove(&key) {
                self.acceptor
                    .sources()
                    .closed(gone.source, gone.handshaking);
            }
        }
    }
}

fn from(i: u8) -> SocketAddr {
    SocketAddr::new(
        std::net::IpAddr::V4(Ipv4Addr::new(198, 51, 100, i % 4)),
        4000 + u16::from(i / 4 % 2),
    )
}

/// gRPC framing and `grpc-timeout`: the first byte picks the size limit,
/// the second the chunk size, the rest is the stream. Oracles: the
/// limiter agrees with a whole-stream parse, and a parsed timeout is one
/// the spec allows (1 to 8 digits and a unit).
pub fn grpc(data: &[u8]) {
    let [max, chunk, stream @ ..] = data else {
        return;
    };
    let max = *max as usize * 4;
    let mut limiter = FrameLimiter::new(max);
    let mut got = Ok(());
    for piece in stream.chunks((*chunk as usize).max(1)) {
        got = limiter.feed(piece);
        if got.is_err() {
            break;
        }
    }
    assert_eq!(got, oversized(stream, max), "chunks of {chunk}");
    for end in 0..stream.len().min(12) {
        let value = &stream[..=end];
        if parse_timeout(value).is_some() {
            let (unit, digits) = value.split_last().expect("not empty");
            assert!(b"HMSmun".contains(unit), "{value:?}");
            assert!((1..=8).contains(&digits.len()), "{value:?}");
            assert!(digits.iter().all(u8::is_ascii_digit), "{value:?}");
        }
    }
}

/// The first message over `max` in a whole stream, the plain way.
fn oversized(mut stream: &[u8], max: usize) -> Result<(), usize> {
    while stream.len() >= 5 {
        let len = u32::from_be_bytes([stream[1], stream[2], stream[3], stream[4]]) as usize;
        if len > max {
            return Err(len);
        }
        stream = stream.get(5 + len..).unwrap_or(&[]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert!(!inputs.is_empty(), "no seeds in {}", dir.display());
        inputs.sort();
        inputs
    }

    #[test]
    fn the_datagram_corpus_replays() {
        let mut target = Datagrams::new();
        for input in corpus("datagram") {
            target.run(&input);
        }
    }

    #[test]
    fn the_grpc_corpus_replays() {
        for input in corpus("grpc") {
            grpc(&input);
        }
    }

    #[test]
    fn a_client_passes_a_retry_in_the_harness() {
        // Client, its Initial under flood (a Retry comes back), delivered,
        // its Initial with the token: a connection is filed.
        let mut target = Datagrams::new();
        target.run(&[1, 5, 7, 1, 3, 1]);
        assert_eq!(
            target.conns.len(),
            1,
            "the validated client got a connection"
        );
        // The same steps from a client that moved port: no connection.
        let mut target = Datagrams::new();
        target.run(&[1, 5, 7, 1, 3, 4, 1]);
        assert_eq!(
            target.conns.len(),
            0,
            "a token from another port is refused"
        );
    }
}
