//! One sample of a container's cgroup counters, on cgroup v2 or v1.
//!
//! Reads only the files of the directories the runtime created for the
//! container (`Container::cgroups`), and the fd tables of the processes
//! listed in them (counted, never followed); the parsers take file
//! contents, so they are tested with fixtures of both versions. Nothing
//! here writes.

use std::fs;
use std::path::PathBuf;

pub use super::blkio::DeviceIo;
use super::blkio::{parse_v1_blkio, parse_v2_io};

/// What the kernel counts for one cgroup (or the sum over a pod's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Unix nanoseconds of the reading.
    pub timestamp: i64,
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    /// Processes (thread group leaders) in the cgroup.
    pub processes: Option<u64>,
    /// Tasks (threads) in the cgroup, and the pids limit.
    pub threads: Option<u64>,
    pub threads_max: Option<u64>,
    /// Open file descriptors and sockets of its processes.
    pub file_descriptors: Option<u64>,
    pub sockets: Option<u64>,
    /// Block I/O per device.
    pub io: Vec<DeviceIo>,
    /// The limits in force.
    pub spec: Spec,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    /// Cumulative CPU time of every task, in nanoseconds.
    pub usage_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
    /// CFS bandwidth enforcement periods, those throttled, and for how long.
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage: u64,
    /// usage − inactive_file: what the kubelet evicts on.
    pub working_set: u64,
    pub rss: u64,
    pub cache: u64,
    pub mapped_file: u64,
    pub kernel: u64,
    pub swap: u64,
    pub max_usage: u64,
    /// Times usage hit the limit, and OOM kills.
    pub failcnt: u64,
    pub oom_kills: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// The limit, if one is set.
    pub limit: Option<u64>,
}

/// Limits, as cAdvisor's `container_spec_*` report them (0 = none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spec {
    pub cpu_period: u64,
    pub cpu_quota: u64,
    pub cpu_shares: u64,
    pub memory_swap_limit: u64,
}

fn add_opt(a: &mut Option<u64>, b: Option<u64>) {
    if let Some(b) = b {
        *a.get_or_insert(0) += b;
    }
}

impl Sample {
    /// Adds another container's counters (a pod's are the sum of its
    /// containers': there is no pod-level cgroup). Limits are not summed.
    pub fn add(&mut self, other: &Sample) {
        self.timestamp = self.timestamp.max(other.timestamp);
        match (&mut self.cpu, other.cpu) {
            (None, o) => self.cpu = o,
            (Some(c), Some(o)) => {
                c.usage_ns += o.usage_ns;
                c.user_ns += o.user_ns;
                c.system_ns += o.system_ns;
                c.periods += o.periods;
                c.throttled_periods += o.throttled_periods;
                c.throttled_ns += o.throttled_ns;
            }
            (Some(_), None) => {}
        }
        match (&mut self.memory, other.memory) {
            (None, o) => self.memory = o,
            (Some(m), Some(o)) => {
                m.usage += o.usage;
                m.working_set += o.working_set;
                m.rss += o.rss;
                m.cache += o.cache;
                m.mapped_file += o.mapped_file;
                m.kernel += o.kernel;
                m.swap += o.swap;
                m.max_usage += o.max_usage;
                m.failcnt += o.failcnt;
                m.oom_kills += o.oom_kills;
                m.page_faults += o.page_faults;
                m.major_page_faults += o.major_page_faults;
                m.limit = match (m.limit, o.limit) {
                    (Some(a), Some(b)) => Some(a.saturating_add(b)),
                    _ => None,
                };
            }
            (Some(_), None) => {}
        }
        add_opt(&mut self.processes, other.processes);
        add_opt(&mut self.threads, other.threads);
        add_opt(&mut self.file_descriptors, other.file_descriptors);
        add_opt(&mut self.sockets, other.sockets);
        for d in &other.io {
            match self
                .io
                .iter_mut()
                .find(|m| (m.major, m.minor) == (d.major, d.minor))
            {
                Some(m) => {
                    m.read_bytes += d.read_bytes;
                    m.write_bytes += d.write_bytes;
                    m.reads += d.reads;
                    m.writes += d.writes;
                }
                None => self.io.push(d.clone()),
            }
        }
    }
}

/// The most file descriptors, and processes, whose descriptors are
/// counted per container (a tenant can open and fork many; counting is a
/// readdir per process and a readlink per descriptor).
const MAX_FDS: u64 = 1 << 16;
const MAX_FD_PROCESSES: usize = 4096;

/// Reads the container's cgroup directories. A file that is missing (a
/// controller this node lacks, a cgroup already removed) leaves its part
/// empty; nothing fails.
pub fn read(dirs: &[PathBuf], timestamp: i64) -> Sample {
    let file = |name: &str| -> Option<String> {
        dirs.iter()
            .find_map(|d| fs::read_to_string(d.join(name)).ok())
    };
    let number = |name: &str| file(name).and_then(|v| v.trim().parse::<u64>().ok());
    let v2 = file("cgroup.controllers").is_some();
    let cpu_stat = file("cpu.stat").unwrap_or_default();
    let cpu = if cpu_stat.contains("usage_usec") {
        Some(parse_v2_cpu(&cpu_stat))
    } else {
        number("cpuacct.usage").map(|usage_ns| {
            let (user_ns, system_ns) = file("cpuacct.stat")
                .map(|s| parse_v1_cpuacct_stat(&s, clock_ticks()))
                .unwrap_or_default();
            let mut cpu = parse_v1_cpu_stat(&cpu_stat);
            cpu.usage_ns = usage_ns;
            cpu.user_ns = user_ns;
            cpu.system_ns = system_ns;
            cpu
        })
    };
    let memory = if let Some(usage) = number("memory.current") {
        let mut m = parse_v2_memory(
            usage,
            &file("memory.stat").unwrap_or_default(),
            file("memory.max").as_deref(),
        );
        let events = file("memory.events").unwrap_or_default();
        m.failcnt = field(&events, "max").unwrap_or(0);
        m.oom_kills = field(&events, "oom_kill").unwrap_or(0);
        m.swap = number("memory.swap.current").unwrap_or(0);
        m.max_usage = number("memory.peak").unwrap_or(0);
        Some(m)
    } else {
        number("memory.usage_in_bytes").map(|usage| {
            let mut m = parse_v1_memory(
                usage,
                &file("memory.stat").unwrap_or_default(),
                file("memory.limit_in_bytes").as_deref(),
            );
            m.failcnt = number("memory.failcnt").unwrap_or(0);
            m.max_usage = number("memory.max_usage_in_bytes").unwrap_or(0);
            m.kernel = number("memory.kmem.usage_in_bytes").unwrap_or(0);
            m.oom_kills = file("memory.oom_control")
                .and_then(|o| field(&o, "oom_kill"))
                .unwrap_or(0);
            m
        })
    };
    let pids: Vec<i32> = file("cgroup.procs")
        .map(|p| p.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    let processes = file("cgroup.procs").map(|_| pids.len() as u64);
    let (file_descriptors, sockets) = if processes.is_some() {
        let (fds, sockets) = count_fds(&pids);
        (Some(fds), Some(sockets))
    } else {
        (None, None)
    };
    let threads = number("pids.current");
    let threads_max = number("pids.max");
    let io = if v2 {
        parse_v2_io(&file("io.stat").unwrap_or_default())
    } else {
        parse_v1_blkio(
            &file("blkio.throttle.io_service_bytes").unwrap_or_default(),
            &file("blkio.throttle.io_serviced").unwrap_or_default(),
        )
    };
    let spec = if v2 {
        let (quota, period) = parse_v2_cpu_max(file("cpu.max").as_deref());
        Spec {
            cpu_period: period,
            cpu_quota: quota,
            cpu_shares: number("cpu.weight").map(weight_to_shares).unwrap_or(0),
            memory_swap_limit: number("memory.swap.max").unwrap_or(0),
        }
    } else {
        Spec {
            cpu_period: number("cpu.cfs_period_us").unwrap_or(0),
            cpu_quota: file("cpu.cfs_quota_us")
                .and_then(|q| q.trim().parse::<i64>().ok())
                .filter(|q| *q > 0)
                .unwrap_or(0) as u64,
            cpu_shares: number("cpu.shares").unwrap_or(0),
            memory_swap_limit: number("memory.memsw.limit_in_bytes")
                .filter(|l| *l < V1_UNLIMITED)
                .unwrap_or(0),
        }
    };
    Sample {
        timestamp,
        cpu,
        memory,
        processes,
        threads,
        threads_max,
        file_descriptors,
        sockets,
        io,
        spec,
    }
}

/// Open descriptors and sockets of `pids`, read from /proc/PID/fd without
/// following any link; bounded by [`MAX_FDS`] and [`MAX_FD_PROCESSES`].
fn count_fds(pids: &[i32]) -> (u64, u64) {
    let (mut fds, mut sockets) = (0u64, 0u64);
    'pids: for pid in pids.iter().take(MAX_FD_PROCESSES) {
        let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in entries.flatten() {
            if fds >= MAX_FDS {
                break 'pids;
            }
            fds += 1;
            if fs::read_link(entry.path())
                .is_ok_and(|l| l.as_os_str().as_encoded_bytes().starts_with(b"socket:"))
            {
                sockets += 1;
            }
        }
    }
    (fds, sockets)
}

/// `KEY VALUE` lines (memory.stat, cpu.stat, cpuacct.stat, memory.events).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// cgroup v2 `cpu.stat` (microseconds).
pub fn parse_v2_cpu(stat: &str) -> Cpu {
    let us = |key| field(stat, key).unwrap_or(0).saturating_mul(1000);
    Cpu {
        usage_ns: us("usage_usec"),
        user_ns: us("user_usec"),
        system_ns: us("system_usec"),
        periods: field(stat, "nr_periods").unwrap_or(0),
        throttled_periods: field(stat, "nr_throttled").unwrap_or(0),
        throttled_ns: us("throttled_usec"),
    }
}

/// cgroup v1 `cpu.stat` (the CFS bandwidth counters; throttled_time in ns).
pub fn parse_v1_cpu_stat(stat: &str) -> Cpu {
    Cpu {
        periods: field(stat, "nr_periods").unwrap_or(0),
        throttled_periods: field(stat, "nr_throttled").unwrap_or(0),
        throttled_ns: field(stat, "throttled_time").unwrap_or(0),
        ..Default::default()
    }
}

/// cgroup v1 `cpuacct.stat` (user and system in clock ticks) as
/// nanoseconds.
pub fn parse_v1_cpuacct_stat(stat: &str, ticks_per_second: u64) -> (u64, u64) {
    let ns = |key| {
        field(stat, key)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000 / ticks_per_second.max(1))
    };
    (ns("user"), ns("system"))
}

/// cgroup v2 `cpu.max`: `QUOTA PERIOD` (QUOTA `max` = none) as (quota,
/// period), 0 for none.
pub fn parse_v2_cpu_max(max: Option<&str>) -> (u64, u64) {
    let Some(max) = max else { return (0, 0) };
    let mut parts = max.split_whitespace();
    let quota = parts.next().and_then(|q| q.parse().ok()).unwrap_or(0);
    let period = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (quota, period)
}

/// cpu.weight [1, 10000] back to cpu.shares [2, 262144] (the inverse of the
/// kubelet's conversion).
fn weight_to_shares(weight: u64) -> u64 {
    2 + (weight.clamp(1, 10_000) - 1) * 262_142 / 9_999
}

/// cgroup v2: `memory.current`, `memory.stat`, `memory.max` ("max" when
/// unlimited).
pub fn parse_v2_memory(usage: u64, stat: &str, max: Option<&str>) -> Memory {
    let get = |key| field(stat, key).unwrap_or(0);
    Memory {
        usage,
        working_set: usage.saturating_sub(get("inactive_file")),
        rss: get("anon"),
        cache: get("file"),
        mapped_file: get("file_mapped"),
        kernel: get("kernel"),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        limit: max.and_then(|m| m.trim().parse().ok()),
        ..Default::default()
    }
}

/// The value cgroup v1 shows for "no limit" (PAGE_COUNTER_MAX pages, page
/// aligned); anything this large is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// cgroup v1: `memory.usage_in_bytes`, `memory.stat` (the `total_` fields
/// include descendants), `memory.limit_in_bytes`.
pub fn parse_v1_memory(usage: u64, stat: &str, limit: Option<&str>) -> Memory {
    let get = |key: &str| {
        field(stat, &format!("total_{key}"))
            .or_else(|| field(stat, key))
            .unwrap_or(0)
    };
    Memory {
        usage,
        working_set: usage.saturating_sub(get("inactive_file")),
        rss: get("rss"),
        cache: get("cache"),
        mapped_file: get("mapped_file"),
        swap: get("swap"),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        limit: limit
            .and_then(|l| l.trim().parse().ok())
            .filter(|l| *l < V1_UNLIMITED),
        ..Default::default()
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant of the C library.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_CPU_STAT: &str = "usage_usec 1523456\nuser_usec 1000000\nsystem_usec 523456\n\
        core_sched.force_idle_usec 0\nnr_periods 10\nnr_throttled 2\nthrottled_usec 3000\n\
        nr_bursts 0\nburst_usec 0\n";

    const V2_MEMORY_STAT: &str = "anon 4194304\nfile 8388608\nkernel 1048576\n\
        kernel_stack 65536\npagetables 131072\nsock 0\nshmem 0\nfile_mapped 1048576\n\
        file_dirty 0\nfile_writeback 0\nanon_thp 0\ninactive_anon 0\nactive_anon 4194304\n\
        inactive_file 6291456\nactive_file 2097152\nunevictable 0\npgfault 12345\n\
        pgmajfault 67\n";

    const V1_MEMORY_STAT: &str = "cache 8388608\nrss 4194304\nrss_huge 0\nshmem 0\n\
        mapped_file 1048576\npgfault 100\npgmajfault 1\ninactive_anon 0\nactive_anon 4194304\n\
        inactive_file 6291456\nactive_file 2097152\nhierarchical_memory_limit 9223372036854771712\n\
        total_cache 8388608\ntotal_rss 4194304\ntotal_mapped_file 1048576\ntotal_pgfault 12345\n\
        total_pgmajfault 67\ntotal_inactive_file 6291456\ntotal_active_file 2097152\n";

    #[test]
    fn parses_v2_cpu_stat_in_nanoseconds() {
        let cpu = parse_v2_cpu(V2_CPU_STAT);
        assert_eq!(
            cpu,
            Cpu {
                usage_ns: 1_523_456_000,
                user_ns: 1_000_000_000,
                system_ns: 523_456_000,
                periods: 10,
                throttled_periods: 2,
                throttled_ns: 3_000_000,
            }
        );
        assert_eq!(parse_v2_cpu_max(Some("50000 100000\n")), (50_000, 100_000));
        assert_eq!(parse_v2_cpu_max(Some("max 100000\n")), (0, 100_000));
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10_000), 262_144);
    }

    #[test]
    fn parses_v1_cpu_stat_throttling() {
        let cpu = parse_v1_cpu_stat("nr_periods 7\nnr_throttled 3\nthrottled_time 123456\n");
        assert_eq!(
            (cpu.periods, cpu.throttled_periods, cpu.throttled_ns),
            (7, 3, 123_456)
        );
    }

    #[test]
    fn parses_v2_memory_with_working_set() {
        let m = parse_v2_memory(16_777_216, V2_MEMORY_STAT, Some("67108864\n"));
        assert_eq!(m.usage, 16_777_216);
        assert_eq!(m.working_set, 16_777_216 - 6_291_456);
        assert_eq!(m.rss, 4_194_304);
        assert_eq!(m.cache, 8_388_608);
        assert_eq!(m.mapped_file, 1_048_576);
        assert_eq!(m.kernel, 1_048_576);
        assert_eq!(m.page_faults, 12_345);
        assert_eq!(m.major_page_faults, 67);
        assert_eq!(m.limit, Some(67_108_864));
        assert_eq!(
            parse_v2_memory(1, V2_MEMORY_STAT, Some("max\n")).limit,
            None
        );
        // inactive_file above usage (racy reads) never underflows.
        assert_eq!(parse_v2_memory(1, V2_MEMORY_STAT, None).working_set, 0);
    }

    #[test]
    fn parses_v1_memory_preferring_totals() {
        let m = parse_v1_memory(16_777_216, V1_MEMORY_STAT, Some("9223372036854771712"));
        assert_eq!(m.working_set, 16_777_216 - 6_291_456);
        assert_eq!(m.rss, 4_194_304);
        assert_eq!(m.page_faults, 12_345);
        assert_eq!(m.major_page_faults, 67);
        assert_eq!(m.mapped_file, 1_048_576);
        assert_eq!(m.limit, None, "the v1 'unlimited' value is no limit");
        assert_eq!(
            parse_v1_memory(1, "", Some("1048576\n")).limit,
            Some(1_048_576)
        );
    }

    #[test]
    fn parses_v1_cpuacct_stat_ticks() {
        assert_eq!(
            parse_v1_cpuacct_stat("user 250\nsystem 50\n", 100),
            (2_500_000_000, 500_000_000)
        );
        assert_eq!(parse_v1_cpuacct_stat("garbage", 100), (0, 0));
    }

    #[test]
    fn reads_v2_fixture_directory() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        fs::write(d.join("cgroup.procs"), "").unwrap();
        fs::write(d.join("cpu.stat"), V2_CPU_STAT).unwrap();
        fs::write(d.join("cpu.max"), "max 100000\n").unwrap();
        fs::write(d.join("cpu.weight"), "100\n").unwrap();
        fs::write(d.join("memory.current"), "16777216\n").unwrap();
        fs::write(d.join("memory.stat"), V2_MEMORY_STAT).unwrap();
        fs::write(d.join("memory.max"), "max\n").unwrap();
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n",
        )
        .unwrap();
        fs::write(d.join("memory.peak"), "20000000\n").unwrap();
        fs::write(d.join("io.stat"), "8:0 rbytes=1 wbytes=2 rios=3 wios=4\n").unwrap();
        fs::write(d.join("pids.current"), "3\n").unwrap();
        fs::write(d.join("pids.max"), "max\n").unwrap();
        let s = read(&[d.to_path_buf()], 42);
        assert_eq!(s.timestamp, 42);
        assert_eq!(s.cpu.unwrap().usage_ns, 1_523_456_000);
        let m = s.memory.unwrap();
        assert_eq!(m.working_set, 16_777_216 - 6_291_456);
        assert_eq!((m.failcnt, m.oom_kills, m.max_usage), (5, 1, 20_000_000));
        assert_eq!(s.processes, Some(0));
        assert_eq!(s.threads, Some(3));
        assert_eq!(s.threads_max, None);
        assert_eq!(s.io[0].writes, 4);
        assert_eq!(s.spec.cpu_period, 100_000);
        assert_eq!(s.spec.cpu_shares, 2 + 99 * 262_142 / 9_999);
    }

    #[test]
    fn missing_files_give_nothing_and_no_error() {
        let s = read(&[PathBuf::from("/nonexistent/cgroup")], 1);
        assert_eq!(s.cpu, None);
        assert_eq!(s.memory, None);
        assert_eq!(s.processes, None);
        assert!(s.io.is_empty());
    }

    #[test]
    fn sums_containers_into_a_pod() {
        let one = Sample {
            timestamp: 5,
            cpu: Some(Cpu {
                usage_ns: 10,
                user_ns: 6,
                system_ns: 4,
                ..Default::default()
            }),
            memory: Some(Memory {
                usage: 100,
                working_set: 50,
                limit: Some(1000),
                ..Default::default()
            }),
            processes: Some(2),
            io: vec![DeviceIo {
                major: 8,
                reads: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut pod = Sample::default();
        pod.add(&one);
        pod.add(&one);
        assert_eq!(pod.cpu.unwrap().usage_ns, 20);
        assert_eq!(pod.memory.unwrap().working_set, 100);
        assert_eq!(pod.memory.unwrap().limit, Some(2000));
        assert_eq!(pod.processes, Some(4));
        assert_eq!(pod.io.len(), 1);
        assert_eq!(pod.io[0].reads, 2);
    }
}
