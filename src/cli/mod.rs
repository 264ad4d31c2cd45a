//! Command-line tools beside the daemon: a small CRI client for operators
//! and the README demo. Tools may use `anyhow`; the library may not.

pub mod call;
pub mod cri;
pub mod grpc_frame;
