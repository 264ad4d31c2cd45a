//! Test harness (quiche's `Pipe`, for our [`Conn`]): a real quiche HTTP/3
//! client and a server-side [`Conn`] with the shard's own QUIC
//! configuration, joined in memory. No sockets, no executor: `advance`
//! moves datagrams both ways and services the connection until both sides
//! are quiet, returning the calls the connection started.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use quiche::h3::{self, Header, NameValue};

use super::conn::{Conn, ConnSettings, NewCall};

/// What the client saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Headers(u64, Vec<(String, String)>),
    Data(u64, Vec<u8>),
    Finished(u64),
    Reset(u64, u64),
    GoAway,
}

pub struct Pipe {
    pub client: quiche::Connection,
    client_h3: Option<h3::Connection>,
    pub conn: Rc<Conn>,
    pub settings: ConnSettings,
    client_addr: SocketAddr,
    server_addr: SocketAddr,
    _tls: tempfile::TempDir,
}

impl Pipe {
    /// A connection through the handshake, HTTP/3 set up on both sides,
    /// with the shard's QUIC settings (`quic_streams` concurrent streams
    /// allowed by QUIC, `max_streams` by the connection).
    pub fn new(quic_streams: usize, max_streams: usize) -> Pipe {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (tls, _) = super::tls::self_signed(dir.path()).expect("self-signed pair");
        let config = super::Config {
            listen: "127.0.0.1:443".parse().unwrap(),
            metrics: crate::pool::metrics::NodeMetrics::new(1, Default::default()),
            shards: 1,
            tls,
            idle_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(1),
            settings: super::Settings {
                max_connections: 10,
                retry_above: 10,
                max_streams_per_conn: quic_streams,
                max_message_size: 4 << 20,
                conn_buffer_limit: 1 << 20,
                shard_buffer_limit: 64 << 20,
                reset_rate: 100,
                upstream_queue: 16,
                call: Default::default(),
                ..super::Settings::default()
            },
            tcp: super::TcpConfig {
                listen: None,
                listen_h2c: None,
                handshake_timeout: Duration::from_secs(10),
            },
        };
        let mut server_config = super::quic_config(&config).expect("server QUIC configuration");
        let mut client_config = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
        client_config
            .set_application_protos(h3::APPLICATION_PROTOCOL)
            .unwrap();
        client_config.verify_peer(false);
        client_config.set_max_idle_timeout(30_000);
        client_config.set_initial_max_data(16 << 20);
        client_config.set_initial_max_stream_data_bidi_local(4 << 20);
        client_config.set_initial_max_stream_data_uni(1 << 20);
        client_config.set_initial_max_streams_uni(16);

        let client_addr: SocketAddr = "192.0.2.1:50000".parse().unwrap();
        let server_addr = config.listen;
        let client_id = quiche::ConnectionId::from_ref(&[0xc1; quiche::MAX_CONN_ID_LEN]);
        let server_id = quiche::ConnectionId::from_ref(&[0x5e; quiche::MAX_CONN_ID_LEN]);
        let client = quiche::connect(
            Some("localhost"),
            &client_id,
            client_addr,
            server_addr,
            &mut client_config,
        )
        .unwrap();
        let quic = quiche::accept(
            &server_id,
            None,
            server_addr,
            client_addr,
            &mut server_config,
        )
        .unwrap();
        let mut h3_config = h3::Config::new().unwrap();
        h3_config.set_max_field_section_size(4 * super::MAX_HEADER_SECTION as u64);
        let mut pipe = Pipe {
            client,
            client_h3: None,
            conn: Conn::new(quic),
            settings: ConnSettings {
                h3: h3_config,
                max_streams,
                shard: 0,
                counters: test_counters(),
                buffers: super::limits::ShardBudget::new(64 << 20, None),
                conn_buffer_limit: 1 << 20,
                reset_rate: 100,
                reset_floods: Default::default(),
                body_scratch: Default::default(),
            },
            client_addr,
            server_addr,
            _tls: dir,
        };
        let calls = pipe.advance();
        assert!(calls.is_empty());
        assert!(pipe.client.is_established(), "handshake done");
        pipe.client_h3 = Some(
            h3::Connection::with_transport(&mut pipe.client, &h3::Config::new().unwrap())
                .expect("client HTTP/3"),
        );
        assert!(pipe.advance().is_empty());
        pipe
    }

    /// Moves datagrams both ways, servicing the connection each round,
    /// until neither side has anything to send. Returns the new calls.
    pub fn advance(&mut self) -> Vec<NewCall> {
        let mut calls = Vec::new();
        let mut buf = vec![0u8; 65_535];
        for _ in 0..100_000 {
            let mut moved = false;
            loop {
                match self.client.send(&mut buf) {
                    Ok((len, _)) => {
                        let info = quiche::RecvInfo {
                            from: self.client_addr,
                            to: self.server_addr,
                        };
                        // As the endpoint does: a rejected packet is dropped.
                        let _ = self.conn.recv(&mut buf[..len], info);
                        moved = true;
                    }
                    Err(quiche::Error::Done) => break,
                    Err(e) => panic!("client send: {e}"),
                }
            }
            calls.extend(self.conn.service(&self.settings));
            self.conn.sent();
            loop {
                match self.conn.send(&mut buf) {
                    Ok((len, _)) => {
                        let info = quiche::RecvInfo {
                            from: self.server_addr,
                            to: self.client_addr,
                        };
                        let _ = self.client.recv(&mut buf[..len], info);
                        moved = true;
                    }
                    Err(quiche::Error::Done) => break,
                    Err(e) => panic!("server send: {e}"),
                }
            }
            if !moved {
                return calls;
            }
        }
        panic!("the pipe never went quiet");
    }

    /// Opens a request stream with `headers` (ending it if `fin`).
    pub fn request(&mut self, headers: &[Header], fin: bool) -> u64 {
        self.client_h3
            .as_mut()
            .expect("HTTP/3 set up")
            .send_request(&mut self.client, headers, fin)
            .expect("send_request")
    }

    /// Writes request body; returns how much quiche took.
    pub fn send_body(&mut self, stream_id: u64, body: &[u8], fin: bool) -> usize {
        match self.client_h3.as_mut().expect("HTTP/3 set up").send_body(
            &mut self.client,
            stream_id,
            body,
            fin,
        ) {
            Ok(n) => n,
            Err(h3::Error::Done | h3::Error::StreamBlocked) => 0,
            Err(e) => panic!("send_body: {e}"),
        }
    }

    /// Everything the client's HTTP/3 layer reports now (bodies read).
    pub fn client_events(&mut self) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let h3 = self.client_h3.as_mut().expect("HTTP/3 set up");
        loop {
            match h3.poll(&mut self.client) {
                Ok((id, h3::Event::Headers { list, .. })) => {
                    let list = list
                        .iter()
                        .map(|h| {
                            (
                                String::from_utf8_lossy(h.name()).into_owned(),
                                String::from_utf8_lossy(h.value()).into_owned(),
                            )
                        })
                        .collect();
                    events.push(ClientEvent::Headers(id, list));
                }
                Ok((id, h3::Event::Data)) => {
                    let mut body = Vec::new();
                    while let Ok(n) = h3.recv_body(&mut self.client, id, &mut buf) {
                        body.extend_from_slice(&buf[..n]);
                    }
                    events.push(ClientEvent::Data(id, body));
                }
                Ok((id, h3::Event::Finished)) => events.push(ClientEvent::Finished(id)),
                Ok((id, h3::Event::Reset(code))) => events.push(ClientEvent::Reset(id, code)),
                Ok((_, h3::Event::GoAway)) => events.push(ClientEvent::GoAway),
                Ok((_, h3::Event::PriorityUpdate)) => {}
                Err(h3::Error::Done) => return events,
                Err(e) => panic!("client poll: {e}"),
            }
        }
    }
}

/// A unary gRPC request's headers for `authority` and `path`.
pub fn grpc_request(authority: &str, path: &str) -> Vec<Header> {
    vec![
        Header::new(b":method", b"POST"),
        Header::new(b":scheme", b"https"),
        Header::new(b":authority", authority.as_bytes()),
        Header::new(b":path", path.as_bytes()),
        Header::new(b"content-type", b"application/grpc"),
        Header::new(b"te", b"trailers"),
    ]
}

/// A counter block of its own for a test's shard.
pub fn test_counters() -> Rc<super::counters::Counters> {
    let node = crate::pool::metrics::NodeMetrics::new(1, Default::default());
    Rc::new(super::counters::Counters::new(node, 0))
}
