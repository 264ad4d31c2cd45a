//! What the control plane knows of each pod: records and the store.
//!
//! A pod's immutable metadata (its ID, sandbox config, creation time) sits
//! apart from its changing status (lifecycle, container record). The store
//! is guarded by one short-held mutex on the control thread; nothing here
//! awaits or performs I/O.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use k8s_cri::v1 as cri;

use super::container::Process;
use super::image::Image;
use super::lifecycle::Lifecycle;
use crate::pool::{PodId, PodPool};

/// The kubelet's identity of a sandbox: RunPodSandbox with the same one is
/// a retry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SandboxKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub attempt: u32,
}

impl SandboxKey {
    pub fn of(metadata: &cri::PodSandboxMetadata) -> Self {
        Self {
            namespace: metadata.namespace.clone(),
            name: metadata.name.clone(),
            uid: metadata.uid.clone(),
            attempt: metadata.attempt,
        }
    }
}

/// Serialised whole into the state database (`persist.rs`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Pod {
    pub id: PodId,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    pub created_at: i64,
    /// Host directory holding the component's socket.
    pub socket_dir: PathBuf,
    pub lifecycle: Lifecycle,
    pub container: Option<Container>,
}

impl Pod {
    pub fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }
}

/// The container's CRI-visible state, apart from the pod lifecycle (a
/// container in a killed pod is still reported as it last was).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ContainerPhase {
    Created,
    Running,
    Exited,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Container {
    pub config: cri::ContainerConfig,
    pub image: Image,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub phase: ContainerPhase,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub log_path: Option<PathBuf>,
    /// The container's state directory (overlay layers, spec, exit record).
    pub dir: PathBuf,
    /// The live handle of the process, rebuilt on recovery from `identity`.
    #[serde(skip)]
    pub process: Option<Process>,
    /// Which processes this container's are, surviving a runtime restart.
    pub identity: Option<super::container::Identity>,
    pub cgroups: Vec<PathBuf>,
}

impl Container {
    /// Records how the process ended. Returns false when this exit was
    /// already recorded (the exit watcher and StopContainer both report).
    pub fn record_exit(&mut self, pid: i32, record: &super::container::ExitRecord) -> bool {
        let current = self.process.as_ref().map(|p| p.pid);
        if self.phase == ContainerPhase::Exited || current != Some(pid) {
            return false;
        }
        self.apply_exit(record);
        true
    }

    /// Records an exit unconditionally (recovery: the process ended while
    /// no runtime watched it).
    pub fn apply_exit(&mut self, record: &super::container::ExitRecord) {
        self.phase = ContainerPhase::Exited;
        self.finished_at = record.finished_at;
        self.exit_code = record.exit_code;
        let (reason, message) = match (&record.start_error, record.exit_code) {
            (Some(error), _) => ("StartError", error.clone()),
            (None, 0) => ("Completed", String::new()),
            (None, _) if self.reason == "OOMKilled" => ("OOMKilled", String::new()),
            (None, code) => match record.signal {
                Some(sig) => (
                    "Error",
                    format!("killed by signal {sig} (exit code {code})"),
                ),
                None => ("Error", format!("exited with code {code}")),
            },
        };
        self.reason = reason.to_owned();
        self.message = message;
    }
}

/// Every pod, by ID, with the kubelet-name index, the ID counter and the
/// pod pool.
#[derive(Debug, Default)]
pub struct Store {
    pub pods: BTreeMap<PodId, Pod>,
    pub names: HashMap<SandboxKey, PodId>,
    pub next_ordinal: u64,
    pub pool: PodPool,
}

pub fn now_nanos() -> i64 {
    super::container::spec::now_nanos()
}
