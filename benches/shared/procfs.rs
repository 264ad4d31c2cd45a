//! CPU time of a process from /proc, shared by the load benchmarks (e2e,
//! capacity): what a process under test spent, excluding the load generator.

/// utime + stime of a process, all its threads (live and exited), in clock
/// ticks: /proc/PID/stat fields 14 and 15. `pid` may be `"self"`.
pub fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces), from field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| fields[n - 3].parse::<u64>().unwrap();
    field(14) + field(15)
}

/// Seconds per clock tick.
pub fn tick_secs() -> f64 {
    // SAFETY: sysconf has no preconditions.
    1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
