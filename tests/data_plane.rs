//! The data plane end to end: HTTP/3 clients (aioquic, which nobody here
//! wrote, and `vimanad call`) → vimanad's shards → example components
//! started over CRI. The cases every transport passes are in
//! tests/common/matrix.rs (run over HTTP/2 by tests/h2_data_plane.rs).

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1 as cri;
use serde_json::json;
use vimana_example::pb;

use common::matrix::{self, echo, unary_call, UNARY, V1};
use common::peers::Transport;

#[tokio::test]
async fn all_four_call_kinds_through_aioquic() {
    matrix::all_four_call_kinds(Transport::H3).await
}

#[tokio::test]
async fn every_error_is_a_grpc_status() {
    matrix::every_error_is_a_grpc_status(Transport::H3).await
}

#[tokio::test]
async fn deadlines_and_cancellation_reach_the_component() {
    matrix::deadlines_and_cancellation_reach_the_component(Transport::H3).await
}

#[tokio::test]
async fn versions_route_by_header_or_newest() {
    matrix::versions_route_by_header_or_newest(Transport::H3).await
}

#[tokio::test]
async fn calls_are_balanced_over_the_containers_of_a_component() {
    matrix::calls_are_balanced_over_the_containers_of_a_component(Transport::H3).await
}

#[tokio::test]
async fn a_component_crashing_mid_stream_fails_only_its_calls() {
    matrix::a_component_crashing_mid_stream_fails_only_its_calls(Transport::H3).await
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

/// Checks a call's stdout and stderr, given the transport (for what only
/// one of them shows).
type Check = Box<dyn Fn(Transport, &str, &str)>;

/// One `vimanad call` case: its arguments, the exit code, and its check.
struct CallCase {
    name: &'static str,
    authority: &'static str,
    path: &'static str,
    args: Vec<String>,
    code: i32,
    check: Check,
}

/// `vimanad call` over HTTP/3 (the default) and `--transport h2` from one
/// table: the same flags, output and exit codes on both.
#[tokio::test]
async fn vimanad_call_over_h3_and_h2() {
    // The test certificate, so `--ca` can verify it on both transports.
    let mut node = common::peers::start_for(Transport::H2, &[]).await;
    node.running_pod("a", V1).await;
    let ca = common::peers::node_cert(&node).display().to_string();
    let port = node.listen.port();
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let stream = hex_of(&pb::StreamRequest {
        message: "s".into(),
        count: 3,
        interval_ms: 0,
    });
    let fail = hex_of(&pb::EchoRequest {
        fail_code: 9,
        fail_message: "not now: 50% off".into(),
        ..Default::default()
    });
    let slow = hex_of(&pb::EchoRequest {
        message: "late".into(),
        sleep_ms: 5000,
        ..Default::default()
    });
    let cases = vec![
        CallCase {
            name: "unary, verbose",
            authority: "example.com",
            path: UNARY,
            args: args(&["--text", "hello", "--output", "text", "-v"]),
            code: 0,
            check: Box::new(move |t, out, err| {
                assert_eq!(out.trim(), "hello");
                assert!(err.contains("grpc-status: 0 (OK)"), "{err}");
                assert!(err.contains("< content-type: application/grpc"), "{err}");
                match t {
                    Transport::H3 => assert!(err.contains("(HTTP/3)"), "{err}"),
                    Transport::H2 => {
                        assert!(err.contains("(HTTP/2 over TLS)"), "{err}");
                        let alt_svc = format!("< alt-svc: h3=\":{port}\"");
                        assert!(err.contains(&alt_svc), "{err}");
                    }
                }
            }),
        },
        CallCase {
            name: "server streaming",
            authority: "example.com",
            path: "/vimana.example.v1.Echo/ServerStream",
            args: args(&["--data-hex", &stream, "--output", "text"]),
            code: 0,
            check: Box::new(|_, out, _| assert_eq!(out, "s\ns\ns\n")),
        },
        CallCase {
            name: "an error status and its message",
            authority: "example.com",
            path: UNARY,
            args: args(&["--data-hex", &fail]),
            code: 9,
            check: Box::new(|_, out, err| {
                assert_eq!(out, "");
                let want = "grpc-status: 9 (FAILED_PRECONDITION) grpc-message: not now: 50% off";
                assert!(err.contains(want), "{err}");
            }),
        },
        CallCase {
            name: "metadata and trailers",
            authority: "example.com",
            path: UNARY,
            args: args(&[
                "--text",
                "m",
                "-H",
                "x-trace: t-1",
                "-H",
                "x-echo-trailer: back",
                "-H",
                "vimana-version: 1.0.0",
                "-v",
            ]),
            code: 0,
            check: Box::new(|_, out, err| {
                let reply: pb::EchoReply =
                    prost::Message::decode(&hex::decode(out.trim()).unwrap()[..]).unwrap();
                assert_eq!(reply.message, "m");
                assert_eq!(
                    reply.metadata.get("x-trace").map(String::as_str),
                    Some("t-1")
                );
                assert!(err.contains("> x-trace: t-1"), "{err}");
                assert!(err.contains("< x-echo-trailer: back"), "{err}");
            }),
        },
        CallCase {
            name: "a deadline",
            authority: "example.com",
            path: UNARY,
            args: args(&["--data-hex", &slow, "--timeout", "300ms"]),
            code: 4,
            check: Box::new(|_, out, err| {
                assert_eq!(out, "");
                assert!(err.contains("DEADLINE_EXCEEDED"), "{err}");
            }),
        },
        CallCase {
            name: "no such component",
            authority: "nope.example",
            path: UNARY,
            args: args(&["--text", "x"]),
            code: 12,
            check: Box::new(|_, _, err| assert!(err.contains("nope.example"), "{err}")),
        },
        CallCase {
            name: "--ca verifies the node's certificate",
            authority: "example.com",
            path: UNARY,
            args: args(&["--ca", &ca, "--text", "verified", "--output", "text"]),
            code: 0,
            check: Box::new(|_, out, _| assert_eq!(out.trim(), "verified")),
        },
        CallCase {
            name: "--ca refuses a name the certificate is not for",
            authority: "example.com",
            path: UNARY,
            args: args(&["--ca", &ca, "--server-name", "wrong.invalid", "--text", "x"]),
            code: 1,
            check: Box::new(|_, out, err| {
                assert_eq!(out, "");
                assert!(err.contains("certificate not accepted"), "{err}");
            }),
        },
    ];
    for transport in [Transport::H3, Transport::H2] {
        for case in &cases {
            let mut args: Vec<&str> = case.args.iter().map(String::as_str).collect();
            if transport == Transport::H2 {
                args.extend(["--transport", "h2"]);
            }
            let started = Instant::now();
            let (code, out, err) = vimanad_call(&node, case.authority, case.path, &args);
            let what = format!("{} over {transport:?}", case.name);
            assert_eq!(code, case.code, "{what}: {err}");
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{what}: at once"
            );
            (case.check)(transport, &out, &err);
        }
    }
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
