//! The CRI metrics of ListMetricDescriptors / ListPodSandboxMetrics: the
//! cAdvisor names and labels the kubelet's `/metrics/cadvisor` serves when
//! its `PodAndContainerStatsFromCRI` gate takes them from the runtime (and
//! the set critest's "returning metrics descriptors" spec expects).
//!
//! The kubelet turns each descriptor into a Prometheus description with the
//! descriptor's label keys, and each metric into a sample with its label
//! values in the same order: both come from the one table [`DEFS`]. CRI
//! metric values are integers: second counters are whole seconds.
//! Network metrics are described but carry no samples: components share
//! the node's network namespace, so there are no per-pod counters (as the
//! CRI stats report no network usage).

use std::path::Path;

use k8s_cri::v1 as cri;

use super::{ContainerReading, PodReading, Sample};

/// cAdvisor's labels on every container metric.
const LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];

struct Def {
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    /// Labels after [`LABELS`].
    extra: &'static [&'static str],
}

use cri::MetricType::{Counter, Gauge};

macro_rules! defs {
    ($($name:literal, $kind:ident, [$($extra:literal),*], $help:literal;)*) => {
        &[$(Def { name: $name, help: $help, kind: $kind, extra: &[$($extra),*] },)*]
    };
}

const DEFS: &[Def] = defs![
    "container_cpu_usage_seconds_total", Counter, [], "Cumulative cpu time consumed in seconds.";
    "container_cpu_user_seconds_total", Counter, [], "Cumulative user cpu time consumed in seconds.";
    "container_cpu_system_seconds_total", Counter, [], "Cumulative system cpu time consumed in seconds.";
    "container_cpu_cfs_periods_total", Counter, [], "Number of elapsed enforcement period intervals.";
    "container_cpu_cfs_throttled_periods_total", Counter, [], "Number of throttled period intervals.";
    "container_cpu_cfs_throttled_seconds_total", Counter, [], "Total time duration the container has been throttled.";
    "container_memory_cache", Gauge, [], "Number of bytes of page cache memory.";
    "container_memory_rss", Gauge, [], "Size of RSS in bytes.";
    "container_memory_kernel_usage", Gauge, [], "Size of kernel memory allocated in bytes.";
    "container_memory_mapped_file", Gauge, [], "Size of memory mapped files in bytes.";
    "container_memory_swap", Gauge, [], "Container swap usage in bytes.";
    "container_memory_failcnt", Counter, [], "Number of memory usage hits limits";
    "container_memory_usage_bytes", Gauge, [], "Current memory usage in bytes, including all memory regardless of when it was accessed";
    "container_memory_max_usage_bytes", Gauge, [], "Maximum memory usage recorded in bytes";
    "container_memory_working_set_bytes", Gauge, [], "Current working set in bytes.";
    "container_memory_failures_total", Counter, ["failure_type", "scope"], "Cumulative count of memory allocation failures.";
    "container_oom_events_total", Counter, [], "Count of out of memory events observed for the container";
    "container_spec_cpu_period", Gauge, [], "CPU period of the container.";
    "container_spec_cpu_quota", Gauge, [], "CPU quota of the container.";
    "container_spec_cpu_shares", Gauge, [], "CPU share of the container.";
    "container_spec_memory_limit_bytes", Gauge, [], "Memory limit for the container.";
    "container_spec_memory_swap_limit_bytes", Gauge, [], "Memory swap limit for the container.";
    "container_processes", Gauge, [], "Number of processes running inside the container.";
    "container_threads", Gauge, [], "Number of threads running inside the container";
    "container_threads_max", Gauge, [], "Maximum number of threads allowed inside the container, infinity if value is zero";
    "container_file_descriptors", Gauge, [], "Number of open file descriptors for the container.";
    "container_sockets", Gauge, [], "Number of open sockets for the container.";
    "container_fs_usage_bytes", Gauge, ["device"], "Number of bytes that are consumed by the container on this filesystem.";
    "container_fs_limit_bytes", Gauge, ["device"], "Number of bytes that can be consumed by the container on this filesystem.";
    "container_fs_inodes_free", Gauge, ["device"], "Number of available Inodes";
    "container_fs_inodes_total", Gauge, ["device"], "Number of Inodes";
    "container_fs_reads_bytes_total", Counter, ["device"], "Cumulative count of bytes read";
    "container_fs_reads_total", Counter, ["device"], "Cumulative count of reads completed";
    "container_fs_writes_bytes_total", Counter, ["device"], "Cumulative count of bytes written";
    "container_fs_writes_total", Counter, ["device"], "Cumulative count of writes completed";
    "container_blkio_device_usage_total", Counter, ["device", "major", "minor", "operation"], "Blkio Device bytes usage";
    "container_network_receive_bytes_total", Counter, ["interface"], "Cumulative count of bytes received";
    "container_network_receive_packets_total", Counter, ["interface"], "Cumulative count of packets received";
    "container_network_receive_packets_dropped_total", Counter, ["interface"], "Cumulative count of packets dropped while receiving";
    "container_network_receive_errors_total", Counter, ["interface"], "Cumulative count of errors encountered while receiving";
    "container_network_transmit_bytes_total", Counter, ["interface"], "Cumulative count of bytes transmitted";
    "container_network_transmit_packets_total", Counter, ["interface"], "Cumulative count of packets transmitted";
    "container_network_transmit_packets_dropped_total", Counter, ["interface"], "Cumulative count of packets dropped while transmitting";
    "container_network_transmit_errors_total", Counter, ["interface"], "Cumulative count of errors encountered while transmitting";
    "container_start_time_seconds", Gauge, [], "Start time of the container since unix epoch in seconds.";
    "container_last_seen", Gauge, [], "Last time a container was seen by the exporter";
];

pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DEFS.iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.to_owned(),
            help: d.help.to_owned(),
            label_keys: LABELS
                .iter()
                .chain(d.extra)
                .map(|s| s.to_string())
                .collect(),
        })
        .collect()
}

/// Builds metrics with one set of [`LABELS`] values.
struct Out {
    labels: Vec<String>,
    timestamp: i64,
    metrics: Vec<cri::Metric>,
}

impl Out {
    fn push(&mut self, name: &str, extra: &[&str], value: u64) {
        let def = DEFS.iter().find(|d| d.name == name);
        debug_assert!(
            def.is_some_and(|d| d.extra.len() == extra.len()),
            "{name}: labels do not match its descriptor"
        );
        self.metrics.push(cri::Metric {
            name: name.to_owned(),
            timestamp: self.timestamp,
            metric_type: def.map(|d| d.kind).unwrap_or(Gauge) as i32,
            label_values: self
                .labels
                .iter()
                .cloned()
                .chain(extra.iter().map(|s| s.to_string()))
                .collect(),
            value: Some(cri::UInt64Value { value }),
        });
    }
}

/// Capacity of the filesystem holding the writable layers.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsCapacity {
    pub limit_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

pub fn fs_capacity(dir: &Path) -> Option<FsCapacity> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(FsCapacity {
        limit_bytes: st.blocks() as u64 * st.fragment_size() as u64,
        inodes_total: st.files() as u64,
        inodes_free: st.files_free() as u64,
    })
}

/// The metrics of one pod: the pod's sums (container label empty) and each
/// container's own.
pub fn pod_metrics(pod: &PodReading, device: &Path) -> cri::PodSandboxMetrics {
    let namespace = pod.target.metadata.namespace.clone();
    let pod_name = pod.target.metadata.name.clone();
    let capacity = fs_capacity(device);
    let device = device.display().to_string();
    let mut out = Out {
        labels: vec![
            String::new(),
            pod.target.id.clone(),
            String::new(),
            pod.target.id.clone(),
            namespace.clone(),
            pod_name.clone(),
        ],
        timestamp: pod.sample.timestamp,
        metrics: Vec::new(),
    };
    if pod.containers.iter().any(|c| c.target.running) {
        sample_metrics(&mut out, &pod.sample);
    }
    let container_metrics = pod
        .containers
        .iter()
        .map(|c| cri::ContainerMetrics {
            container_id: c.target.id.clone(),
            metrics: container(c, &namespace, &pod_name, &device, capacity),
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: pod.target.id.clone(),
        metrics: out.metrics,
        container_metrics,
    }
}

fn container(
    c: &ContainerReading,
    namespace: &str,
    pod: &str,
    device: &str,
    capacity: Option<FsCapacity>,
) -> Vec<cri::Metric> {
    let mut out = Out {
        labels: vec![
            c.target
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            c.target.id.clone(),
            c.target.image.clone(),
            c.target.id.clone(),
            namespace.to_owned(),
            pod.to_owned(),
        ],
        timestamp: c.sample.timestamp,
        metrics: Vec::new(),
    };
    if c.target.running {
        sample_metrics(&mut out, &c.sample);
        let spec = c.sample.spec;
        out.push("container_spec_cpu_period", &[], spec.cpu_period);
        out.push("container_spec_cpu_quota", &[], spec.cpu_quota);
        out.push("container_spec_cpu_shares", &[], spec.cpu_shares);
        out.push(
            "container_spec_memory_limit_bytes",
            &[],
            c.sample.memory.and_then(|m| m.limit).unwrap_or(0),
        );
        out.push(
            "container_spec_memory_swap_limit_bytes",
            &[],
            spec.memory_swap_limit,
        );
        out.push(
            "container_start_time_seconds",
            &[],
            (c.target.started_at / 1_000_000_000) as u64,
        );
    }
    out.push("container_fs_usage_bytes", &[device], c.layer.bytes);
    if let Some(cap) = capacity {
        out.push("container_fs_limit_bytes", &[device], cap.limit_bytes);
        out.push("container_fs_inodes_total", &[device], cap.inodes_total);
        out.push("container_fs_inodes_free", &[device], cap.inodes_free);
    }
    out.metrics
}

/// The name of a block device (`/dev/sda`), from sysfs; else `MAJ:MIN`.
fn device_name(major: u32, minor: u32) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(|n| format!("/dev/{n}")))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

fn sample_metrics(out: &mut Out, s: &Sample) {
    const NS: u64 = 1_000_000_000;
    if let Some(cpu) = s.cpu {
        out.push("container_cpu_usage_seconds_total", &[], cpu.usage_ns / NS);
        out.push("container_cpu_user_seconds_total", &[], cpu.user_ns / NS);
        out.push(
            "container_cpu_system_seconds_total",
            &[],
            cpu.system_ns / NS,
        );
        out.push("container_cpu_cfs_periods_total", &[], cpu.periods);
        out.push(
            "container_cpu_cfs_throttled_periods_total",
            &[],
            cpu.throttled_periods,
        );
        out.push(
            "container_cpu_cfs_throttled_seconds_total",
            &[],
            cpu.throttled_ns / NS,
        );
    }
    if let Some(m) = s.memory {
        out.push("container_memory_cache", &[], m.cache);
        out.push("container_memory_rss", &[], m.rss);
        out.push("container_memory_kernel_usage", &[], m.kernel);
        out.push("container_memory_mapped_file", &[], m.mapped_file);
        out.push("container_memory_swap", &[], m.swap);
        out.push("container_memory_failcnt", &[], m.failcnt);
        out.push("container_memory_usage_bytes", &[], m.usage);
        out.push("container_memory_max_usage_bytes", &[], m.max_usage);
        out.push("container_memory_working_set_bytes", &[], m.working_set);
        for scope in ["container", "hierarchy"] {
            out.push(
                "container_memory_failures_total",
                &["pgfault", scope],
                m.page_faults,
            );
            out.push(
                "container_memory_failures_total",
                &["pgmajfault", scope],
                m.major_page_faults,
            );
        }
        out.push("container_oom_events_total", &[], m.oom_kills);
    }
    let counts = [
        ("container_processes", s.processes),
        ("container_threads", s.threads),
        (
            "container_threads_max",
            s.threads_max.or(s.threads.map(|_| 0)),
        ),
        ("container_file_descriptors", s.file_descriptors),
        ("container_sockets", s.sockets),
    ];
    for (name, value) in counts {
        if let Some(v) = value {
            out.push(name, &[], v);
        }
    }
    for d in &s.io {
        let device = device_name(d.major, d.minor);
        let (major, minor) = (d.major.to_string(), d.minor.to_string());
        out.push("container_fs_reads_bytes_total", &[&device], d.read_bytes);
        out.push("container_fs_reads_total", &[&device], d.reads);
        out.push("container_fs_writes_bytes_total", &[&device], d.write_bytes);
        out.push("container_fs_writes_total", &[&device], d.writes);
        for (operation, value) in [("Read", d.read_bytes), ("Write", d.write_bytes)] {
            out.push(
                "container_blkio_device_usage_total",
                &[&device, &major, &minor, operation],
                value,
            );
        }
    }
    out.push(
        "container_last_seen",
        &[],
        (s.timestamp / 1_000_000_000) as u64,
    );
}

#[cfg(test)]
mod tests {
    use super::super::cgroup::{Cpu, DeviceIo, Memory};
    use super::*;

    #[test]
    fn every_metric_matches_its_descriptor() {
        let descriptors = descriptors();
        let names: Vec<&str> = descriptors.iter().map(|d| d.name.as_str()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a descriptor is listed twice");
        let sample = Sample {
            timestamp: 3_000_000_000,
            cpu: Some(Cpu {
                usage_ns: 2_500_000_000,
                ..Default::default()
            }),
            memory: Some(Memory {
                usage: 10,
                working_set: 7,
                ..Default::default()
            }),
            processes: Some(1),
            threads: Some(2),
            file_descriptors: Some(3),
            sockets: Some(1),
            io: vec![DeviceIo {
                major: 8,
                read_bytes: 5,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut out = Out {
            labels: vec![String::new(); LABELS.len()],
            timestamp: sample.timestamp,
            metrics: Vec::new(),
        };
        sample_metrics(&mut out, &sample);
        for m in &out.metrics {
            let d = descriptors.iter().find(|d| d.name == m.name).unwrap();
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
        }
        let cpu = out
            .metrics
            .iter()
            .find(|m| m.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(cpu.value.as_ref().unwrap().value, 2);
        assert_eq!(cpu.metric_type, cri::MetricType::Counter as i32);
        assert!(out
            .metrics
            .iter()
            .any(|m| m.name == "container_blkio_device_usage_total"));
    }
}
