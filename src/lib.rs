//! vimanad: the work node runtime of a Vimana cluster.
//!
//! Three rooms, with dependencies pointing one way:
//! - [`pool`]: component names, pod IDs and the pod pool (shared vocabulary).
//! - [`control`]: the tokio control thread: CRI, containers, images, state.
//! - [`shard`]: the per-core data plane (QUIC + HTTP/3 + gRPC routing).
//!
//! `control` and `shard` both use `pool`; neither uses the other.

pub mod control;
pub mod pool;
pub mod shard;
