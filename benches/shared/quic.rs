//! What the benchmarks' quiche clients say when a connection ends.

/// Why `conn` closed: "timed out", "closed by the server (error 0x…,
/// reason)" or "closed by the client (…)".
pub fn close_reason(conn: &quiche::Connection) -> String {
    let describe = |e: &quiche::ConnectionError| {
        format!(
            "error 0x{:x}, {}",
            e.error_code,
            String::from_utf8_lossy(&e.reason)
        )
    };
    match (conn.peer_error(), conn.local_error()) {
        _ if conn.is_timed_out() => "timed out".to_owned(),
        (Some(e), _) => format!("closed by the server ({})", describe(e)),
        (None, Some(e)) => format!("closed by the client ({})", describe(e)),
        (None, None) => "closed".to_owned(),
    }
}
