//! Abuse of streams and calls, against the real binary, with Python
//! aioquic (tests/peers/) as both the abusive and the well-behaved client:
//! each abuse gets its defined outcome, and the node keeps serving
//! everyone else meanwhile.

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
