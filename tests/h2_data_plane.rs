//! The data plane over HTTP/2 + TLS on TCP, beside HTTP/3 on the same
//! port: the same table of cases as tests/data_plane.rs (tests/common/
//! matrix.rs) through Python grpcio, verifying the node's certificate;
//! plus what only HTTP/2 has (curl, tonic, h2c, alt-svc).

mod common;

use common::matrix;
use common::peers::Transport;

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
