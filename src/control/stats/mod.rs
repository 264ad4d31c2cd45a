//! Container and pod sandbox stats and metrics for the kubelet, from the
//! containers' cgroups and writable layers.
//!
//! Owns the CRI stats verbs (ContainerStats, ListContainerStats,
//! PodSandboxStats, ListPodSandboxStats, ListMetricDescriptors,
//! ListPodSandboxMetrics) and the filesystem usage of ImageFsInfo. It
//! reads the store for a moment to copy what it needs ([`snapshot`], the one
//! place that knows the store's layout), never takes a pod's operation
//! lock, and does every file read on the blocking pool, so a slow walk never
//! delays status calls or the control thread. It keeps the previous CPU
//! sample per container (for nano-cores) and a short-lived cache of layer
//! walks; it writes nothing to disk and changes no pod.

mod blkio;
mod cgroup;
mod fs;
mod metrics;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use super::runtime::Runtime;
use super::state::{now_nanos, ContainerPhase, Store};
use super::Error;

pub use cgroup::Sample;

/// How long a walk of a writable layer is reused: the kubelet asks every
/// 10 s, crictl whenever it likes; a tenant's tree is walked at most this
/// often (a walk at its bound, 200,000 entries, takes about 1.5 s of one
/// core in a debug build).
const LAYER_CACHE_TTL: Duration = Duration::from_secs(10);

/// What stats need of one container, copied out of the store.
#[derive(Debug, Clone)]
pub(crate) struct ContainerTarget {
    pub id: String,
    pub pod_id: String,
    pub metadata: Option<cri::ContainerMetadata>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub image: String,
    pub cgroups: Vec<PathBuf>,
    /// The writable layer (overlay upper directory).
    pub upper: PathBuf,
    pub running: bool,
    pub started_at: i64,
}

/// What stats need of one pod sandbox and its containers.
#[derive(Debug, Clone)]
pub(crate) struct PodTarget {
    pub id: String,
    pub metadata: cri::PodSandboxMetadata,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub containers: Vec<ContainerTarget>,
}

/// The one function that reads the store's layout for stats.
pub(crate) fn snapshot(store: &Store) -> Vec<PodTarget> {
    store
        .pods
        .values()
        .map(|pod| PodTarget {
            id: pod.id.to_string(),
            metadata: pod.metadata(),
            labels: pod.config.labels.clone(),
            annotations: pod.config.annotations.clone(),
            containers: pod
                .containers
                .iter()
                .map(|c| ContainerTarget {
                    id: pod.container_id(c).to_string(),
                    pod_id: pod.id.to_string(),
                    metadata: c.config.metadata.clone(),
                    labels: c.config.labels.clone(),
                    annotations: c.config.annotations.clone(),
                    image: c
                        .config
                        .image
                        .as_ref()
                        .map(|i| i.image.clone())
                        .unwrap_or_default(),
                    cgroups: c.cgroups.clone(),
                    upper: c.dir.join("upper"),
                    running: c.phase == ContainerPhase::Running && !c.cgroups.is_empty(),
                    started_at: c.started_at,
                })
                .collect(),
        })
        .collect()
}

/// The state stats keep between calls.
struct Memory {
    /// Previous (timestamp, cumulative CPU ns) per container or pod key.
    cpu: Mutex<HashMap<String, (i64, u64)>>,
    /// Recent walks of writable layers and the container directory.
    layers: Mutex<HashMap<PathBuf, (Instant, fs::Usage)>>,
}

fn memory() -> &'static Memory {
    static MEMORY: OnceLock<Memory> = OnceLock::new();
    MEMORY.get_or_init(|| Memory {
        cpu: Mutex::new(HashMap::new()),
        layers: Mutex::new(HashMap::new()),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// CPU nano-cores since the previous sample under `key`, recording this
/// one. `None` on the first sample or after a counter reset.
fn nano_cores(key: &str, timestamp: i64, usage_ns: u64) -> Option<u64> {
    let mut cpu = lock(&memory().cpu);
    let previous = cpu.insert(key.to_owned(), (timestamp, usage_ns));
    let (t0, u0) = previous?;
    if timestamp <= t0 || usage_ns < u0 {
        return None;
    }
    let elapsed = (timestamp - t0) as u128;
    Some(((usage_ns - u0) as u128 * 1_000_000_000 / elapsed) as u64)
}

/// Forgets the samples of containers and pods that no longer exist.
fn prune(pods: &[PodTarget]) {
    let mut live: std::collections::HashSet<String> = std::collections::HashSet::new();
    for pod in pods {
        live.insert(pod_key(&pod.id));
        live.extend(pod.containers.iter().map(|c| c.id.clone()));
    }
    lock(&memory().cpu).retain(|k, _| live.contains(k));
    let uppers: std::collections::HashSet<&Path> = pods
        .iter()
        .flat_map(|p| p.containers.iter().map(|c| c.upper.as_path()))
        .collect();
    let now = Instant::now();
    lock(&memory().layers).retain(|k, (at, _)| {
        uppers.contains(k.as_path()) || now.saturating_duration_since(*at) < LAYER_CACHE_TTL
    });
}

fn pod_key(id: &str) -> String {
    format!("pod/{id}")
}

/// A tree's usage, walked at most once per [`LAYER_CACHE_TTL`].
fn tree_usage(path: &Path) -> fs::Usage {
    if let Some((at, usage)) = lock(&memory().layers).get(path) {
        if at.elapsed() < LAYER_CACHE_TTL {
            return *usage;
        }
    }
    let usage = match fs::usage(path) {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "disk usage walk failed");
            fs::Usage::default()
        }
    };
    if usage.truncated {
        tracing::warn!(
            path = %path.display(),
            "disk usage walk stopped at its bound ({} entries, depth {}): usage is a lower bound",
            fs::MAX_ENTRIES,
            fs::MAX_DEPTH
        );
    }
    lock(&memory().layers).insert(path.to_path_buf(), (Instant::now(), usage));
    usage
}

/// One container's readings.
pub(crate) struct ContainerReading {
    pub target: ContainerTarget,
    pub sample: Sample,
    pub nano_cores: Option<u64>,
    pub layer: fs::Usage,
}

/// One pod's readings: the sum of its running containers'.
pub(crate) struct PodReading {
    pub target: PodTarget,
    pub sample: Sample,
    pub nano_cores: Option<u64>,
    pub containers: Vec<ContainerReading>,
}

fn read_container(target: &ContainerTarget) -> ContainerReading {
    let timestamp = now_nanos();
    let sample = if target.running {
        cgroup::read(&target.cgroups, timestamp)
    } else {
        Sample {
            timestamp,
            ..Default::default()
        }
    };
    let nano_cores = sample
        .cpu
        .and_then(|c| nano_cores(&target.id, timestamp, c.usage_ns));
    ContainerReading {
        layer: tree_usage(&target.upper),
        target: target.clone(),
        sample,
        nano_cores,
    }
}

fn read_pod(target: PodTarget) -> PodReading {
    let containers: Vec<ContainerReading> = target.containers.iter().map(read_container).collect();
    let mut sample = Sample {
        timestamp: now_nanos(),
        ..Default::default()
    };
    for c in containers.iter().filter(|c| c.target.running) {
        sample.add(&c.sample);
    }
    let nano_cores = sample
        .cpu
        .and_then(|c| nano_cores(&pod_key(&target.id), sample.timestamp, c.usage_ns));
    PodReading {
        target,
        sample,
        nano_cores,
        containers,
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Io {
        what: "read stats".into(),
        source: std::io::Error::other(e),
    })
}

impl Runtime {
    fn stats_targets(&self) -> Vec<PodTarget> {
        let pods = snapshot(&self.store());
        prune(&pods);
        pods
    }

    pub async fn container_stats(&self, container_id: &str) -> Result<cri::ContainerStats, Error> {
        let target = self
            .stats_targets()
            .into_iter()
            .flat_map(|p| p.containers)
            .find(|c| c.id == container_id)
            .ok_or_else(|| Error::NotFound(format!("container {container_id:?} not found")))?;
        blocking(move || to_cri_container(&read_container(&target))).await
    }

    pub async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>, Error> {
        let filter = filter.unwrap_or_default();
        let targets: Vec<ContainerTarget> = self
            .stats_targets()
            .into_iter()
            .flat_map(|p| p.containers)
            .filter(|c| filter.id.is_empty() || c.id == filter.id)
            .filter(|c| filter.pod_sandbox_id.is_empty() || c.pod_id == filter.pod_sandbox_id)
            .filter(|c| selects(&filter.label_selector, &c.labels))
            .collect();
        blocking(move || {
            targets
                .iter()
                .map(|t| to_cri_container(&read_container(t)))
                .collect()
        })
        .await
    }

    pub async fn pod_sandbox_stats(&self, pod_id: &str) -> Result<cri::PodSandboxStats, Error> {
        let target = self
            .stats_targets()
            .into_iter()
            .find(|p| p.id == pod_id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {pod_id:?} not found")))?;
        blocking(move || to_cri_pod(&read_pod(target))).await
    }

    pub async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>, Error> {
        let filter = filter.unwrap_or_default();
        let targets: Vec<PodTarget> = self
            .stats_targets()
            .into_iter()
            .filter(|p| filter.id.is_empty() || p.id == filter.id)
            .filter(|p| selects(&filter.label_selector, &p.labels))
            .collect();
        blocking(move || {
            targets
                .into_iter()
                .map(|t| to_cri_pod(&read_pod(t)))
                .collect()
        })
        .await
    }

    pub fn list_metric_descriptors(&self) -> Vec<cri::MetricDescriptor> {
        metrics::descriptors()
    }

    pub async fn list_pod_sandbox_metrics(&self) -> Result<Vec<cri::PodSandboxMetrics>, Error> {
        let targets = self.stats_targets();
        let mountpoint = self.containers_dir();
        blocking(move || {
            targets
                .into_iter()
                .map(|t| metrics::pod_metrics(&read_pod(t), &mountpoint))
                .collect()
        })
        .await
    }

    /// ImageFsInfo: the image store's usage and the container directory's
    /// (every writable layer, spec and log of the shims).
    pub async fn fs_info(&self) -> Result<cri::ImageFsInfoResponse, Error> {
        let images = std::sync::Arc::clone(&self.images);
        let containers = self.containers_dir();
        blocking(move || {
            let image = images.usage()?;
            let timestamp = now_nanos();
            let usage = tree_usage(&containers);
            Ok(cri::ImageFsInfoResponse {
                image_filesystems: vec![filesystem(
                    timestamp,
                    &image.mountpoint,
                    image.used_bytes,
                    image.inodes_used,
                )],
                container_filesystems: vec![filesystem(
                    timestamp,
                    &containers,
                    usage.bytes,
                    usage.inodes,
                )],
            })
        })
        .await?
    }

    fn containers_dir(&self) -> PathBuf {
        self.config.state_dir.join("containers")
    }
}

fn filesystem(timestamp: i64, mountpoint: &Path, bytes: u64, inodes: u64) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: mountpoint.display().to_string(),
        }),
        used_bytes: Some(value(bytes)),
        inodes_used: Some(value(inodes)),
    }
}

fn value(value: u64) -> cri::UInt64Value {
    cri::UInt64Value { value }
}

fn cpu_usage(sample: &Sample, nano_cores: Option<u64>) -> Option<cri::CpuUsage> {
    sample.cpu.map(|c| cri::CpuUsage {
        timestamp: sample.timestamp,
        usage_core_nano_seconds: Some(value(c.usage_ns)),
        usage_nano_cores: nano_cores.map(value),
    })
}

fn memory_usage(sample: &Sample) -> Option<cri::MemoryUsage> {
    sample.memory.map(|m| cri::MemoryUsage {
        timestamp: sample.timestamp,
        working_set_bytes: Some(value(m.working_set)),
        available_bytes: m.limit.map(|l| value(l.saturating_sub(m.working_set))),
        usage_bytes: Some(value(m.usage)),
        rss_bytes: Some(value(m.rss)),
        page_faults: Some(value(m.page_faults)),
        major_page_faults: Some(value(m.major_page_faults)),
    })
}

fn to_cri_container(r: &ContainerReading) -> cri::ContainerStats {
    // The filesystem identifier is the directory holding every container's
    // state (`<state>/containers`), as ImageFsInfo reports it.
    let containers_dir = r
        .target
        .upper
        .parent()
        .and_then(Path::parent)
        .unwrap_or(&r.target.upper);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.target.id.clone(),
            metadata: r.target.metadata.clone(),
            labels: r.target.labels.clone(),
            annotations: r.target.annotations.clone(),
        }),
        cpu: cpu_usage(&r.sample, r.nano_cores),
        memory: memory_usage(&r.sample),
        writable_layer: Some(filesystem(
            r.sample.timestamp,
            containers_dir,
            r.layer.bytes,
            r.layer.inodes,
        )),
        swap: None,
    }
}

fn to_cri_pod(r: &PodReading) -> cri::PodSandboxStats {
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: r.target.id.clone(),
            metadata: Some(r.target.metadata.clone()),
            labels: r.target.labels.clone(),
            annotations: r.target.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: cpu_usage(&r.sample, r.nano_cores),
            memory: memory_usage(&r.sample),
            // Components share the node's network: no per-pod counters.
            network: None,
            process: r.sample.processes.map(|n| cri::ProcessUsage {
                timestamp: r.sample.timestamp,
                process_count: Some(value(n)),
            }),
            containers: r.containers.iter().map(to_cri_container).collect(),
        }),
        windows: None,
    }
}

/// Every selector label must be present with the same value.
fn selects(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_cores_between_samples() {
        let key = "test/nano-cores";
        assert_eq!(nano_cores(key, 1_000_000_000, 0), None);
        // Half a core over one second.
        assert_eq!(
            nano_cores(key, 2_000_000_000, 500_000_000),
            Some(500_000_000)
        );
        // A reset counter (a new process in the same key) gives nothing.
        assert_eq!(nano_cores(key, 3_000_000_000, 10), None);
        assert_eq!(nano_cores(key, 3_000_000_000, 20), None, "no time passed");
    }
}
