//! One sample of a container's cgroup counters, on cgroup v2 or v1.
//!
//! Reads only the files of the directories the runtime created for the
//! container (`Container::cgroups`); the parsers take file contents, so
//! they are tested with fixtures of both versions. Nothing here writes.

use std::fs;
use std::path::PathBuf;

/// What the kernel counts for one cgroup (or the sum over a pod's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Unix nanoseconds of the reading.
    pub timestamp: i64,
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub processes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    /// Cumulative CPU time of every task, in nanoseconds.
    pub usage_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage: u64,
    /// usage − inactive_file: what the kubelet evicts on.
    pub working_set: u64,
    pub rss: u64,
    pub cache: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// The limit, if one is set.
    pub limit: Option<u64>,
}

impl Sample {
    /// Adds another container's counters (a pod's are the sum of its
    /// containers': there is no pod-level cgroup).
    pub fn add(&mut self, other: &Sample) {
        self.timestamp = self.timestamp.max(other.timestamp);
        if let Some(o) = other.cpu {
            let c = self.cpu.get_or_insert_with(Cpu::default);
            c.usage_ns += o.usage_ns;
            c.user_ns += o.user_ns;
            c.system_ns += o.system_ns;
        }
        match (&mut self.memory, other.memory) {
            (None, o) => self.memory = o,
            (Some(m), Some(o)) => {
                m.usage += o.usage;
                m.working_set += o.working_set;
                m.rss += o.rss;
                m.cache += o.cache;
                m.page_faults += o.page_faults;
                m.major_page_faults += o.major_page_faults;
                m.limit = match (m.limit, o.limit) {
                    (Some(a), Some(b)) => Some(a.saturating_add(b)),
                    _ => None,
                };
            }
            (Some(_), None) => {}
        }
        if let Some(p) = other.processes {
            *self.processes.get_or_insert(0) += p;
        }
    }
}

/// Reads the container's cgroup directories. A file that is missing (a
/// controller this node lacks, a cgroup already removed) leaves its part
/// `None`; nothing fails.
pub fn read(dirs: &[PathBuf], timestamp: i64) -> Sample {
    let file = |name: &str| -> Option<String> {
        dirs.iter()
            .find_map(|d| fs::read_to_string(d.join(name)).ok())
    };
    let cpu = if let Some(stat) = file("cpu.stat").filter(|s| s.contains("usage_usec")) {
        Some(parse_v2_cpu(&stat))
    } else {
        file("cpuacct.usage").and_then(|usage| {
            let usage_ns = usage.trim().parse().ok()?;
            let (user_ns, system_ns) = file("cpuacct.stat")
                .map(|s| parse_v1_cpuacct_stat(&s, clock_ticks()))
                .unwrap_or_default();
            Some(Cpu {
                usage_ns,
                user_ns,
                system_ns,
            })
        })
    };
    let memory = if let Some(current) = file("memory.current") {
        current.trim().parse().ok().map(|usage| {
            parse_v2_memory(
                usage,
                &file("memory.stat").unwrap_or_default(),
                file("memory.max").as_deref(),
            )
        })
    } else {
        file("memory.usage_in_bytes").and_then(|usage| {
            Some(parse_v1_memory(
                usage.trim().parse().ok()?,
                &file("memory.stat").unwrap_or_default(),
                file("memory.limit_in_bytes").as_deref(),
            ))
        })
    };
    let processes = file("pids.current")
        .and_then(|p| p.trim().parse().ok())
        .or_else(|| file("cgroup.procs").map(|p| p.lines().count() as u64));
    Sample {
        timestamp,
        cpu,
        memory,
        processes,
    }
}

/// `KEY VALUE` lines (memory.stat, cpu.stat, cpuacct.stat).
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

/// cgroup v2: `memory.current`, `memory.stat`, `memory.max` ("max" when
/// unlimited).
pub fn parse_v2_memory(usage: u64, stat: &str, max: Option<&str>) -> Memory {
    let get = |key| field(stat, key).unwrap_or(0);
    Memory {
        usage,
        working_set: usage.saturating_sub(get("inactive_file")),
        rss: get("anon"),
        cache: get("file"),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        limit: max.and_then(|m| m.trim().parse().ok()),
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
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        limit: limit
            .and_then(|l| l.trim().parse().ok())
            .filter(|l| *l < V1_UNLIMITED),
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
        total_cache 8388608\ntotal_rss 4194304\ntotal_pgfault 12345\ntotal_pgmajfault 67\n\
        total_inactive_file 6291456\ntotal_active_file 2097152\n";

    #[test]
    fn parses_v2_cpu_stat_in_nanoseconds() {
        let cpu = parse_v2_cpu(V2_CPU_STAT);
        assert_eq!(
            cpu,
            Cpu {
                usage_ns: 1_523_456_000,
                user_ns: 1_000_000_000,
                system_ns: 523_456_000
            }
        );
    }

    #[test]
    fn parses_v2_memory_with_working_set() {
        let m = parse_v2_memory(16_777_216, V2_MEMORY_STAT, Some("67108864\n"));
        assert_eq!(m.usage, 16_777_216);
        assert_eq!(m.working_set, 16_777_216 - 6_291_456);
        assert_eq!(m.rss, 4_194_304);
        assert_eq!(m.cache, 8_388_608);
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
        fs::write(d.join("cpu.stat"), V2_CPU_STAT).unwrap();
        fs::write(d.join("memory.current"), "16777216\n").unwrap();
        fs::write(d.join("memory.stat"), V2_MEMORY_STAT).unwrap();
        fs::write(d.join("memory.max"), "max\n").unwrap();
        fs::write(d.join("pids.current"), "3\n").unwrap();
        let s = read(&[d.to_path_buf()], 42);
        assert_eq!(s.timestamp, 42);
        assert_eq!(s.cpu.unwrap().usage_ns, 1_523_456_000);
        assert_eq!(s.memory.unwrap().working_set, 16_777_216 - 6_291_456);
        assert_eq!(s.processes, Some(3));
    }

    #[test]
    fn missing_files_give_nothing_and_no_error() {
        let s = read(&[PathBuf::from("/nonexistent/cgroup")], 1);
        assert_eq!(s.cpu, None);
        assert_eq!(s.memory, None);
        assert_eq!(s.processes, None);
    }

    #[test]
    fn sums_containers_into_a_pod() {
        let one = Sample {
            timestamp: 5,
            cpu: Some(Cpu {
                usage_ns: 10,
                user_ns: 6,
                system_ns: 4,
            }),
            memory: Some(Memory {
                usage: 100,
                working_set: 50,
                limit: Some(1000),
                ..Default::default()
            }),
            processes: Some(2),
        };
        let mut pod = Sample::default();
        pod.add(&one);
        pod.add(&one);
        assert_eq!(pod.cpu.unwrap().usage_ns, 20);
        assert_eq!(pod.memory.unwrap().working_set, 100);
        assert_eq!(pod.memory.unwrap().limit, Some(2000));
        assert_eq!(pod.processes, Some(4));
    }
}
