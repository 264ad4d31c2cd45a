//! The data-plane cases every transport must pass, written once: each
//! runs the real binary and a real client (tests/common/peers.rs) over the
//! transport it is given. tests/data_plane.rs runs them over HTTP/3
//! (aioquic), tests/h2_data_plane.rs over HTTP/2 + TLS (grpcio).

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use serde_json::json;
use vimana_example::pb;

use super::peers::{peer, Transport};
use super::*;

pub const V1: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
pub const V2: (&str, &str, &str) = ("example.com", SERVICE, "2.0.0");
pub const UNARY: &str = "/vimana.example.v1.Echo/Unary";

pub fn echo(message: &str) -> String {
    hex_of(&pb::EchoRequest {
        message: message.into(),
        ..Default::default()
    })
}

pub fn unary_call(message: &str) -> serde_json::Value {
    json!({ "path": UNARY, "messages_hex": [echo(message)] })
}

pub async fn all_four_call_kinds(t: Transport) {
    let mut node = super::peers::start_for(t, &[]).await;
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
    let results = peer(t, &node, "example.com:443", calls, true);
    for r in &results {
        assert_eq!(r["error"], serde_json::Value::Null, "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["grpc_status"], 0, "{r}");
        match t {
            // aioquic shows the HTTP headers; grpcio only metadata.
            Transport::H3 => assert_eq!(
                header(r, "headers", "content-type"),
                Some("application/grpc")
            ),
            // Over TCP the node advertises HTTP/3 on the same port.
            Transport::H2 => assert_eq!(
                header(r, "headers", "alt-svc"),
                Some(format!("h3=\":{}\"", node.listen.port()).as_str()),
                "{r}"
            ),
        }
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

pub async fn every_error_is_a_grpc_status(t: Transport) {
    let mut node = super::peers::start_for(t, &["--max-message-size", "1024"]).await;
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
        let r = &peer(t, &node, authority, json!([call]), false)[0];
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
    // Not gRPC at all: an HTTP status (grpcio sends only gRPC: curl
    // asks over HTTP/2).
    match t {
        Transport::H3 => {
            let get = json!([{ "path": "/", "method": "GET", "content_type": "text/plain", "messages_hex": [] }]);
            assert_eq!(peer(t, &node, "example.com", get, false)[0]["status"], 415);
        }
        Transport::H2 => {
            let (status, _) = super::peers::curl_h2(&node, "example.com", "/", &[]);
            assert_eq!(status, 415);
        }
    }
    // The node kept serving through all of it.
    let r = &peer(
        t,
        &node,
        "example.com",
        json!([unary_call("still here")]),
        false,
    )[0];
    assert_eq!(replies(r)[0].message, "still here");
}

pub async fn deadlines_and_cancellation_reach_the_component(t: Transport) {
    let mut node = super::peers::start_for(t, &[]).await;
    let pod = node.running_pod("a", V1).await;
    let slow = hex_of(&pb::EchoRequest {
        sleep_ms: 10_000,
        ..Default::default()
    });

    let call =
        json!([{ "path": UNARY, "messages_hex": [slow], "headers": [["grpc-timeout", "200m"]] }]);
    let r = &peer(t, &node, "example.com", call, false)[0];
    assert_eq!(r["grpc_status"], 4, "{r}");
    let elapsed = r["elapsed_ms"].as_f64().unwrap();
    assert!(
        elapsed < 5_000.0,
        "answered at the deadline, not after the 10 s sleep: {r}"
    );

    let call = json!([{ "path": UNARY, "messages_hex": [slow], "cancel_after_ms": 200 }]);
    peer(t, &node, "example.com", call, false);
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

pub async fn versions_route_by_header_or_newest(t: Transport) {
    let mut node = super::peers::start_for(t, &[]).await;
    let old = node.running_pod("old", V1).await;
    let new = node.running_pod("new", V2).await;
    let calls = json!([
        unary_call("default"),
        { "path": UNARY, "messages_hex": [echo("pinned")], "headers": [["vimana-version", "1.0.0"]] },
        { "path": UNARY, "messages_hex": [echo("pinned2")], "headers": [["vimana-version", "2.0.0"]] },
    ]);
    let r = peer(t, &node, "example.com", calls, true);
    assert_eq!(
        replies(&r[0])[0].served_by,
        new,
        "newest running version by default"
    );
    assert_eq!(replies(&r[1])[0].served_by, old);
    assert_eq!(replies(&r[2])[0].served_by, new);
    // The newest stops: the default falls back to the newest still running.
    node.stop_container(&new, 5).await.unwrap();
    let r = peer(t, &node, "example.com", json!([unary_call("after")]), false);
    assert_eq!(replies(&r[0])[0].served_by, old);
}

pub async fn calls_are_balanced_over_the_containers_of_a_component(t: Transport) {
    let mut node = super::peers::start_for(t, &[]).await;
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
    let results = peer(t, &node, "example.com", json!(calls), true);
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

pub async fn a_component_crashing_mid_stream_fails_only_its_calls(t: Transport) {
    let mut node = super::peers::start_for(t, &[]).await;
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
    let results = peer(t, &node, "example.com", calls, true);
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
    let r = &peer(t, &node, "example.org", json!([unary_call("fine")]), false)[0];
    assert_eq!(replies(r)[0].served_by, other);
}
