//! What the benchmarks' quiche clients share: waiting on their sockets and
//! saying why a connection ended.

use std::time::Duration;

/// ppoll(2) one descriptor for `events`, with a nanosecond timeout; whether
/// it is ready.
pub fn poll(fd: std::os::fd::RawFd, events: libc::c_short, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec for the call.
    unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) > 0 }
}

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
