//! The data plane end to end: HTTP/3 clients (aioquic, which nobody here
//! wrote, and `vimanad call`) → vimanad's shards → example components
//! started over CRI.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1 as cri;
use serde_json::json;
use vimana_example::pb;

const V1: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
const V2: (&str, &str, &str) = ("example.com", SERVICE, "2.0.0");
const UNARY: &str = "/vimana.example.v1.Echo/Unary";

fn echo(message: &str) -> String {
    hex_of(&pb::EchoRequest {
        message: message.into(),
        ..Default::default()
    })
}

fn unary_call(message: &str) -> serde_json::Value {
    json!({ "path": UNARY, "messages_hex": [echo(message)] })
}

#[tokio::test]
async fn all_four_call_kinds_through_aioquic() {
    let mut node = Node::start().await;
    let pod = node.running_pod("a", V1).await;
    let stream_req = hex_of(&pb::StreamRequest {
        message: "s".into(),
        count: 3,
        interval_ms: 10,
    });
    let three: Vec<String> = ["x", "y", "z"].iter().map(|m| echo(m)).collect();
    let calls = json!([
        { "path": UNARY, "messages_hex": [echo("one")],
          "headers": [["x-color", "blue"], ["x-echo-trailer", "t1"]] },
        { "path": "/vimana.example.v1.Echo/ServerStream", "messages_hex": [stream_req] },
        { "path": "/vimana.example.v1.Echo/ClientStream", "messages_hex": three, "send_interval_ms": 20 },
        { "path": "/vimana.example.v1.Echo/Bidi", "messages_hex": three, "send_interval_ms": 20 },
    ]);
    let results = aioquic(&node, "example.com:443", calls, true);
    for r in &results {
        assert_eq!(r["error"], serde_json::Value::Null, "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["grpc_status"], 0, "{r}");
        assert_eq!(
            header(r, "headers", "content-type"),
            Some("application/grpc")
        );
    }
    let unary = replies(&results[0]);
    assert_eq!(unary.len(), 1);
    assert_eq!(unary[0].message, "one");
    assert_eq!(unary[0].served_by, pod);
    assert_eq!(
        unary[0].metadata["x-color"], "blue",
        "request metadata reaches the component"
    );
    assert_eq!(
        header(&results[0], "trailers", "x-echo-trailer"),
        Some("t1"),
        "custom trailers come back"
    );

    let streamed = replies(&results[1]);
    assert_eq!(
        streamed.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let gathered = replies(&results[2]);
    assert_eq!(gathered.len(), 1);
    assert_eq!(gathered[0].message, "xyz");
    let bidi = replies(&results[3]);
    assert_eq!(
        bidi.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(),
        vec!["x", "y", "z"]
    );
}

#[tokio::test]
async fn every_error_is_a_grpc_status() {
    let mut node = Node::start_with(&["--max-message-size", "1024"]).await;
    node.running_pod("a", V1).await;
    let idle = node
        .run_pod("idle", ("example.org", SERVICE, "1.0.0"))
        .await;
    node.create(&idle, "c", &[]).await.unwrap();

    let big = hex_of(&pb::EchoRequest {
        payload: vec![7; 4096],
        ..Default::default()
    });
    let failing = hex_of(&pb::EchoRequest {
        fail_code: 5,
        fail_message: "no such thing".into(),
        ..Default::default()
    });
    let cases = [
        (
            "nowhere.net",
            json!({ "path": UNARY, "messages_hex": [echo("x")] }),
            12,
            "nowhere.net",
        ),
        (
            "example.com",
            json!({ "path": "/other.Svc/Call", "messages_hex": [] }),
            12,
            "other.Svc",
        ),
        (
            "example.com",
            json!({ "path": UNARY, "messages_hex": [echo("x")], "headers": [["vimana-version", "9.9.9"]] }),
            12,
            "9.9.9",
        ),
        (
            "example.org",
            json!({ "path": UNARY, "messages_hex": [echo("x")] }),
            14,
            "no running container",
        ),
        (
            "example.com",
            json!({ "path": UNARY, "messages_hex": [big] }),
            8,
            "4",
        ),
        (
            "example.com",
            json!({ "path": UNARY, "messages_hex": [failing] }),
            5,
            "no such thing",
        ),
        (
            "example.com",
            json!({ "path": "/no-slash", "messages_hex": [] }),
            12,
            "malformed",
        ),
    ];
    for (authority, call, code, needle) in cases {
        let r = &aioquic(&node, authority, json!([call]), false)[0];
        assert_eq!(r["error"], serde_json::Value::Null, "{r}");
        assert_eq!(r["grpc_status"], code, "{authority} {r}");
        assert!(
            r["grpc_message"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{needle}: {r}"
        );
    }
    // Not gRPC at all: an HTTP status.
    let get =
        json!([{ "path": "/", "method": "GET", "content_type": "text/plain", "messages_hex": [] }]);
    assert_eq!(aioquic(&node, "example.com", get, false)[0]["status"], 415);
    // The node kept serving through all of it.
    let r = &aioquic(
        &node,
        "example.com",
        json!([unary_call("still here")]),
        false,
    )[0];
    assert_eq!(replies(r)[0].message, "still here");
}

#[tokio::test]
async fn deadlines_and_cancellation_reach_the_component() {
    let mut node = Node::start().await;
    let pod = node.running_pod("a", V1).await;
    let slow = hex_of(&pb::EchoRequest {
        sleep_ms: 10_000,
        ..Default::default()
    });

    let call =
        json!([{ "path": UNARY, "messages_hex": [slow], "headers": [["grpc-timeout", "200m"]] }]);
    let r = &aioquic(&node, "example.com", call, false)[0];
    assert_eq!(r["grpc_status"], 4, "{r}");
    let elapsed = r["elapsed_ms"].as_f64().unwrap();
    assert!(
        elapsed < 5_000.0,
        "answered at the deadline, not after the 10 s sleep: {r}"
    );

    let call = json!([{ "path": UNARY, "messages_hex": [slow], "cancel_after_ms": 200 }]);
    aioquic(&node, "example.com", call, false);
    let log = node
        .container_status(&pod)
        .await
        .unwrap()
        .status
        .unwrap()
        .log_path;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.matches("call cancelled during sleep").count() >= 2 {
            break; // once for the deadline, once for the client's reset
        }
        assert!(
            Instant::now() < deadline,
            "the component never saw the cancellations:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn versions_route_by_header_or_newest() {
    let mut node = Node::start().await;
    let old = node.running_pod("old", V1).await;
    let new = node.running_pod("new", V2).await;
    let calls = json!([
        unary_call("default"),
        { "path": UNARY, "messages_hex": [echo("pinned")], "headers": [["vimana-version", "1.0.0"]] },
        { "path": UNARY, "messages_hex": [echo("pinned2")], "headers": [["vimana-version", "2.0.0"]] },
    ]);
    let r = aioquic(&node, "example.com", calls, true);
    assert_eq!(
        replies(&r[0])[0].served_by,
        new,
        "newest running version by default"
    );
    assert_eq!(replies(&r[1])[0].served_by, old);
    assert_eq!(replies(&r[2])[0].served_by, new);
    // The newest stops: the default falls back to the newest still running.
    node.stop_container(&new, 5).await.unwrap();
    let r = aioquic(&node, "example.com", json!([unary_call("after")]), false);
    assert_eq!(replies(&r[0])[0].served_by, old);
}

#[tokio::test]
async fn calls_are_balanced_over_the_containers_of_a_component() {
    let mut node = Node::start().await;
    let mut pods = Vec::new();
    for name in ["a", "b", "c"] {
        pods.push(node.running_pod(name, V1).await);
    }
    let slowish = hex_of(&pb::EchoRequest {
        sleep_ms: 50,
        ..Default::default()
    });
    let calls: Vec<_> = (0..30)
        .map(|_| json!({ "path": UNARY, "messages_hex": [slowish] }))
        .collect();
    let results = aioquic(&node, "example.com", json!(calls), true);
    let mut served: std::collections::HashMap<String, usize> = Default::default();
    for r in &results {
        assert_eq!(r["grpc_status"], 0, "{r}");
        *served.entry(replies(r)[0].served_by.clone()).or_default() += 1;
    }
    for pod in &pods {
        assert!(
            served.get(pod).copied().unwrap_or(0) >= 5,
            "{pod} took too few: {served:?}"
        );
    }
}

#[tokio::test]
async fn a_pod_that_stops_while_clients_keep_calling() {
    let mut node = Node::start().await;
    let pod = node.running_pod("a", V1).await;
    let listen = node.listen;
    let hammer = std::thread::spawn(move || {
        let mut codes = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            let out = std::process::Command::new(vimanad())
                .args([
                    "call",
                    "--connect",
                    &listen.to_string(),
                    "https://example.com/vimana.example.v1.Echo/Unary",
                ])
                .args(["--text", "x", "--timeout", "5s"])
                .output()
                .unwrap();
            codes.push(out.status.code().unwrap());
        }
        codes
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.stop_container(&pod, 5).await.unwrap();
    // Out of routing once StopContainer returned: UNAVAILABLE, at once.
    let r = &aioquic(&node, "example.com", json!([unary_call("late")]), false)[0];
    assert_eq!(r["grpc_status"], 14, "{r}");
    let codes = hammer.join().unwrap();
    assert!(
        codes.first() == Some(&0),
        "served before the stop: {codes:?}"
    );
    assert!(
        codes.last() == Some(&14),
        "unavailable after the stop: {codes:?}"
    );
    assert!(
        codes.iter().all(|c| *c == 0 || *c == 14),
        "only OK or UNAVAILABLE, never a hang: {codes:?}"
    );
    node.start_container(&pod).await.unwrap();
    let r = &aioquic(&node, "example.com", json!([unary_call("back")]), false)[0];
    assert_eq!(replies(r)[0].message, "back");
}

#[tokio::test]
async fn a_component_crashing_mid_stream_fails_only_its_calls() {
    let mut node = Node::start().await;
    let doomed = node.running_pod("doomed", V1).await;
    let other = node
        .running_pod("other", ("example.org", SERVICE, "1.0.0"))
        .await;
    let long = hex_of(&pb::StreamRequest {
        message: "s".into(),
        count: 1000,
        interval_ms: 20,
    });
    let crash = hex_of(&pb::EchoRequest {
        crash: true,
        sleep_ms: 300,
        ..Default::default()
    });
    let calls = json!([
        { "path": "/vimana.example.v1.Echo/ServerStream", "messages_hex": [long] },
        { "path": UNARY, "messages_hex": [crash] },
    ]);
    let results = aioquic(&node, "example.com", calls, true);
    assert_eq!(
        results[0]["grpc_status"], 14,
        "the open stream is told UNAVAILABLE: {}",
        results[0]
    );
    assert!(replies(&results[0]).len() < 1000);
    let elapsed = results[0]["elapsed_ms"].as_f64().unwrap();
    assert!(
        elapsed < 10_000.0,
        "at once, not at the 20 s stream's end: {}",
        results[0]
    );
    node.wait_state(&doomed, cri::ContainerState::ContainerExited)
        .await;
    let r = &aioquic(&node, "example.org", json!([unary_call("fine")]), false)[0];
    assert_eq!(replies(r)[0].served_by, other);
}

#[tokio::test]
async fn garbage_datagrams_do_not_hurt_a_shard() {
    let mut node = Node::start().await;
    node.running_pod("a", V1).await;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for len in [0usize, 1, 5, 20, 1200, 1350, 1500, 9000] {
        for first in [0x00u8, 0x40, 0xc0, 0xff] {
            let mut packet: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            if let Some(b) = packet.first_mut() {
                *b = first;
            }
            socket.send_to(&packet, node.listen).unwrap();
        }
    }
    let (code, out, err) = vimanad_call(
        &node,
        "example.com",
        UNARY,
        &["--text", "ok", "--output", "text"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn vimanad_call_reports_messages_and_statuses() {
    let mut node = Node::start().await;
    node.running_pod("a", V1).await;
    let (code, out, err) = vimanad_call(
        &node,
        "example.com",
        UNARY,
        &["--text", "hello", "--output", "text", "-v"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "hello");
    assert!(err.contains("grpc-status: 0"), "{err}");
    let (code, _, err) = vimanad_call(&node, "nope.example", UNARY, &["--text", "x"]);
    assert_eq!(code, 12, "{err}");
    assert!(err.contains("nope.example"), "{err}");
}

#[tokio::test]
async fn connections_spread_over_both_shards() {
    let mut node = Node::start().await;
    node.running_pod("a", V1).await;
    for _ in 0..16 {
        let (code, _, err) = vimanad_call(&node, "example.com", UNARY, &["--text", "x"]);
        assert_eq!(code, 0, "{err}");
    }
    unsafe { libc::kill(node.process.id() as i32, libc::SIGTERM) };
    let _ = node.process.wait();
    let log = node.log();
    for shard in 0..2 {
        let line = log
            .lines()
            .find(|l| l.contains("shard stopped") && l.contains(&format!("shard={shard}")))
            .unwrap_or_else(|| panic!("no stop line for shard {shard}:\n{log}"));
        assert!(
            !line.contains("calls=0"),
            "shard {shard} served nothing: {line}"
        );
    }
}

#[tokio::test]
async fn oversized_headers_are_refused_and_the_node_keeps_serving() {
    let mut node = Node::start().await;
    node.running_pod("a", V1).await;
    let huge = "h".repeat(32 * 1024);
    let call =
        json!([{ "path": UNARY, "messages_hex": [echo("x")], "headers": [["x-huge", huge]] }]);
    let r = &aioquic(&node, "example.com", call, false)[0];
    assert_ne!(
        r["grpc_status"], 0,
        "a 32 KiB header section is not served: {r}"
    );
    let r = &aioquic(&node, "example.com", json!([unary_call("fine")]), false)[0];
    assert_eq!(replies(r)[0].message, "fine");
}

#[tokio::test]
async fn address_validation_with_retry() {
    // Every new connection must first pass a QUIC Retry: both clients
    // follow it and their calls succeed.
    let mut node = Node::start_with(&["--retry-above", "0"]).await;
    node.running_pod("a", V1).await;
    let r = &aioquic(
        &node,
        "example.com",
        json!([unary_call("validated")]),
        false,
    )[0];
    assert_eq!(r["error"], serde_json::Value::Null, "{r}");
    assert_eq!(replies(r)[0].message, "validated");
    let (code, out, err) = vimanad_call(
        &node,
        "example.com",
        UNARY,
        &["--text", "again", "--output", "text"],
    );
    assert_eq!((code, out.trim()), (0, "again"), "{err}");
}

#[tokio::test]
async fn a_container_killed_with_sigkill_while_streams_are_open() {
    let mut node = Node::start().await;
    let pod = node.running_pod("victim", V1).await;
    let pid = node.pid(&pod).await;
    let long = hex_of(&pb::StreamRequest {
        message: "s".into(),
        count: 1000,
        interval_ms: 20,
    });
    // Late enough that the streams are open even when the Python peer is
    // slow to start (a loaded machine); they would run for 20 s.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(3000));
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let calls = json!([
        { "path": "/vimana.example.v1.Echo/ServerStream", "messages_hex": [long.clone()] },
        { "path": "/vimana.example.v1.Echo/ServerStream", "messages_hex": [long] },
    ]);
    let results = aioquic(&node, "example.com", calls, true);
    killer.join().unwrap();
    for r in &results {
        assert_eq!(
            r["grpc_status"], 14,
            "every open stream gets UNAVAILABLE: {r}"
        );
        assert!(
            !replies(r).is_empty(),
            "it was streaming before the kill: {r}"
        );
        assert!(r["elapsed_ms"].as_f64().unwrap() < 10_000.0, "at once: {r}");
    }
    let status = node
        .wait_state(&pod, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(status.exit_code, 137);
    // Out of routing on every shard, and its log is complete up to the kill.
    let (code, _, err) = vimanad_call(&node, "example.com", UNARY, &["--text", "x"]);
    assert_eq!(code, 14, "{err}");
    let log = std::fs::read_to_string(&status.log_path).unwrap();
    assert!(log.contains("listening on"), "{log}");
}
