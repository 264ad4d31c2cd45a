//! The data plane over HTTP/2 + TLS on TCP, beside HTTP/3 on the same
//! port: the same table of cases as tests/data_plane.rs (tests/common/
//! matrix.rs) through Python grpcio, verifying the node's certificate;
//! plus a tonic client over TLS with the node's certificate.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::matrix::{self, V1};
use common::peers::{node_cert, start_for, Transport};
use common::Node;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use vimana_example::pb::{self, echo_client::EchoClient};

#[tokio::test]
async fn all_four_call_kinds_through_grpcio() {
    matrix::all_four_call_kinds(Transport::H2).await
}

#[tokio::test]
async fn every_error_is_a_grpc_status_over_h2() {
    matrix::every_error_is_a_grpc_status(Transport::H2).await
}

#[tokio::test]
async fn deadlines_and_cancellation_reach_the_component_over_h2() {
    matrix::deadlines_and_cancellation_reach_the_component(Transport::H2).await
}

#[tokio::test]
async fn versions_route_by_header_or_newest_over_h2() {
    matrix::versions_route_by_header_or_newest(Transport::H2).await
}

#[tokio::test]
async fn calls_are_balanced_over_the_containers_of_a_component_over_h2() {
    matrix::calls_are_balanced_over_the_containers_of_a_component(Transport::H2).await
}

#[tokio::test]
async fn a_component_crashing_mid_stream_fails_only_its_calls_over_h2() {
    matrix::a_component_crashing_mid_stream_fails_only_its_calls(Transport::H2).await
}

/// A tonic channel to the node over TLS: tokio-rustls verifying the node's
/// certificate for `authority` (ALPN h2), the TCP connection to the node's port.
async fn tonic_channel(node: &Node, authority: &str) -> Channel {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(node_cert(node)).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let (addr, name) = (
        node.listen,
        ServerName::try_from(authority.to_owned()).unwrap(),
    );
    let port = addr.port();
    Endpoint::from_shared(format!("https://{authority}:{port}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_uri| {
            let (connector, name) = (connector.clone(), name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = connector.connect(name, tcp).await?;
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .expect("tonic connects over TLS")
}

#[tokio::test]
async fn tonic_client_over_tls_with_the_node_certificate() {
    let mut node = start_for(Transport::H2, &[]).await;
    node.running_pod("a", V1).await;
    let mut client = EchoClient::new(tonic_channel(&node, "example.com").await);
    // Unary, with metadata; the response advertises HTTP/3 on the same port.
    let mut request = tonic::Request::new(pb::EchoRequest {
        message: "hi".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-trace", "t-1".parse().unwrap());
    let response = client.unary(request).await.expect("unary");
    let alt_svc = response
        .metadata()
        .get("alt-svc")
        .map(|v| v.to_str().unwrap());
    let want = format!("h3=\":{}\"", node.listen.port());
    assert_eq!(alt_svc, Some(want.as_str()));
    let reply = response.into_inner();
    assert_eq!(reply.message, "hi");
    assert_eq!(
        reply.metadata.get("x-trace").map(String::as_str),
        Some("t-1")
    );
    // Server streaming: every message, in order.
    let mut stream = client
        .server_stream(pb::StreamRequest {
            message: "s".into(),
            count: 5,
            interval_ms: 0,
        })
        .await
        .expect("server stream")
        .into_inner();
    let mut sequence = Vec::new();
    while let Some(reply) = stream.message().await.expect("stream message") {
        sequence.push(reply.sequence);
    }
    assert_eq!(sequence, [0, 1, 2, 3, 4]);
    // An error status with its message, as the component said it.
    let status = client
        .unary(pb::EchoRequest {
            fail_code: Code::FailedPrecondition as i32,
            fail_message: "not now: 50% off".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "not now: 50% off");
    // A deadline: tonic sends grpc-timeout and keeps a timer of the same
    // length, which usually fires before the node's DEADLINE_EXCEEDED
    // arrives (CANCELLED "Timeout expired"); either way, in time.
    let mut request = tonic::Request::new(pb::EchoRequest {
        message: "late".into(),
        sleep_ms: 5000,
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = client.unary(request).await.unwrap_err();
    assert!(
        [Code::DeadlineExceeded, Code::Cancelled].contains(&status.code()),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "{status:?}");
    // The same channel serves the next call.
    let reply = client
        .unary(pb::EchoRequest {
            message: "again".into(),
            ..Default::default()
        })
        .await
        .expect("after the deadline")
        .into_inner();
    assert_eq!(reply.message, "again");
}
