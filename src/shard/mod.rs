//! The data plane: one glommio shard per core serving gRPC over HTTP/3.
//!
//! Owns UDP sockets, QUIC connections, HTTP/3 streams, gRPC routing and the
//! core-local upstream HTTP/2 pools. It reads the pod pool only through the
//! published routing snapshot (`crate::pool`) and never touches `control`.
