//! HTTP/2 from the attacker's side: rapid reset, oversized headers, idle
//! and silent connections, clients that never read, against the real binary.

mod common;

use std::time::Duration;

use common::matrix::{echo, unary_call, UNARY, V1};
use common::peers::{node_cert, peer, run_script, start_for, tls_args, Transport};
use common::*;
use serde_json::json;
use vimana_example::pb;

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

const SERVER_STREAM: &str = "/vimana.example.v1.Echo/ServerStream";

#[tokio::test]
async fn clients_that_never_read_hold_bounded_memory_and_then_get_resource_exhausted() {
    // One shard, small budgets: 4 connections of 64 calls that never open
    // their window could make the component send 25 GB; each connection may
    // hold 2 MiB, the shard 6 MiB (above 4 MiB held, the shard gives the
    // memory back to the system once its buffers empty: limits.rs).
    const CONN_LIMIT: u64 = 2 << 20;
    const SHARD_LIMIT: u64 = 6 << 20;
    const GRACE_S: f64 = 1.0;
    let (conn_limit, shard_limit) = (CONN_LIMIT.to_string(), SHARD_LIMIT.to_string());
    let mut args = vec![
        "--max-streams",
        "64",
        "--conn-buffer-limit",
        &conn_limit,
        "--shard-buffer-limit",
        &shard_limit,
        "--buffer-grace",
        "1s",
    ];
    let tls = tls_args();
    args.extend(tls.iter().map(String::as_str));
    let mut node = Node::start_configured(1, "info", &args).await;
    node.running_pod("a", V1).await;
    let pid = node.process.id();
    // Warm: the pool's connection to the component and the first TLS session.
    well_behaved(&node, 20);
    let before = rss_kib(pid);

    // Each call asks for 100 MB of 256-byte messages; its window is 0 bytes.
    let flood = hex_of(&pb::StreamRequest {
        message: "s".repeat(256),
        count: 400_000,
        interval_ms: 0,
    });
    let (connections, streams) = (4usize, 64usize);
    let spec = json!({
        "connect": node.listen.to_string(), "authority": "example.com",
        "ca_cert": node_cert(&node).display().to_string(),
        "path": SERVER_STREAM, "message_hex": flood, "window": 0,
        "connections": connections, "streams": streams, "hold_s": 4,
    });
    let abuser = std::thread::spawn(move || run_script("tests/peers/h2_stall.py", &spec));
    // Beside the abuser: unary calls and a whole stream, read as they come.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut peak = rss_kib(pid);
    let buffered = metric(&node, "vimanad_call_buffered_bytes");
    well_behaved(&node, 20);
    let stream = hex_of(&pb::StreamRequest {
        message: "w".repeat(1024),
        count: 2_000,
        interval_ms: 0,
    });
    let calls = json!([{ "path": SERVER_STREAM, "messages_hex": [stream] }]);
    let r = &peer(Transport::H2, &node, "example.com", calls, false)[0];
    assert_eq!(r["grpc_status"], 0, "a reading client's stream: {r}");
    assert_eq!(r["messages_hex"].as_array().unwrap().len(), 2_000);
    peak = peak.max(rss_kib(pid));

    let result = abuser.join().unwrap();
    let calls = result["calls"].as_array().unwrap();
    assert_eq!(calls.len(), connections * streams, "{}", result["errors"]);
    let exhausted = calls.iter().filter(|c| c["grpc_status"] == 8).count();
    let summary = |c: &serde_json::Value| {
        let end = (&c["grpc_status"], &c["reset_code"], &c["partial_bytes"]);
        format!("status {} reset {} bytes {}", end.0, end.1, end.2)
    };

    let mut kinds = std::collections::BTreeMap::new();
    for c in calls {
        *kinds.entry(summary(c)).or_insert(0) += 1;
    }
    eprintln!("never-reading calls: {kinds:?}");
    for c in calls {
        // While a budget is spent, calls end with RESOURCE_EXHAUSTED after
        // the grace period (nothing of a message went through a closed
        // window), or are reset. Once it no longer is, the calls left hold
        // what their budget allows until the client leaves.
        if c["ended_after_s"].is_null() {
            assert!(
                c["grpc_status"].is_null() && c["reset_code"].is_null(),
                "{c}"
            );
            continue;
        }
        let status = &c["grpc_status"];
        assert!(
            (*status == 8 && c["partial_bytes"] == 0) || !c["reset_code"].is_null(),
            "{c}"
        );
        let ended = c["ended_after_s"].as_f64().unwrap();
        assert!(ended >= GRACE_S * 0.9, "not before the grace period: {c}");
    }
    let counted = metric(
        &node,
        "vimanad_call_limit_hits_total{limit=\"buffer_budget\"",
    );
    // The abuser left: what it held is given back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = rss_kib(pid);
    let held_after = metric(&node, "vimanad_call_buffered_bytes");
    eprintln!(
        "never-reading calls: {} ({exhausted} RESOURCE_EXHAUSTED, {counted} counted); \
         vimanad RSS {before} KiB before, peak {peak} KiB, {after} KiB after; \
         {buffered} bytes buffered during, {held_after} after",
        calls.len()
    );
    assert!(
        exhausted >= calls.len() / 4,
        "calls ended for their budget: {exhausted}"
    );
    assert!(counted >= exhausted as f64, "and counted: {counted}");
    // At most every connection's budget (the shard's is enforced by ending
    // calls), beside the per-stream state of TLS and HTTP/2.
    let budget_kib = (connections as u64 * CONN_LIMIT) / 1024;
    let per_stream_state_kib = (connections * streams) as u64 * 32;
    assert!(
        peak.saturating_sub(before) < budget_kib + per_stream_state_kib + 16 * 1024,
        "RSS grew by {} KiB; the budget is {budget_kib} KiB",
        peak - before
    );
    assert!(
        buffered <= (connections as u64 * CONN_LIMIT) as f64,
        "{buffered} bytes held"
    );
    assert_eq!(held_after, 0.0, "nothing stays buffered");
    assert!(
        after <= before + budget_kib / 2,
        "RSS back down after the abuser left: {before} KiB before, {after} KiB after"
    );
}

/// `n` unary calls over grpcio, one connection: every one served.
fn well_behaved(node: &Node, n: usize) {
    let calls: Vec<_> = (0..n).map(|i| unary_call(&format!("ok {i}"))).collect();
    for r in peer(Transport::H2, node, "example.com", json!(calls), false) {
        assert_eq!(r["grpc_status"], 0, "a well-behaved call: {r}");
    }
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
