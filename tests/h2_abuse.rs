//! HTTP/2 from the attacker's side: rapid reset, oversized headers, idle
//! and silent connections, against the real binary.

mod common;

use common::matrix::{echo, unary_call, UNARY, V1};
use common::peers::{peer, run_script, start_for, Transport};
use common::*;
use serde_json::json;

fn raw(node: &Node, spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["connect"] = node.listen.to_string().into();
    spec["authority"] = "example.com".into();
    run_script("tests/peers/h2_raw.py", &spec)
}

/// GOAWAY's ENHANCE_YOUR_CALM code (RFC 9113 §7).
const ENHANCE_YOUR_CALM: u64 = 0xb;

#[tokio::test]
async fn rapid_reset_ends_the_connection_and_reaches_no_component() {
    let mut node = start_for(Transport::H2, &[]).await;
    node.running_pod("a", V1).await;
    let r = raw(&node, json!({ "mode": "rapid_reset", "count": 2000 }));
    assert_eq!(r["error"], serde_json::Value::Null, "{r}");
    assert_eq!(r["goaway_code"], ENHANCE_YOUR_CALM, "{r}");
    assert!(r["closed_after_s"].as_f64().is_some(), "closed: {r}");
    // No call of the flood ran: the component's call counters are empty.
    let metrics = http_get(node.metrics_addr(), "/metrics");
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("vimanad_grpc_calls_total") && !l.ends_with(" 0")),
        "a reset call was served:\n{metrics}"
    );
    let refused: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("vimanad_tcp_connections_total") && l.contains("event=\"goaway_abuse\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refused, 1.0, "the node counted the abuse:\n{metrics}");
    // The node serves the next client.
    let r = &peer(
        Transport::H2,
        &node,
        "example.com",
        json!([unary_call("after")]),
        false,
    )[0];
    assert_eq!(replies(r)[0].message, "after", "{r}");
}

#[tokio::test]
async fn oversized_headers_refuse_that_request_and_keep_the_connection() {
    let mut node = start_for(Transport::H2, &[]).await;
    node.running_pod("a", V1).await;
    let huge = "h".repeat(32 * 1024);
    // One channel, one connection: the big call, then a normal one.
    let calls = json!([
        { "path": UNARY, "messages_hex": [echo("x")], "headers": [["x-huge", huge]] },
        unary_call("fine"),
    ]);
    let r = peer(Transport::H2, &node, "example.com", calls, false);
    assert_ne!(
        r[0]["grpc_status"], 0,
        "a 32 KiB header list is refused: {}",
        r[0]
    );
    assert_eq!(replies(&r[1])[0].message, "fine", "{}", r[1]);
    let metrics = http_get(node.metrics_addr(), "/metrics");
    let accepted = metrics
        .lines()
        .filter(|l| {
            l.starts_with("vimanad_tcp_connections_total") && l.contains("event=\"accepted\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(accepted, 1.0, "both calls on one connection:\n{metrics}");
}

#[tokio::test]
async fn idle_and_silent_connections_are_closed() {
    let node = start_for(
        Transport::H2,
        &["--idle-timeout", "1s", "--tcp-handshake-timeout", "1s"],
    )
    .await;
    // Many idle HTTP/2 connections at once: each gets GOAWAY, then closes.
    let idle: Vec<_> = (0..20)
        .map(|_| {
            let spec = json!({ "mode": "idle", "wait_s": 8,
                               "connect": node.listen.to_string(), "authority": "example.com" });
            std::thread::spawn(move || run_script("tests/peers/h2_raw.py", &spec))
        })
        .collect();
    let silent = raw(&node, json!({ "mode": "silent", "wait_s": 8 }));
    for r in idle {
        let r = r.join().unwrap();
        assert_eq!(r["error"], serde_json::Value::Null, "{r}");
        assert_eq!(r["goaway_code"], 0, "GOAWAY NO_ERROR: {r}");
        let after = r["closed_after_s"].as_f64().unwrap();
        assert!(
            (0.9..6.0).contains(&after),
            "closed by the idle timeout: {r}"
        );
    }
    assert_eq!(silent["error"], serde_json::Value::Null, "{silent}");
    let after = silent["closed_after_s"].as_f64().unwrap();
    assert!(
        (0.9..6.0).contains(&after),
        "closed by the handshake timeout: {silent}"
    );
}

/// A plain HTTP/1.1 GET; the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(out)
}
