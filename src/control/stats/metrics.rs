//! The CRI metrics of ListMetricDescriptors / ListPodSandboxMetrics: the
//! cAdvisor names and labels the kubelet's `/metrics/cadvisor` serves when
//! its `PodAndContainerStatsFromCRI` gate takes them from the runtime.
//!
//! The kubelet turns each descriptor into a Prometheus description with the
//! descriptor's label keys, and each metric into a sample with its label
//! values in the same order: both lists are built here from one table.

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

const fn def(
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    extra: &'static [&'static str],
) -> Def {
    Def {
        name,
        help,
        kind,
        extra,
    }
}

use cri::MetricType::{Counter, Gauge};

const DEFS: &[Def] = &[
    def(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        Counter,
        &[],
    ),
    def(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        Counter,
        &[],
    ),
    def(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        Counter,
        &[],
    ),
    def(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        Gauge,
        &[],
    ),
    def(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        Gauge,
        &[],
    ),
    def("container_memory_rss", "Size of RSS in bytes.", Gauge, &[]),
    def(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        Gauge,
        &[],
    ),
    def(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        Counter,
        &["failure_type", "scope"],
    ),
    def(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        Gauge,
        &[],
    ),
    def(
        "container_processes",
        "Number of processes running inside the container.",
        Gauge,
        &[],
    ),
    def(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        Gauge,
        &["device"],
    ),
    def(
        "container_fs_inodes_total",
        "Number of inodes used by the container on this filesystem.",
        Gauge,
        &["device"],
    ),
    def(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        Gauge,
        &[],
    ),
    def(
        "container_last_seen",
        "Last time a container was seen by the exporter",
        Gauge,
        &[],
    ),
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

/// Label values in [`LABELS`] order for one container, or for the pod
/// itself (`container` empty, as cAdvisor shows a pod's cgroup).
struct Labels {
    values: Vec<String>,
}

/// The metrics of one pod: the pod's sums (container label empty) and each
/// container's own.
pub fn pod_metrics(pod: &PodReading, device: &Path) -> cri::PodSandboxMetrics {
    let namespace = pod.target.metadata.namespace.clone();
    let pod_name = pod.target.metadata.name.clone();
    let pod_labels = Labels {
        values: vec![
            String::new(),
            pod.target.id.clone(),
            String::new(),
            pod.target.id.clone(),
            namespace.clone(),
            pod_name.clone(),
        ],
    };
    let running = pod.containers.iter().any(|c| c.target.running);
    let metrics = if running {
        sample_metrics(&pod.sample, &pod_labels, None, 0)
    } else {
        Vec::new()
    };
    let container_metrics = pod
        .containers
        .iter()
        .map(|c| cri::ContainerMetrics {
            container_id: c.target.id.clone(),
            metrics: container(c, &namespace, &pod_name, device),
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: pod.target.id.clone(),
        metrics,
        container_metrics,
    }
}

fn container(c: &ContainerReading, namespace: &str, pod: &str, device: &Path) -> Vec<cri::Metric> {
    let labels = Labels {
        values: vec![
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
    };
    let mut out = if c.target.running {
        sample_metrics(&c.sample, &labels, Some(c), c.target.started_at)
    } else {
        Vec::new()
    };
    let device = device.display().to_string();
    let t = c.sample.timestamp;
    out.push(metric(
        "container_fs_usage_bytes",
        t,
        &labels,
        &[&device],
        c.layer.bytes,
    ));
    out.push(metric(
        "container_fs_inodes_total",
        t,
        &labels,
        &[&device],
        c.layer.inodes,
    ));
    out
}

fn sample_metrics(
    s: &Sample,
    labels: &Labels,
    container: Option<&ContainerReading>,
    started_at: i64,
) -> Vec<cri::Metric> {
    let t = s.timestamp;
    let mut out = Vec::new();
    let mut push = |name: &str, extra: &[&str], v: u64| out.push(metric(name, t, labels, extra, v));
    if let Some(cpu) = s.cpu {
        push(
            "container_cpu_usage_seconds_total",
            &[],
            cpu.usage_ns / 1_000_000_000,
        );
        push(
            "container_cpu_user_seconds_total",
            &[],
            cpu.user_ns / 1_000_000_000,
        );
        push(
            "container_cpu_system_seconds_total",
            &[],
            cpu.system_ns / 1_000_000_000,
        );
    }
    if let Some(m) = s.memory {
        push("container_memory_usage_bytes", &[], m.usage);
        push("container_memory_working_set_bytes", &[], m.working_set);
        push("container_memory_rss", &[], m.rss);
        push("container_memory_cache", &[], m.cache);
        push(
            "container_memory_failures_total",
            &["pgfault", "container"],
            m.page_faults,
        );
        push(
            "container_memory_failures_total",
            &["pgmajfault", "container"],
            m.major_page_faults,
        );
        push(
            "container_spec_memory_limit_bytes",
            &[],
            m.limit.unwrap_or(0),
        );
    }
    if let Some(p) = s.processes {
        push("container_processes", &[], p);
    }
    if container.is_some() {
        push(
            "container_start_time_seconds",
            &[],
            (started_at / 1_000_000_000) as u64,
        );
    }
    push("container_last_seen", &[], (t / 1_000_000_000) as u64);
    out
}

fn metric(name: &str, timestamp: i64, labels: &Labels, extra: &[&str], v: u64) -> cri::Metric {
    let kind = DEFS
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.kind)
        .unwrap_or(Gauge);
    cri::Metric {
        name: name.to_owned(),
        timestamp,
        metric_type: kind as i32,
        label_values: labels
            .values
            .iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect(),
        value: Some(cri::UInt64Value { value: v }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_matches_its_descriptor() {
        let descriptors = descriptors();
        let names: Vec<&str> = descriptors.iter().map(|d| d.name.as_str()).collect();
        for wanted in [
            "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes",
            "container_memory_usage_bytes",
            "container_memory_rss",
            "container_fs_usage_bytes",
            "container_processes",
        ] {
            assert!(names.contains(&wanted), "{wanted} missing");
        }
        let sample = Sample {
            timestamp: 3_000_000_000,
            cpu: Some(super::super::cgroup::Cpu {
                usage_ns: 2_500_000_000,
                user_ns: 2_000_000_000,
                system_ns: 500_000_000,
            }),
            memory: Some(super::super::cgroup::Memory {
                usage: 10,
                working_set: 7,
                ..Default::default()
            }),
            processes: Some(1),
        };
        let labels = Labels {
            values: vec![String::new(); LABELS.len()],
        };
        let metrics = sample_metrics(&sample, &labels, None, 0);
        for m in &metrics {
            let d = descriptors.iter().find(|d| d.name == m.name).unwrap();
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
        }
        let cpu = metrics
            .iter()
            .find(|m| m.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(cpu.value.as_ref().unwrap().value, 2);
        assert_eq!(cpu.metric_type, cri::MetricType::Counter as i32);
    }
}
