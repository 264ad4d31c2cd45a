//! An abusive client: it opens server-streaming calls that would send
//! megabytes and never reads a byte of them. The shard must hold at most
//! its bounded buffers for it (backpressure reaches the component through
//! HTTP/2 flow control) and keep serving everyone else.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use quiche::h3;
use vimana_example::pb;

const V1: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");

/// A quiche client that sends requests and then only keeps the connection
/// alive: it never takes stream data, so its flow-control windows never
/// open again.
struct Hoarder {
    socket: UdpSocket,
    conn: quiche::Connection,
    h3: Option<h3::Connection>,
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
}

impl Hoarder {
    fn connect(peer: std::net::SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(peer).unwrap();
        let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
        config
            .set_application_protos(h3::APPLICATION_PROTOCOL)
            .unwrap();
        config.verify_peer(false);
        config.set_max_idle_timeout(30_000);
        config.set_max_recv_udp_payload_size(1350);
        config.set_max_send_udp_payload_size(1350);
        config.set_initial_max_data(1 << 20);
        config.set_initial_max_stream_data_bidi_local(64 * 1024);
        config.set_initial_max_stream_data_uni(1 << 20);
        config.set_initial_max_streams_uni(16);
        let scid = [7u8; quiche::MAX_CONN_ID_LEN];
        let local = socket.local_addr().unwrap();
        let conn = quiche::connect(
            Some("localhost"),
            &quiche::ConnectionId::from_ref(&scid),
            local,
            peer,
            &mut config,
        )
        .unwrap();
        let mut hoarder = Hoarder {
            socket,
            conn,
            h3: None,
            local,
            peer,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while !hoarder.conn.is_established() {
            assert!(Instant::now() < until, "handshake");
            hoarder.turn();
        }
        hoarder.h3 = Some(
            h3::Connection::with_transport(&mut hoarder.conn, &h3::Config::new().unwrap()).unwrap(),
        );
        hoarder
    }

    /// One round: send what quiche has, take in one datagram (or a timeout).
    fn turn(&mut self) {
        let mut out = [0u8; 1350];
        while let Ok((n, _)) = self.conn.send(&mut out) {
            let _ = self.socket.send(&out[..n]);
        }
        let wait = self
            .conn
            .timeout()
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        self.socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 65535];
        match self.socket.recv(&mut buf) {
            Ok(n) => {
                let info = quiche::RecvInfo {
                    from: self.peer,
                    to: self.local,
                };
                let _ = self.conn.recv(&mut buf[..n], info);
            }
            Err(_) => self.conn.on_timeout(),
        }
    }

    fn request(&mut self, message: &pb::StreamRequest) {
        let headers = [
            h3::Header::new(b":method", b"POST"),
            h3::Header::new(b":scheme", b"https"),
            h3::Header::new(b":authority", b"example.com"),
            h3::Header::new(b":path", b"/vimana.example.v1.Echo/ServerStream"),
            h3::Header::new(b"content-type", b"application/grpc"),
            h3::Header::new(b"te", b"trailers"),
        ];
        let body = prost::Message::encode_to_vec(message);
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        let until = Instant::now() + Duration::from_secs(10);
        let id = loop {
            match self
                .h3
                .as_mut()
                .unwrap()
                .send_request(&mut self.conn, &headers, false)
            {
                Ok(id) => break id,
                Err(h3::Error::StreamBlocked) => {
                    assert!(Instant::now() < until, "never allowed to open a stream");
                    self.turn();
                }
                Err(e) => panic!("send_request: {e}"),
            }
        };
        let mut sent = 0;
        while sent < framed.len() {
            match self
                .h3
                .as_mut()
                .unwrap()
                .send_body(&mut self.conn, id, &framed[sent..], true)
            {
                Ok(n) => sent += n,
                Err(h3::Error::Done) | Err(h3::Error::StreamBlocked) => {}
                Err(e) => panic!("send_body: {e}"),
            }
            if sent < framed.len() {
                assert!(Instant::now() < until, "never allowed to send the request");
                self.turn();
            }
        }
    }
}

#[tokio::test]
async fn a_client_that_never_reads_costs_bounded_memory_and_blocks_nobody() {
    // One shard: the hoarder and everyone else share that core's HTTP/2
    // connection to the pod, so its flow control must not let the hoarder
    // starve the rest.
    let mut node = Node::start_configured(1, "info", &[]).await;
    node.running_pod("a", V1).await;
    let pid = node.process.id();
    let listen = node.listen;
    let before = rss_kib(pid);

    // 20 calls, each asking for 10,000 replies of 1 KiB (200 MB in all).
    let hoarder = std::thread::spawn(move || {
        let mut h = Hoarder::connect(listen);
        let ask = pb::StreamRequest {
            message: "x".repeat(1024),
            count: 10_000,
            interval_ms: 0,
        };
        for _ in 0..20 {
            h.request(&ask);
        }
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            h.turn();
        }
        h
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Everyone else is served meanwhile.
    let (code, out, err) = vimanad_call(
        &node,
        "example.com",
        "/vimana.example.v1.Echo/Unary",
        &["--text", "still", "--output", "text", "--timeout", "5s"],
    );
    assert_eq!((code, out.trim()), (0, "still"), "{err}");

    let mut hoarder = hoarder.join().unwrap();
    let grown = rss_kib(pid).saturating_sub(before);
    eprintln!("vimanad RSS grew by {grown} KiB while the hoarder held 20 streams");
    // Per stream at most the outbox (256 KiB) plus HTTP/2 and QUIC windows:
    // far below the 200 MB the calls asked for.
    assert!(
        grown < 64 * 1024,
        "vimanad grew by {grown} KiB for a client that reads nothing"
    );

    // The hoarder leaves; the node still serves.
    let _ = hoarder.conn.close(true, 0x100, b"bye");
    hoarder.turn();
    let (code, _, err) = vimanad_call(
        &node,
        "example.com",
        "/vimana.example.v1.Echo/Unary",
        &["--text", "after"],
    );
    assert_eq!(code, 0, "{err}");
}
