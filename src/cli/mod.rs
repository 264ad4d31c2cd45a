//! Command-line tools beside the daemon: a small CRI client for operators
//! and the README demo. Tools may use `anyhow`; the library may not.

pub mod call;
pub mod config;
pub mod cri;
pub mod grpc_frame;
pub mod pool;

use std::time::Duration;

/// A duration flag: `500ms`, `30s`, `2m` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 500ms, 30s, 2m)"))?;
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct ListenOrOff(pub Option<std::net::SocketAddr>);

pub fn parse_listen_or_off(s: &str) -> Result<ListenOrOff, String> {
    if s == "off" {
        return Ok(ListenOrOff(None));
    }
    s.parse()
        .map(|a| ListenOrOff(Some(a)))
        .map_err(|_| format!("invalid address {s:?} (HOST:PORT, e.g. 127.0.0.1:9475, or off)"))
}
