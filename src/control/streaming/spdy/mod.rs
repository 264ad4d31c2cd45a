//! SPDY/3.1, the transport kubectl, crictl and the kubelet's API-server
//! proxy use for exec, attach and port-forward: framing ([`frame`]) and a
//! server connection ([`conn`]). Nothing here knows what the streams carry.

pub mod conn;
mod dictionary;
pub mod frame;
