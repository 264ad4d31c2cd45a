//! In-process tests of the example component on a Unix socket.

use std::time::{Duration, Instant};

use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use vimana_example::pb::echo_client::EchoClient;
use vimana_example::pb::{EchoRequest, StreamRequest};
use vimana_example::{spawn, Address, HealthMode, RunningServer, ServeOptions, SERVICE_NAME};

fn options(health: HealthMode) -> ServeOptions {
    ServeOptions {
        served_by: "pod-test".into(),
        health,
        ..ServeOptions::default()
    }
}

fn start(dir: &tempfile::TempDir, health: HealthMode) -> RunningServer {
    let addr = Address::Unix(dir.path().join("echo.sock"));
    spawn(&addr, options(health)).expect("spawn server")
}

fn req(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        ..Default::default()
    }
}

#[test]
fn parses_addresses() {
    assert_eq!(
        "unix:/run/x.sock".parse::<Address>().unwrap(),
        Address::Unix("/run/x.sock".into())
    );
    assert_eq!(
        "unix:///run/x.sock".parse::<Address>().unwrap(),
        Address::Unix("/run/x.sock".into())
    );
    assert_eq!(
        "tcp:127.0.0.1:5000".parse::<Address>().unwrap(),
        Address::Tcp("127.0.0.1:5000".parse().unwrap())
    );
    assert_eq!(
        "[::1]:5000".parse::<Address>().unwrap(),
        Address::Tcp("[::1]:5000".parse().unwrap())
    );
    assert_eq!(
        "localhost:7".parse::<Address>().unwrap(),
        Address::Tcp("127.0.0.1:7".parse().unwrap())
    );
    assert!("unix:".parse::<Address>().is_err());
    assert!("example.com:80".parse::<Address>().is_err());
    assert!("".parse::<Address>().is_err());
    assert_eq!(
        Address::Unix("/a/b".into()).to_string(),
        "unix:/a/b".to_string()
    );
}

#[tokio::test]
async fn unary_echoes_and_echoes_metadata_and_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, HealthMode::Serving);
    let mut client = server.client().await.unwrap();

    let mut request = Request::new(EchoRequest {
        message: "hello".into(),
        payload: vec![1, 2, 3],
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "abc".parse().unwrap());
    request
        .metadata_mut()
        .append("x-multi", "one".parse().unwrap());
    request
        .metadata_mut()
        .append("x-multi", "two".parse().unwrap());
    request
        .metadata_mut()
        .insert("other", "ignored".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-echo-trailer", "tv".parse().unwrap());
    let response = client.unary(request).await.unwrap();
    assert_eq!(
        response
            .metadata()
            .get("x-echo-trailer")
            .map(|v| v.to_str().unwrap()),
        Some("tv"),
        "custom trailer on a successful unary response"
    );
    let reply = response.into_inner();
    assert_eq!(reply.message, "hello");
    assert_eq!(reply.payload, vec![1, 2, 3]);
    assert_eq!(reply.served_by, "pod-test");
    assert_eq!(reply.sequence, 0);
    assert_eq!(reply.metadata.get("x-request-id").unwrap(), "abc");
    assert_eq!(reply.metadata.get("x-multi").unwrap(), "one, two");
    assert_eq!(reply.metadata.get("x-echo-trailer").unwrap(), "tv");
    assert!(!reply.metadata.contains_key("other"));

    server.shutdown().await.unwrap();
    assert!(
        !dir.path().join("echo.sock").exists(),
        "socket removed on shutdown"
    );
}

#[tokio::test]
async fn unary_fail_code_and_sleep() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, HealthMode::Serving);
    let mut client = server.client().await.unwrap();

    let mut request = Request::new(EchoRequest {
        fail_code: Code::PermissionDenied as i32,
        fail_message: "nope".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-echo-trailer", "on-error".parse().unwrap());
    let status = client.unary(request).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "nope");
    assert_eq!(
        status
            .metadata()
            .get("x-echo-trailer")
            .map(|v| v.to_str().unwrap()),
        Some("on-error")
    );

    let started = Instant::now();
    let reply = client
        .unary(EchoRequest {
            message: "slow".into(),
            sleep_ms: 200,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, "slow");
    assert!(started.elapsed() >= Duration::from_millis(200));

    // Deadline (grpc-timeout) shorter than the sleep: note that a tonic 0.14
    // server answers CANCELLED "Timeout expired", not DEADLINE_EXCEEDED (the
    // tonic client does not enforce grpc-timeout itself).
    let mut request = Request::new(EchoRequest {
        sleep_ms: 2000,
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(100));
    let started = Instant::now();
    let status = client.unary(request).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert_eq!(status.message(), "Timeout expired");

    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn server_stream_sends_count_replies_interval_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, HealthMode::Serving);
    let mut client = server.client().await.unwrap();

    let started = Instant::now();
    let mut request = Request::new(StreamRequest {
        message: "tick".into(),
        count: 4,
        interval_ms: 50,
    });
    request
        .metadata_mut()
        .insert("x-echo-trailer", "end".parse().unwrap());
    request.metadata_mut().insert("x-a", "b".parse().unwrap());
    let mut stream = client.server_stream(request).await.unwrap().into_inner();
    let mut replies = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        replies.push(reply);
    }
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(replies.len(), 4);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.sequence, i as u64);
        assert_eq!(r.message, "tick");
        assert_eq!(r.served_by, "pod-test");
        assert_eq!(r.metadata.get("x-a").unwrap(), "b");
    }
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("x-echo-trailer").unwrap(), "end");

    // count 0: an empty stream, status OK.
    let mut stream = client
        .server_stream(StreamRequest {
            message: "none".into(),
            count: 0,
            interval_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_none());

    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn client_stream_counts_and_concatenates() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, HealthMode::Serving);
    let mut client = server.client().await.unwrap();

    let requests = vec![req("a"), req("bc"), req("def")];
    let mut request = Request::new(tokio_stream::iter(requests));
    request.metadata_mut().insert("x-k", "v".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-echo-trailer", "cs".parse().unwrap());
    let response = client.client_stream(request).await.unwrap();
    assert_eq!(response.metadata().get("x-echo-trailer").unwrap(), "cs");
    let reply = response.into_inner();
    assert_eq!(reply.message, "abcdef");
    assert_eq!(reply.sequence, 3);
    assert_eq!(reply.metadata.get("x-k").unwrap(), "v");

    // A failing request in the middle ends the call with its status.
    let requests = vec![
        req("a"),
        EchoRequest {
            fail_code: Code::InvalidArgument as i32,
            fail_message: "bad".into(),
            ..Default::default()
        },
        req("c"),
    ];
    let status = client
        .client_stream(tokio_stream::iter(requests))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "bad");

    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bidi_replies_as_requests_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, HealthMode::Serving);
    let mut client = server.client().await.unwrap();

    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(4);
    let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("x-echo-trailer", "bd".parse().unwrap());
    let mut responses = client.bidi(request).await.unwrap().into_inner();
    // Ping-pong: each reply arrives before the next request is sent.
    for i in 0..3u64 {
        tx.send(req(&format!("m{i}"))).await.unwrap();
        let reply = responses.message().await.unwrap().expect("a reply");
        assert_eq!(reply.message, format!("m{i}"));
        assert_eq!(reply.sequence, i);
    }
    drop(tx);
    assert!(responses.message().await.unwrap().is_none());
    let trailers = responses.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("x-echo-trailer").unwrap(), "bd");

    // fail_code ends the stream with that status.
    let requests = vec![
        req("ok"),
        EchoRequest {
            fail_code: Code::Aborted as i32,
            fail_message: "stop".into(),
            ..Default::default()
        },
        req("never"),
    ];
    let mut responses = client
        .bidi(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(responses.message().await.unwrap().unwrap().message, "ok");
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "stop");

    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_serving_not_serving_and_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, HealthMode::Serving);
    let mut health = HealthClient::new(server.channel().await.unwrap());
    for service in ["", SERVICE_NAME] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status(), ServingStatus::Serving, "service {service:?}");
    }
    assert_eq!(SERVICE_NAME, "vimana.example.v1.Echo");
    server.shutdown().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, HealthMode::NotServing);
    let mut health = HealthClient::new(server.channel().await.unwrap());
    for service in ["", SERVICE_NAME] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status(), ServingStatus::NotServing);
    }
    server.shutdown().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, HealthMode::Disabled);
    let channel = server.channel().await.unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    // Echo still works.
    let reply = EchoClient::new(channel).unary(req("hi")).await.unwrap();
    assert_eq!(reply.into_inner().message, "hi");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_calls_and_replaces_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    // A stale socket file from a previous run.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let server = spawn(&Address::Unix(path.clone()), options(HealthMode::Serving)).unwrap();
    let mut client = vimana_example::echo_client_unix(&path).await.unwrap();
    let call = tokio::spawn(async move {
        client
            .unary(EchoRequest {
                message: "late".into(),
                sleep_ms: 300,
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown().await.unwrap();
    let reply = call.await.unwrap().unwrap().into_inner();
    assert_eq!(reply.message, "late");
}

#[tokio::test]
async fn tcp_address_works() {
    let server = spawn(
        &"tcp:127.0.0.1:0".parse().unwrap(),
        options(HealthMode::Serving),
    )
    .unwrap();
    assert!(matches!(server.address(), Address::Tcp(a) if a.port() != 0));
    let mut client = server.client().await.unwrap();
    let reply = client.unary(req("tcp")).await.unwrap().into_inner();
    assert_eq!(reply.message, "tcp");
    server.shutdown().await.unwrap();
}
