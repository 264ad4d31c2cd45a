//! Abuse of streams and calls, against the real binary, with Python
//! aioquic (tests/peers/) as both the abusive and the well-behaved client:
//! each abuse gets its defined outcome (clients that stop reading, rapid
//! reset, oversized headers, silent calls, a component saturated by its
//! callers), and the node keeps serving everyone else meanwhile.

mod common;

use common::*;
use serde_json::json;
use vimana_example::pb;

const V1: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
const UNARY: &str = "/vimana.example.v1.Echo/Unary";
const SERVER_STREAM: &str = "/vimana.example.v1.Echo/ServerStream";
const CLIENT_STREAM: &str = "/vimana.example.v1.Echo/ClientStream";

fn echo(message: &str) -> String {
    hex_of(&pb::EchoRequest {
        message: message.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_deadline_ends_a_call_on_a_message_boundary_before_or_during_its_stream() {
    let mut node = Node::start().await;
    node.running_pod("a", V1).await;

    // Before the response headers: the component sleeps past it.
    let slow = hex_of(&pb::EchoRequest {
        sleep_ms: 10_000,
        ..Default::default()
    });
    let call =
        json!([{ "path": UNARY, "messages_hex": [slow], "headers": [["grpc-timeout", "200m"]] }]);
    let r = &aioquic(&node, "example.com", call, false)[0];
    assert_eq!(r["grpc_status"], 4, "{r}");
    assert_eq!(r["error"], serde_json::Value::Null, "{r}");
    assert!(r["elapsed_ms"].as_f64().unwrap() < 5_000.0, "{r}");

    // In the middle of a stream of 1 KiB messages as fast as the component
    // sends them: every message the client gets is whole, and the status
    // follows (before the fix, 9 runs of 10 ended inside a message).
    let stream = hex_of(&pb::StreamRequest {
        message: "m".repeat(1024),
        count: 1_000_000,
        interval_ms: 0,
    });
    let calls: Vec<_> = (0..10)
        .map(|_| json!({ "path": SERVER_STREAM, "messages_hex": [stream], "headers": [["grpc-timeout", "300m"]] }))
        .collect();
    let results = aioquic(&node, "example.com", json!(calls), true);
    for r in &results {
        assert_eq!(
            r["error"],
            serde_json::Value::Null,
            "whole messages only: {r:.300}"
        );
        assert_eq!(r["grpc_status"], 4, "{}", r["trailers"]);
        let got = r["messages_hex"].as_array().unwrap().len();
        assert!(
            got > 0,
            "the deadline fell inside the stream: {}",
            r["trailers"]
        );
        for message in replies(r) {
            assert_eq!(message.message.len(), 1024);
        }
    }
}

#[tokio::test]
async fn a_call_without_a_deadline_ends_when_nothing_moves_for_the_idle_timeout() {
    let mut node = Node::start_with(&["--call-idle-timeout", "1s"]).await;
    node.running_pod("a", V1).await;
    // One message, then the client neither sends nor ends its request.
    let silent = json!({ "path": CLIENT_STREAM, "messages_hex": [echo("a")], "half_close": false });
    // Six messages 300 ms apart: never a second of silence.
    let chatty = json!({
        "path": CLIENT_STREAM,
        "messages_hex": (0..6).map(|i| echo(&i.to_string())).collect::<Vec<_>>(),
        "send_interval_ms": 300,
    });
    let results = aioquic(&node, "example.com", json!([silent, chatty]), true);
    let (silent, chatty) = (&results[0], &results[1]);
    assert_eq!(silent["grpc_status"], 4, "{silent}");
    assert!(
        silent["grpc_message"]
            .as_str()
            .unwrap()
            .contains("no bytes moved"),
        "{silent}"
    );
    let elapsed = silent["elapsed_ms"].as_f64().unwrap();
    assert!(
        (900.0..4_000.0).contains(&elapsed),
        "ended by the 1 s idle timeout: {elapsed} ms"
    );
    assert_eq!(
        chatty["grpc_status"], 0,
        "a call that keeps moving: {chatty}"
    );
}

// ---- the abusive peer, the well-behaved one, and what the node reports ----

/// Runs the abusive aioquic peer (tests/peers/aioquic_abuse.py) with `spec`
/// (its mode and options) against the node.
fn abuse(node: &Node, spec: serde_json::Value) -> serde_json::Value {
    abuse_at(node.listen, spec)
}

/// [`abuse`] for a node known by its address only (from another thread).
fn abuse_at(listen: std::net::SocketAddr, spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["connect"] = json!(listen.to_string());
    spec["authority"] = json!("example.com");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/aioquic_abuse.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("python3 with aioquic (scripts/setup.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "abusive peer failed");
    serde_json::from_slice(&out.stdout).expect("the abusive peer prints JSON")
}

/// A well-behaved client: `n` unary calls one after another on one
/// connection. Returns the 99th percentile of their latencies (ms), after
/// checking every one succeeded.
fn well_behaved_p99(listen: std::net::SocketAddr, authority: &str, n: usize) -> f64 {
    let calls: Vec<_> = (0..n)
        .map(|i| json!({ "path": UNARY, "messages_hex": [echo(&format!("ok {i}"))] }))
        .collect();
    let results = aioquic_at(listen, authority, json!(calls), false);
    let mut ms: Vec<f64> = results
        .iter()
        .map(|r| {
            assert_eq!(r["grpc_status"], 0, "a well-behaved call: {r}");
            r["elapsed_ms"].as_f64().unwrap()
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    ms[(ms.len() * 99 / 100).min(ms.len() - 1)]
}

/// [`aioquic`] for a node known by its address only (from another thread).
fn aioquic_at(
    listen: std::net::SocketAddr,
    authority: &str,
    calls: serde_json::Value,
    concurrent: bool,
) -> Vec<serde_json::Value> {
    let spec = json!({
        "connect": listen.to_string(), "authority": authority, "calls": calls,
        "concurrent": concurrent, "timeout_s": 60,
    });
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/aioquic_grpc.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    result["calls"].as_array().unwrap().clone()
}

#[tokio::test]
async fn oversized_headers_refuse_that_request_and_keep_the_connection() {
    let mut node = Node::start().await;
    node.running_pod("a", V1).await;
    let huge = "h".repeat(20 * 1024);
    let calls = json!([
        { "path": UNARY, "messages_hex": [echo("x")], "headers": [["x-huge", huge]] },
        { "path": UNARY, "messages_hex": [echo("fine")] },
    ]);
    // One connection, one call after the other.
    let results = aioquic(&node, "example.com", calls, false);
    assert_eq!(results[0]["grpc_status"], 8, "{}", results[0]);
    assert!(
        results[0]["grpc_message"]
            .as_str()
            .unwrap()
            .contains("header section"),
        "{}",
        results[0]
    );
    assert_eq!(
        results[1]["error"],
        serde_json::Value::Null,
        "the connection goes on: {}",
        results[1]
    );
    assert_eq!(replies(&results[1])[0].message, "fine");
    assert_eq!(
        metric(
            &node,
            "vimanad_call_limit_hits_total{limit=\"header_section\""
        ),
        1.0
    );
}

#[tokio::test]
async fn a_client_resetting_streams_faster_than_its_budget_is_disconnected() {
    // One shard: the abuser and the well-behaved client share it. Defaults
    // otherwise (--reset-rate 100).
    let mut node = Node::start_configured(1, "info", &[]).await;
    let pod = node.running_pod("a", V1).await;
    let listen = node.listen;
    let baseline = well_behaved_p99(listen, "example.com", 100);

    let meanwhile = std::thread::spawn(move || well_behaved_p99(listen, "example.com", 100));
    // Every call would sleep 5 s in the component: each one that reaches it
    // logs its cancellation.
    let sleepy = hex_of(&pb::EchoRequest {
        sleep_ms: 5_000,
        ..Default::default()
    });
    let r = abuse(
        &node,
        json!({ "mode": "rapid_reset", "path": UNARY, "message_hex": sleepy, "duration_s": 5 }),
    );
    eprintln!(
        "early resets {}, floods {}, dropped {}",
        metric(&node, "vimanad_call_limit_hits_total{limit=\"early_reset\""),
        metric(&node, "vimanad_call_limit_hits_total{limit=\"reset_flood\""),
        metric(
            &node,
            "vimanad_call_limit_hits_total{limit=\"dropped_before_upstream\""
        ),
    );
    let during = meanwhile.join().unwrap();
    eprintln!("rapid reset: {r}; well-behaved p99 {baseline:.2} ms alone, {during:.2} ms beside the abuser");
    assert_eq!(r["close_code"], 0x107, "closed with H3_EXCESSIVE_LOAD: {r}");

    assert!(
        r["closed_after_s"].as_f64().unwrap() < 3.0,
        "closed at once: {r}"
    );

    let early = metric(&node, "vimanad_call_limit_hits_total{limit=\"early_reset\"");
    assert!(early > 100.0, "{early} early resets counted");
    assert_eq!(
        metric(&node, "vimanad_call_limit_hits_total{limit=\"reset_flood\""),
        1.0
    );
    // Served beside the abuser: a p99 of the same order as alone (a loaded
    // CI machine moves both; 100 ms floor).
    assert!(
        during < (baseline * 5.0).max(100.0),
        "the well-behaved client was served beside the abuser (p99 {during} ms, {baseline:.2} ms alone)"
    );
    let _ = pod;
}

#[tokio::test]
async fn clients_that_stop_reading_hold_bounded_memory_and_then_get_resource_exhausted() {
    // One shard, small budgets: 64 streams per connection and 1 MiB per
    // connection make a 16 KiB HTTP/2 window per call; 4 stalled
    // connections could fill 4 MiB, four times the shard's 1 MiB. (What
    // they fill depends on how much the client took before it stalled: on
    // a quiet machine 1.8 MB, under the 2 MiB this test once used.)
    const CONN_LIMIT: u64 = 1 << 20;
    const SHARD_LIMIT: u64 = 1 << 20;
    let mut node = Node::start_configured(
        1,
        "info",
        &[
            "--max-streams",
            "64",
            "--conn-buffer-limit",
            &CONN_LIMIT.to_string(),
            "--shard-buffer-limit",
            &SHARD_LIMIT.to_string(),
            "--buffer-grace",
            "1s",
        ],
    )
    .await;
    node.running_pod("a", V1).await;
    let pid = node.process.id();
    let listen = node.listen;
    let baseline = well_behaved_p99(listen, "example.com", 100);
    let before = rss_kib(pid);

    // Each call asks for 100 MB of 1 KiB messages.
    let flood = hex_of(&pb::StreamRequest {
        message: "s".repeat(1024),
        count: 100_000,
        interval_ms: 0,
    });
    let connections = 4;
    let spec = json!({
        "mode": "stall", "path": SERVER_STREAM, "message_hex": flood,
        "connections": connections, "streams": 64, "hold_s": 3, "read_after": true, "drain_s": 4,
    });
    let abuser = std::thread::spawn(move || abuse_at(listen, spec));
    // The well-behaved client meanwhile: unary calls, and a whole stream.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut peak = rss_kib(pid);
    let during = well_behaved_p99(listen, "example.com", 100);
    let stream = hex_of(&pb::StreamRequest {
        message: "w".repeat(1024),
        count: 2_000,
        interval_ms: 0,
    });
    let r = &aioquic_at(
        listen,
        "example.com",
        json!([{ "path": SERVER_STREAM, "messages_hex": [stream] }]),
        false,
    )[0];
    assert_eq!(
        r["grpc_status"], 0,
        "a reading client's stream: {}",
        r["trailers"]
    );
    assert_eq!(r["messages_hex"].as_array().unwrap().len(), 2_000);
    peak = peak.max(rss_kib(pid));
    let buffered = metric(&node, "vimanad_call_buffered_bytes");

    let result = abuser.join().unwrap();
    let calls = result["calls"].as_array().unwrap();
    assert_eq!(calls.len(), connections * 64, "{}", result["errors"]);
    let exhausted = calls.iter().filter(|c| c["grpc_status"] == 8).count();
    let reset = calls.iter().filter(|c| !c["reset_code"].is_null()).count();
    let served = calls
        .iter()
        .filter(|c| c["grpc_status"].is_null() && c["reset_code"].is_null())
        .filter(|c| c["served_again"] == true)
        .count();
    let unanswered = calls.len() - exhausted - reset - served;
    for c in calls {
        // A stalled call ends with RESOURCE_EXHAUSTED after whole messages
        // only, or (when the cut fell inside a message already sent) with
        // a reset; none with any other status. The calls the node did not
        // need to end (the budget was back under its limit) stream on.
        assert!(
            c["grpc_status"].is_null() || (c["grpc_status"] == 8 && c["partial_bytes"] == 0),
            "{c}"
        );
        assert!(c["error"].is_null(), "no connection closed: {c}");
    }
    let killed = metric(
        &node,
        "vimanad_call_limit_hits_total{limit=\"buffer_budget\"",
    );
    // The abusers left: memory goes back.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let after = rss_kib(pid);
    let held_after = metric(&node, "vimanad_call_buffered_bytes");
    eprintln!(
        "stalled calls: {} ({exhausted} RESOURCE_EXHAUSTED, {reset} reset, {killed} ended by the node; \
         {served} served again once their client read, {unanswered} with nothing yet); vimanad RSS {before} KiB before, peak {peak} KiB, {after} KiB after; \
         {buffered} bytes buffered during, {held_after} after; well-behaved p99 {baseline:.2} ms alone, {during:.2} ms beside the abusers",
        calls.len()
    );
    assert!(
        exhausted > 0 && killed >= (exhausted + reset) as f64,
        "calls ended for their budget"
    );
    // Once their client reads again, most calls hear from the node
    // (before the write order went round, the streams first in a fixed
    // order took all of quiche's capacity and most heard nothing at all).
    assert!(
        unanswered * 4 <= calls.len(),
        "{unanswered} of {} calls heard nothing once their client read again",
        calls.len()
    );
    // By construction the calls hold at most their windows: every
    // connection at most its budget (the shard's is enforced by ending
    // calls). Allow the per-stream state of QUIC and HTTP/2 beside it
    // (the calls asked for 25 GB).
    let budget_kib = (connections as u64 * CONN_LIMIT) / 1024;
    let per_stream_state_kib = (connections * 64) as u64 * 32;
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
        after < before + budget_kib + 8 * 1024,
        "RSS back near its baseline: {before} KiB before, {after} KiB after"
    );
}

#[tokio::test]
async fn a_saturated_component_queues_and_refuses_only_its_own_calls() {
    // One shard: both components' calls go through the same upstream pool.
    // Each upstream queues at most 2 calls, for at most 1 s.
    let mut node = Node::start_configured(
        1,
        "info",
        &["--upstream-queue", "2", "--upstream-wait", "1s"],
    )
    .await;
    // The slow component serves 2 streams at once (its HTTP/2 SETTINGS).
    let slow = node
        .run_pod("slow", ("slow.example.com", SERVICE, "1.0.0"))
        .await;
    node.create(&slow, "component", &[("EXAMPLE_MAX_STREAMS", "2")])
        .await
        .unwrap();
    node.start_container(&slow).await.unwrap();
    node.running_pod("fast", V1).await;
    let listen = node.listen;
    let baseline = well_behaved_p99(listen, "example.com", 50);
    // One call first: the shard's HTTP/2 connection to the slow component
    // is open and its SETTINGS (the stream limit) known. (Calls that come
    // while it is still being opened are not held to a limit not yet
    // known: h2 queues them itself.)
    well_behaved_p99(listen, "slow.example.com", 1);

    // 8 calls at once to the slow one, each 3 s long: 2 are served, 2 wait
    // in its queue past the 1 s wait, 4 find the queue full.
    let sleepy = hex_of(&pb::EchoRequest {
        sleep_ms: 3_000,
        ..Default::default()
    });
    let calls: Vec<_> = (0..8)
        .map(|_| json!({ "path": UNARY, "messages_hex": [sleepy] }))
        .collect();
    let saturating =
        std::thread::spawn(move || aioquic_at(listen, "slow.example.com", json!(calls), true));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // Meanwhile the other component on the same shard.
    let during = well_behaved_p99(listen, "example.com", 50);
    let results = saturating.join().unwrap();

    let status = |code: u64| {
        results
            .iter()
            .filter(|r| r["grpc_status"] == code)
            .collect::<Vec<_>>()
    };
    let (served, unavailable) = (status(0), status(14));
    let queue_full: Vec<_> = unavailable
        .iter()
        .filter(|r| {
            r["grpc_message"]
                .as_str()
                .unwrap_or("")
                .contains("concurrent streams")
        })
        .collect();
    let waited: Vec<_> = unavailable
        .iter()
        .filter(|r| {
            r["grpc_message"]
                .as_str()
                .unwrap_or("")
                .contains("no stream to the component within")
        })
        .collect();
    eprintln!(
        "slow component: {} served, {} refused (queue full), {} past the wait; \
         the other component's p99 {baseline:.2} ms alone, {during:.2} ms beside",
        served.len(),
        queue_full.len(),
        waited.len()
    );
    assert_eq!(served.len(), 2, "its stream limit: {results:?}");
    assert_eq!(queue_full.len(), 4, "the queue holds 2: {results:?}");
    assert_eq!(waited.len(), 2, "the queued calls wait 1 s: {results:?}");
    for r in &waited {
        assert!(r["elapsed_ms"].as_f64().unwrap() >= 900.0, "{r}");
    }
    assert_eq!(
        metric(
            &node,
            "vimanad_call_limit_hits_total{limit=\"upstream_queue_full\""
        ),
        4.0
    );
    assert_eq!(
        metric(
            &node,
            "vimanad_call_limit_hits_total{limit=\"upstream_wait\""
        ),
        2.0
    );
    // The other component is served as usual meanwhile (every call
    // succeeded, or well_behaved_p99 fails).
    assert!(
        during < 100f64.max(3.0 * baseline),
        "the other component's p99 {during:.2} ms beside the saturated one ({baseline:.2} ms alone)"
    );
}
