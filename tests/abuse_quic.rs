//! The QUIC handshake defences, from the attacker's side: the real binary,
//! raw UDP sockets sending packets a quiche client builds (and then bends),
//! and Python aioquic and `vimanad call` as the well-behaved clients.
//!
//! The attacker sends from 127.0.0.2 (and, for a flood of many sources,
//! 127.0.0.2-127.0.0.9), the well-behaved clients from 127.0.0.1: another
//! source as far as the per-source limits go.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const V1: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
const UNARY: &str = "/vimana.example.v1.Echo/Unary";

fn unary_call(message: &str) -> serde_json::Value {
    let m = vimana_example::pb::EchoRequest {
        message: message.into(),
        ..Default::default()
    };
    json!({ "path": UNARY, "messages_hex": [hex_of(&m)] })
}

// ---- the attacker's tools ----

/// A quiche client of `server` from `local` (its first ID from `seed`).
fn client(seed: u64, local: SocketAddr, server: SocketAddr) -> quiche::Connection {
    let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
    config.verify_peer(false);
    config
        .set_application_protos(quiche::h3::APPLICATION_PROTOCOL)
        .unwrap();
    config.set_max_idle_timeout(60_000);
    config.set_initial_max_data(1 << 20);
    config.set_initial_max_stream_data_bidi_local(1 << 20);
    config.set_initial_max_streams_bidi(16);
    // HTTP/3's control and QPACK streams: without them the node's HTTP/3
    // setup fails and it closes the connection.
    config.set_initial_max_streams_uni(3);
    config.set_initial_max_stream_data_uni(1 << 16);
    let mut scid = [0u8; 16];
    scid[..8].copy_from_slice(&seed.to_be_bytes());
    scid[8..].copy_from_slice(&std::process::id().to_be_bytes().repeat(2));
    quiche::connect(
        Some("localhost"),
        &quiche::ConnectionId::from_ref(&scid),
        local,
        server,
        &mut config,
    )
    .unwrap()
}

/// The next datagram `conn` wants to send.
fn next(conn: &mut quiche::Connection) -> Option<Vec<u8>> {
    let mut out = vec![0u8; 1500];
    match conn.send(&mut out) {
        Ok((n, _)) => {
            out.truncate(n);
            Some(out)
        }
        Err(quiche::Error::Done) => None,
        Err(e) => panic!("client send: {e}"),
    }
}

/// A raw socket on `ip`, with a short receive timeout.
fn raw(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// Everything that arrives on `s` within `wait`.
fn received(s: &UdpSocket, wait: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_535];
    while Instant::now() < deadline {
        match s.recv(&mut buf) {
            Ok(n) => got.push(buf[..n].to_vec()),
            Err(_) => continue,
        }
    }
    got
}

fn is_retry(packet: &[u8]) -> bool {
    quiche::Header::from_slice(&mut packet.to_vec(), 16).is_ok_and(|h| h.ty == quiche::Type::Retry)
}

fn is_version_negotiation(packet: &[u8]) -> bool {
    packet.len() >= 5 && packet[0] & 0x80 != 0 && packet[1..5] == [0, 0, 0, 0]
}

/// A long-header packet of an unknown version, `len` bytes.
fn unknown_version(len: usize) -> Vec<u8> {
    let mut p = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8];
    p.extend_from_slice(b"dcid0001");
    p.push(8);
    p.extend_from_slice(b"scid0001");
    p.resize(len, 0);
    p
}

/// Drives a quiche client through its handshake over `s` (not a call).
fn handshake(conn: &mut quiche::Connection, s: &UdpSocket, server: SocketAddr) {
    let local = s.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65_535];
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    while !conn.is_established() {
        assert!(Instant::now() < deadline, "handshake did not complete");
        while let Some(d) = next(conn) {
            s.send_to(&d, server).unwrap();
        }
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = conn.recv(&mut buf[..n], quiche::RecvInfo { from, to: local });
        } else {
            conn.on_timeout();
        }
    }
    while let Some(d) = next(conn) {
        s.send_to(&d, server).unwrap();
    }
}

// ---- the node's side ----

fn scrape(node: &Node) -> String {
    let addr = node.metrics_addr();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

/// The sum over shards of the samples of `family` whose labels contain
/// `with` (e.g. `reason="source_limit"`, or "" for all).
fn total(metrics: &str, family: &str, with: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls the metrics until `ok` holds for `family` (up to `wait`).
fn wait_for(
    node: &Node,
    family: &str,
    with: &str,
    wait: Duration,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + wait;
    loop {
        let v = total(&scrape(node), family, with);
        if ok(v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends Initials of fresh connections from 32 ports of 127.0.0.2 until
/// `stop`; counts them in `sent`.
fn flood(
    server: SocketAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let sockets: Vec<UdpSocket> = (0..32).map(|_| raw("127.0.0.2")).collect();
        for s in &sockets {
            s.set_nonblocking(true).unwrap();
        }
        // One real Initial, its destination ID changed for each send: the
        // node files a connection for the header before it can tell that
        // the packet does not decrypt, so this costs the attacker nothing.
        let mut c = client(1_000_000, sockets[0].local_addr().unwrap(), server);
        let mut initial = next(&mut c).unwrap();
        let dcid_len = initial[5] as usize;
        assert!(dcid_len >= 8);
        let mut n = 0u64;
        let mut buf = vec![0u8; 65_535];
        while !stop.load(Ordering::Relaxed) {
            for s in &sockets {
                n += 1;
                initial[6..14].copy_from_slice(&n.to_be_bytes());
                if s.send_to(&initial, server).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                // Whatever the node answers is never read by a real
                // attacker; drain it so the socket buffers stay small.
                while s.recv(&mut buf).is_ok() {}
            }
        }
    })
}

/// New connections with one call each that `vimanad call` completes in
/// `window`; every one must succeed.
fn real_handshakes(node: &Node, window: Duration) -> (u64, Duration) {
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < window {
        let (code, _, err) = vimanad_call(node, "example.com", UNARY, &["--text", "real"]);
        assert_eq!(code, 0, "a well-behaved client failed: {err}");
        done += 1;
    }
    (done, start.elapsed())
}

#[tokio::test]
async fn an_initial_flood_from_one_address_is_held_to_its_limits_and_others_connect() {
    let mut node = Node::start_with(&[
        "--max-connections",
        "300",
        "--max-handshakes-per-source",
        "32",
        "--max-connections-per-source",
        "64",
    ])
    .await;
    node.running_pod("a", V1).await;
    let (base_done, base_time) = real_handshakes(&node, Duration::from_secs(3));

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = flood(node.listen, Arc::clone(&stop), Arc::clone(&sent));
    std::thread::sleep(Duration::from_millis(500));
    let flood_start = Instant::now();
    let sent_before = sent.load(Ordering::Relaxed);
    // The well-behaved clients, meanwhile: Rust quiche (`vimanad call`)
    // in a loop, then Python aioquic.
    let (done, took) = real_handshakes(&node, Duration::from_secs(5));
    let r = &aioquic(&node, "example.com", json!([unary_call("during")]), false)[0];
    let metrics = scrape(&node);
    let flood_rate =
        (sent.load(Ordering::Relaxed) - sent_before) as f64 / flood_start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();

    assert_eq!(r["error"], serde_json::Value::Null, "{r}");
    assert_eq!(r["grpc_status"], 0, "aioquic's call during the flood: {r}");
    let refused = total(
        &metrics,
        "vimanad_quic_datagrams_dropped_total",
        "reason=\"source_handshake_limit\"",
    );
    assert!(
        refused > 0.0,
        "the flood met the per-source limit:\n{metrics}"
    );
    // One address holds at most its handshakes on each of the 2 shards:
    // the table (300 a shard) is never full.
    let open = total(&metrics, "vimanad_quic_handshakes_in_progress", "");
    assert!(open <= 2.0 * 32.0 + 4.0, "{open} handshakes in progress");
    assert_eq!(
        total(
            &metrics,
            "vimanad_quic_datagrams_dropped_total",
            "reason=\"connection_limit\""
        ),
        0.0,
        "the connection table never filled"
    );
    eprintln!(
        "abuse_quic: real clients completed {:.1} handshakes+calls/s during a flood of {:.0} Initials/s \
         from one address ({done} in {:.1} s; {refused} Initials refused), {:.1}/s without it",
        done as f64 / took.as_secs_f64(),
        flood_rate,
        took.as_secs_f64(),
        base_done as f64 / base_time.as_secs_f64(),
    );
    // A line per shard and burst (10 s), not per Initial: a few against
    // the hundreds of thousands refused (a loaded machine stretches the
    // flood over more bursts).
    let log = node.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("max-handshakes-per-source"))
        .count();
    assert!(
        (1..=12).contains(&lines),
        "{lines} log lines for the limit:\n{log}"
    );
}

#[tokio::test]
async fn half_open_connections_are_gone_after_the_handshake_deadline() {
    let node = Node::start_with(&[
        "--handshake-idle-timeout",
        "2s",
        "--handshake-timeout",
        "4s",
    ])
    .await;
    let s = raw("127.0.0.2");
    // 20 clients that send their Initial and nothing more.
    for seed in 0..20 {
        let mut c = client(seed, s.local_addr().unwrap(), node.listen);
        s.send_to(&next(&mut c).unwrap(), node.listen).unwrap();
    }
    // And one that keeps retransmitting (never reading the answers): idle
    // never, but past the handshake limit all the same.
    let chatty_stop = Arc::new(AtomicBool::new(false));
    let chatty = {
        let stop = Arc::clone(&chatty_stop);
        let server = node.listen;
        std::thread::spawn(move || {
            let s = raw("127.0.0.3");
            let mut c = client(99, s.local_addr().unwrap(), server);
            while !stop.load(Ordering::Relaxed) {
                while let Some(d) = next(&mut c) {
                    s.send_to(&d, server).unwrap();
                }
                std::thread::sleep(Duration::from_millis(250));
                c.on_timeout();
                if c.timeout().is_none_or(|t| t > Duration::from_millis(900)) {
                    // Keep it chatty: a probe at least every second.
                    let _ = c.send_ack_eliciting();
                }
            }
        })
    };
    let started = Instant::now();
    // Counted as begun (a counter: on a loaded machine the 2 s idle
    // deadline may pass before a scrape sees all 21 in progress at once).
    let open = wait_for(
        &node,
        "vimanad_quic_handshakes_total",
        "",
        Duration::from_secs(2),
        |v| v >= 21.0,
    );
    assert!(open >= 21.0, "every Initial opened a handshake: {open}");
    let silent_gone = wait_for(
        &node,
        "vimanad_quic_handshakes_in_progress",
        "",
        Duration::from_secs(8),
        |v| v <= 1.0,
    );
    let silent_after = started.elapsed();
    assert_eq!(
        silent_gone, 1.0,
        "the silent ones are gone, the chatty one is not yet"
    );
    let all_gone = wait_for(
        &node,
        "vimanad_quic_connections",
        "",
        Duration::from_secs(8),
        |v| v == 0.0,
    );
    let chatty_after = started.elapsed();
    chatty_stop.store(true, Ordering::Relaxed);
    chatty.join().unwrap();
    assert_eq!(all_gone, 0.0, "the chatty half-open connection is gone too");
    let metrics = scrape(&node);
    // 21, and more if the chatty client's retransmissions opened its
    // connection again after it was forgotten (they may: it is an Initial).
    let timeouts = total(&metrics, "vimanad_quic_handshake_timeouts_total", "");
    assert!(timeouts >= 21.0, "{timeouts}");
    assert_eq!(
        total(&metrics, "vimanad_quic_handshakes_completed_total", ""),
        0.0
    );
    // Well before the 30 s idle timeout (generous bounds, a loaded machine).
    assert!(silent_after < Duration::from_secs(10), "{silent_after:?}");
    assert!(
        chatty_after >= Duration::from_secs(3),
        "the chatty one lasted {chatty_after:?}"
    );
    eprintln!(
        "abuse_quic: silent half-open gone after {silent_after:?}, chatty after {chatty_after:?}"
    );
}

#[tokio::test]
async fn a_retry_token_is_refused_under_another_connection_id_or_port() {
    let node = Node::start_with(&["--retry-above", "0"]).await;
    let server = node.listen;
    let s = raw("127.0.0.2");
    let local = s.local_addr().unwrap();
    let mut c = client(7, local, server);
    s.send_to(&next(&mut c).unwrap(), server).unwrap();
    let mut retry = received(&s, Duration::from_millis(600))
        .into_iter()
        .find(|p| is_retry(p))
        .expect("a Retry for the first Initial");
    c.recv(
        &mut retry,
        quiche::RecvInfo {
            from: server,
            to: local,
        },
    )
    .unwrap();
    let with_token = next(&mut c).expect("the Initial with the token");
    let header = quiche::Header::from_slice(&mut with_token.clone(), 16).unwrap();
    assert!(header.token.as_ref().is_some_and(|t| !t.is_empty()));
    let dcid_at = 6; // first byte, version (4), DCID length (1)
    assert_eq!(with_token[5] as usize, header.dcid.len());

    // The token under another destination ID: refused, unanswered.
    let mut replayed = with_token.clone();
    replayed[dcid_at] ^= 0xff;
    s.send_to(&replayed, server).unwrap();
    assert!(
        received(&s, Duration::from_millis(600)).is_empty(),
        "answered a replayed token"
    );
    // From another port of the same address: refused too.
    let other = raw("127.0.0.2");
    other.send_to(&with_token, server).unwrap();
    assert!(
        received(&other, Duration::from_millis(600)).is_empty(),
        "answered a moved token"
    );
    let metrics = scrape(&node);
    assert_eq!(
        total(
            &metrics,
            "vimanad_quic_datagrams_dropped_total",
            "reason=\"invalid_token\""
        ),
        2.0
    );
    assert_eq!(total(&metrics, "vimanad_quic_handshakes_total", ""), 0.0);

    // The genuine one from the right port: the handshake goes on.
    s.send_to(&with_token, server).unwrap();
    let answers = received(&s, Duration::from_millis(600));
    assert!(
        !answers.is_empty(),
        "the validated client got its handshake: {}",
        scrape(&node)
            .lines()
            .filter(|l| l.starts_with("vimanad_quic"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for mut a in answers {
        let _ = c.recv(
            &mut a,
            quiche::RecvInfo {
                from: server,
                to: local,
            },
        );
    }
    handshake(&mut c, &s, server);
    assert!(c.is_established());
    // The node began exactly this one handshake (the replayed and the
    // moved token began none) and completed it.
    let metrics = scrape(&node);
    assert_eq!(total(&metrics, "vimanad_quic_handshakes_total", ""), 1.0);
    let completed = wait_for(
        &node,
        "vimanad_quic_handshakes_completed_total",
        "",
        Duration::from_secs(5),
        |v| v == 1.0,
    );
    assert_eq!(completed, 1.0, "the node's side of the handshake completed");
}

#[tokio::test]
async fn datagrams_under_1200_bytes_get_no_version_negotiation_or_retry() {
    let node = Node::start_with(&["--retry-above", "0"]).await;
    let server = node.listen;
    let s = raw("127.0.0.2");
    s.send_to(&unknown_version(1199), server).unwrap();
    assert!(
        received(&s, Duration::from_millis(500)).is_empty(),
        "VN for 1199 bytes"
    );
    s.send_to(&unknown_version(1200), server).unwrap();
    let vn = received(&s, Duration::from_millis(500));
    assert!(
        vn.len() == 1 && is_version_negotiation(&vn[0]),
        "VN for 1200 bytes: {vn:?}"
    );
    assert!(vn[0].len() < 1200);

    let mut c = client(1, s.local_addr().unwrap(), server);
    let initial = next(&mut c).unwrap();
    assert!(initial.len() >= 1200, "quiche pads its Initial");
    for cut in [1199, 1000, 200, 50] {
        s.send_to(&initial[..cut], server).unwrap();
    }
    assert!(
        received(&s, Duration::from_millis(500)).is_empty(),
        "Retry for a short Initial"
    );
    s.send_to(&initial, server).unwrap();
    let retry = received(&s, Duration::from_millis(500));
    assert!(
        retry.len() == 1 && is_retry(&retry[0]),
        "Retry for a full Initial: {retry:?}"
    );
    assert!(retry[0].len() < initial.len());
    let metrics = scrape(&node);
    assert_eq!(
        total(
            &metrics,
            "vimanad_quic_datagrams_dropped_total",
            "reason=\"too_small\""
        ),
        5.0
    );
    assert_eq!(
        total(&metrics, "vimanad_quic_version_negotiation_sent_total", ""),
        1.0
    );
    assert_eq!(total(&metrics, "vimanad_quic_retry_sent_total", ""), 1.0);
}

#[tokio::test]
async fn an_unknown_connection_id_gets_a_stateless_reset() {
    let mut node = Node::start().await;
    let server = node.listen;
    let s = raw("127.0.0.2");
    // A short-header packet for an ID the node never gave.
    let mut packet = vec![0x41];
    packet.extend_from_slice(&[0x5a; 20]);
    packet.resize(100, 0x33);
    s.send_to(&packet, server).unwrap();
    let got = received(&s, Duration::from_millis(500));
    assert_eq!(got.len(), 1, "one reset: {got:?}");
    let reset = &got[0];
    assert!(
        reset.len() < packet.len() && reset.len() >= 21,
        "{} bytes",
        reset.len()
    );
    assert_eq!(reset[0] & 0xc0, 0x40, "looks like a short header");
    // One that could itself be a minimal reset (21 bytes) gets nothing,
    // and neither does one too short for our IDs.
    s.send_to(&packet[..21], server).unwrap();
    s.send_to(&packet[..10], server).unwrap();
    assert!(received(&s, Duration::from_millis(500)).is_empty());

    // A real client whose connection died with the previous process is
    // told at once: the token it was given is the one the new process
    // derives (from the TLS key), on whichever shard.
    let mut c = client(5, s.local_addr().unwrap(), server);
    handshake(&mut c, &s, server);
    node.kill9();
    node.restart().await;
    c.send_ack_eliciting().unwrap();
    let local = s.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65_535];
    while !c.is_closed() && Instant::now() < deadline {
        while let Some(d) = next(&mut c) {
            s.send_to(&d, server).unwrap();
        }
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = c.recv(&mut buf[..n], quiche::RecvInfo { from, to: local });
        } else {
            c.on_timeout();
            let _ = c.send_ack_eliciting();
        }
    }
    assert!(c.is_closed(), "the client recognised the stateless reset");
    assert!(
        total(
            &scrape(&node),
            "vimanad_quic_stateless_resets_sent_total",
            ""
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_handshake_flood_from_many_sources_switches_retry_on() {
    let mut node = Node::start_with(&["--retry-handshakes-above", "16"]).await;
    node.running_pod("a", V1).await;
    let server = node.listen;
    // 8 sources, 8 silent handshakes each: past 16 in progress a shard
    // asks every new client for a Retry.
    let mut retries = 0;
    for source in 2..10 {
        let s = raw(&format!("127.0.0.{source}"));
        for seed in 0..8 {
            let mut c = client(source * 100 + seed, s.local_addr().unwrap(), server);
            s.send_to(&next(&mut c).unwrap(), server).unwrap();
        }
        retries += received(&s, Duration::from_millis(300))
            .iter()
            .filter(|p| is_retry(p))
            .count();
    }
    assert!(retries > 0, "no Retry under a flood of handshakes");
    // A real client follows the Retry and is served meanwhile.
    let r = &aioquic(
        &node,
        "example.com",
        json!([unary_call("validated")]),
        false,
    )[0];
    assert_eq!(r["grpc_status"], 0, "{r}");
    let (code, _, err) = vimanad_call(&node, "example.com", UNARY, &["--text", "x"]);
    assert_eq!(code, 0, "{err}");
    let metrics = scrape(&node);
    assert!(total(&metrics, "vimanad_quic_retry_sent_total", "") >= retries as f64);
    assert!(
        node.log().contains("handshake flood"),
        "logged once per burst"
    );
}
