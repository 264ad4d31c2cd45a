//! The pod pool: the vocabulary both planes share.
//!
//! Owns component names (`DOMAIN:SERVICE@VERSION`), pod/container IDs
//! (`...#N`), and the two maps of the pool: the component map (component →
//! running containers, read by the data plane) and the ID map (pod ID →
//! component, for the control plane's two-step lookups). It knows nothing of
//! CRI, processes or QUIC.

mod names;
mod table;

pub use names::{ComponentName, NameError, PodId};
pub use table::{Endpoint, PodPool};
