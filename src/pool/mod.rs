//! The pod pool: the vocabulary both planes share.
//!
//! Owns component names (`DOMAIN:SERVICE@VERSION`), pod/container IDs
//! (`...#N`), the two maps of the pool — the component map (component →
//! running containers) and the ID map (pod ID → component) — and the
//! immutable routing snapshot the control thread publishes to the shards
//! through RCU, the one safe way to connect to a pod's socket
//! (`socket.rs`), and the data plane's per-shard counters (`metrics`) that
//! the control thread reads when scraped. It knows nothing of CRI or QUIC.

pub mod metrics;
mod names;
mod publish;
mod snapshot;
pub mod socket;
mod table;

pub use names::{ComponentName, NameError, PodId};
pub use publish::{Publisher, Reader};
pub use snapshot::{Route, Snapshot, Version};
pub use socket::Peer;
pub use table::{Endpoint, PodPool};
