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
    /// The state of the pod's current container (SPEC.md §4).
    pub lifecycle: Lifecycle,
    /// Every container of the pod, oldest first. When `lifecycle` is
    /// Created, Starting, Running or Stopped, the last is the current one;
    /// the others have exited (earlier attempts the kubelet restarted) and
    /// stay listable until RemoveContainer. At most one ever runs.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// The sequence number of the pod's next container.
    #[serde(default)]
    pub next_seq: u32,
    /// Databases written before restarts held the one container here.
    #[serde(default, rename = "container", skip_serializing)]
    legacy_container: Option<Container>,
}

impl Pod {
    pub fn new(
        id: PodId,
        config: cri::PodSandboxConfig,
        runtime_handler: String,
        socket_dir: PathBuf,
    ) -> Self {
        Self {
            id,
            config,
            runtime_handler,
            created_at: now_nanos(),
            socket_dir,
            lifecycle: Lifecycle::Initiated,
            containers: Vec::new(),
            next_seq: 0,
            legacy_container: None,
        }
    }

    pub fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// Moves a record of an older database into the current shape.
    pub fn upgrade(&mut self) {
        if let Some(container) = self.legacy_container.take() {
            self.containers.insert(0, container);
        }
        let after_last = self.containers.iter().map(|c| c.seq + 1).max();
        self.next_seq = self.next_seq.max(after_last.unwrap_or(0));
    }

    /// The current container: the last one, while the lifecycle has one.
    pub fn current(&self) -> Option<&Container> {
        self.has_current().then(|| self.containers.last()).flatten()
    }

    pub fn current_mut(&mut self) -> Option<&mut Container> {
        if self.has_current() {
            self.containers.last_mut()
        } else {
            None
        }
    }

    fn has_current(&self) -> bool {
        matches!(
            self.lifecycle,
            Lifecycle::Created | Lifecycle::Starting | Lifecycle::Running | Lifecycle::Stopped
        )
    }

    pub fn container(&self, seq: u32) -> Option<&Container> {
        self.containers.iter().find(|c| c.seq == seq)
    }

    pub fn container_mut(&mut self, seq: u32) -> Option<&mut Container> {
        self.containers.iter_mut().find(|c| c.seq == seq)
    }

    /// Whether `seq` is the current container.
    pub fn is_current(&self, seq: u32) -> bool {
        self.current().is_some_and(|c| c.seq == seq)
    }

    pub fn container_id(&self, c: &Container) -> ContainerId {
        ContainerId {
            pod: self.id.clone(),
            seq: c.seq,
        }
    }
}

/// A container's ID: the pod's for its first container
/// (`DOMAIN:SERVICE@VERSION#N`), `DOMAIN:SERVICE@VERSION#N.K` for the K-th
/// one after it (the kubelet's restarts). K counts up per pod and is never
/// reused, so every attempt has its own ID; no `/`, since the kubelet puts
/// container IDs in file names under /var/log/containers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId {
    pub pod: PodId,
    pub seq: u32,
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            0 => write!(f, "{}", self.pod),
            seq => write!(f, "{}.{seq}", self.pod),
        }
    }
}

impl ContainerId {
    /// Parses a container ID from the kubelet; `None` when it cannot be one
    /// of ours.
    pub fn parse(s: &str) -> Option<Self> {
        let (head, tail) = s.rsplit_once('#')?;
        let (ordinal, seq) = match tail.split_once('.') {
            Some((ordinal, seq)) => {
                let canonical = !seq.is_empty()
                    && seq.bytes().all(|b| b.is_ascii_digit())
                    && !seq.starts_with('0');
                if !canonical {
                    return None;
                }
                (ordinal, seq.parse().ok()?)
            }
            None => (tail, 0),
        };
        let pod = format!("{head}#{ordinal}").parse().ok()?;
        Some(Self { pod, seq })
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
    /// Its place in the pod: 0 for the first, then 1, 2, ... (its ID).
    #[serde(default)]
    pub seq: u32,
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
    /// Set when StopContainer (or a removal) signals it: its exit is
    /// expected, not a crash.
    #[serde(skip)]
    pub stop_requested: bool,
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
/// pod pool. The pool changes only through the methods below, which note
/// whether routing changed (the transaction publishes only then).
#[derive(Debug, Default)]
pub struct Store {
    pub pods: BTreeMap<PodId, Pod>,
    pub names: HashMap<SandboxKey, PodId>,
    pub next_ordinal: u64,
    pool: PodPool,
    routing_changed: bool,
}

impl Store {
    pub fn pool(&self) -> &PodPool {
        &self.pool
    }

    /// Adds a pod and its kubelet name (and its component to the pool).
    pub fn insert(&mut self, pod: Pod) {
        self.names
            .insert(SandboxKey::of(&pod.metadata()), pod.id.clone());
        if self.pool.component_of(&pod.id).is_none() {
            self.pool.insert_pod(&pod.id);
            self.routing_changed = true;
        }
        self.pods.insert(pod.id.clone(), pod);
    }

    /// Forgets a pod entirely.
    pub fn remove(&mut self, id: &PodId) -> Option<Pod> {
        let pod = self.pods.remove(id)?;
        self.names.remove(&SandboxKey::of(&pod.metadata()));
        self.pool.remove_pod(id);
        self.routing_changed = true;
        Some(pod)
    }

    /// Makes the pod's running container routable.
    pub fn route(
        &mut self,
        id: &PodId,
        socket: PathBuf,
        incarnation: u64,
        peer: crate::pool::Peer,
    ) {
        self.pool.set_running(id, socket, incarnation, peer);
        self.routing_changed = true;
    }

    /// Takes the pod out of routing.
    pub fn unroute(&mut self, id: &PodId) {
        if self.pool.set_not_running(id) {
            self.routing_changed = true;
        }
    }

    /// Whether routing changed since the last call (which resets it).
    pub fn take_routing_changed(&mut self) -> bool {
        std::mem::take(&mut self.routing_changed)
    }

    pub fn container(&self, id: &ContainerId) -> Option<(&Pod, &Container)> {
        let pod = self.pods.get(&id.pod)?;
        Some((pod, pod.container(id.seq)?))
    }

    pub fn container_mut(&mut self, id: &ContainerId) -> Option<&mut Container> {
        self.pods.get_mut(&id.pod)?.container_mut(id.seq)
    }
}

pub fn now_nanos() -> i64 {
    super::container::spec::now_nanos()
}
