//! What the bench reads of the machine and sets on itself: CPU ticks, RSS,
//! PSS, UDP drops and the load average from /proc, the descriptor limit,
//! and the cores client threads are pinned to. No measuring logic: the
//! figures are put together in measure.rs and the sections.

pub use crate::procfs::{cpu_ticks, tick_secs};

/// A `kB` field of /proc/PID/status (VmRSS, RssAnon, VmHWM...), in KiB.
pub fn status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    kib_field(&status, field)
}

/// Proportional set size (/proc/PID/smaps_rollup), KiB: shared pages
/// (the vimanad binary mapped by every shim) count once in total.
pub fn pss_kib(pid: &str) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    kib_field(&rollup, "Pss")
}

pub fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_owned()
}

/// Lets this process open as many descriptors as it may.
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// utime + stime of `pid`'s threads whose name starts with `prefix`.
pub fn thread_ticks(pid: &str, prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .map(|t| cpu_ticks(&format!("{pid}/task/{}", t.file_name().to_string_lossy())))
        .sum()
}

/// UDP datagrams the kernel dropped for want of receive buffer, machine
/// wide (/proc/net/snmp `Udp: RcvbufErrors`).
pub fn udp_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

pub fn pin_to(core: Option<core_affinity::CoreId>) {
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
}

/// The cores the client threads of a node with `shards` shards may use:
/// those its shards are not pinned to (shard i sits on core i), if any.
pub fn client_cores(shards: usize, pin: bool) -> Vec<core_affinity::CoreId> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    match pin && cores.len() > shards {
        true => cores[shards..].to_vec(),
        false => Vec::new(),
    }
}
