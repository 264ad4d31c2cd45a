//! The runtime core the CRI verbs work on: configuration, the store, the
//! image store, cgroups, and one operation lock per pod.
//!
//! Mutating calls on one pod are serialised by its operation lock (the
//! kubelet may retry a call while the first is still running); reads never
//! take it, so status calls answer at once even during a slow start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::container::cgroup::Hierarchy;
use super::image::{ImageStore, Puller, RegistryConfig};
use super::persist::{Db, Writer};
use super::state::{ContainerId, Store};
use super::Error;
use crate::pool::PodId;
use crate::pool::Publisher;

/// Settings of the control plane, all with working defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Durable state: images, container layers and records.
    pub state_dir: PathBuf,
    /// Volatile state: pod socket directories.
    pub run_dir: PathBuf,
    pub cri_socket: PathBuf,
    /// Where the CRI streaming server listens (port 0: any free port).
    pub stream_address: std::net::SocketAddr,
    /// How long StartContainer waits for a component to become ready.
    pub start_timeout: Duration,
    /// The IP reported for every pod: the node's data-plane address.
    pub pod_ip: String,
    /// The CRI runtime handler whose pods this runtime runs.
    pub runtime_handler: String,
    /// cgroup (relative to each hierarchy's root) holding the containers'.
    pub cgroup_parent: String,
    /// Localhost seccomp profiles are read only from below this directory.
    pub seccomp_profile_root: PathBuf,
    /// pids.max of each container's cgroup (0: none of vimanad's own).
    pub pids_limit: i64,
    /// Registries (`HOST[:PORT]`) pulled from over plain HTTP; every other
    /// registry, loopback included, is reached over HTTPS.
    pub insecure_registries: Vec<String>,
    /// Benchmarks only (`serve --republish-every`, hidden): publish the pod
    /// pool again at this interval although nothing changed. `None` (the
    /// default) publishes only on changes.
    pub republish_every: Option<Duration>,
    /// The downstream CRI runtime pods of other handlers go to
    /// (`serve --downstream-cri`); `None` refuses them.
    pub downstream: Option<super::downstream::Settings>,
    /// Where the operator's endpoint listens (`/metrics`, `/healthz`,
    /// `/readyz`, `/debug/pool`); `None` switches it off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The shards' counter blocks, read when scraped.
    pub data_plane_metrics: Option<Arc<crate::pool::metrics::NodeMetrics>>,
}

pub struct Runtime {
    pub config: Config,
    pub images: Arc<ImageStore>,
    /// Registry pulls into `images`, each reference pulled once at a time.
    pub puller: Puller,
    pub cgroups: Hierarchy,
    store: Mutex<Store>,
    db: Arc<Db>,
    writer: Writer,
    publisher: Publisher,
    op_locks: Mutex<HashMap<PodId, Arc<tokio::sync::Mutex<()>>>>,
    /// Container lifecycle events (GetContainerEvents).
    pub(crate) events: tokio::sync::broadcast::Sender<k8s_cri::v1::ContainerEventResponse>,
    /// The control plane's series (`/metrics`): container events, pulls,
    /// commits are counted where they happen.
    pub(crate) metrics: Arc<super::metrics::Metrics>,
}

impl Runtime {
    pub fn new(
        config: Config,
        publisher: Publisher,
        metrics: Arc<super::metrics::Metrics>,
    ) -> Result<Arc<Self>, Error> {
        for dir in [&config.state_dir, &config.run_dir] {
            std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        }
        std::fs::create_dir_all(config.run_dir.join("pods"))
            .map_err(Error::io("create the pod socket directory"))?;
        std::fs::create_dir_all(config.state_dir.join("containers"))
            .map_err(Error::io("create the container directory"))?;
        let images = Arc::new(ImageStore::open(&config.state_dir.join("images"))?);
        let puller = Puller::new(
            Arc::clone(&images),
            RegistryConfig::new(config.insecure_registries.clone()),
        );
        let cgroups = Hierarchy::detect();
        let db = Arc::new(Db::open(&config.state_dir.join("state.redb"))?);
        let writer = Writer::start(
            Arc::clone(&db),
            metrics.db_commit.with_label_values(&["pod_records"]),
        )?;
        super::container::security::restrict_files(&config.state_dir, &config.run_dir).map_err(
            Error::io("restrict the permissions of the state directories"),
        )?;
        tracing::info!(cgroups = %cgroups.describe(), "control plane ready");
        Ok(Arc::new(Self {
            config,
            images,
            puller,
            cgroups,
            store: Mutex::new(Store::default()),
            db,
            writer,
            publisher,
            op_locks: Mutex::new(HashMap::new()),
            events: super::cri::events_channel(),
            metrics,
        }))
    }

    /// The store, for a short synchronous look or change.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave a half-applied change
        // that later calls could trust less than a crash; keep serving.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The publisher, for inspection (`/debug/pool`).
    pub(crate) fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// How many pods are in each lifecycle state, every state listed
    /// (for `/metrics`).
    pub fn pods_by_state(&self) -> Vec<(&'static str, usize)> {
        let store = self.store();
        super::lifecycle::Lifecycle::ALL
            .iter()
            .map(|&state| {
                let n = store.pods.values().filter(|p| p.lifecycle == state).count();
                (state.name(), n)
            })
            .collect()
    }

    /// Publishes the pod pool to the shards if routing changed since the
    /// last publication: before a CRI call that changed it returns, and
    /// before a container that leaves routing is signalled.
    pub fn publish_changes(&self, store: &mut Store) {
        if store.take_routing_changed() {
            self.publish(store);
        }
    }

    fn publish(&self, store: &Store) {
        let generation = self.publisher.publish(store.pool());
        tracing::debug!(generation, "pod pool published");
    }

    /// Benchmarks only (`serve --republish-every`): rebuilds and publishes
    /// the pod pool every `every`, exactly as a pod change would (store
    /// lock, `Snapshot::build`, publication), until the runtime is dropped.
    /// A tick missed while the thread was busy (or the process stopped) is
    /// skipped, not caught up in a burst. Logs the rate achieved once a
    /// second, so a benchmark can check it.
    pub(crate) async fn republish_every(runtime: std::sync::Weak<Self>, every: Duration) {
        tracing::warn!(
            ?every,
            "republishing the pod pool periodically (--republish-every: for benchmarks only)"
        );
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (mut count, mut since) = (0u64, std::time::Instant::now());
        loop {
            ticks.tick().await;
            let Some(runtime) = runtime.upgrade() else {
                return;
            };
            runtime.publish(&runtime.store());
            count += 1;
            let elapsed = since.elapsed();
            if elapsed >= Duration::from_secs(1) {
                tracing::info!(
                    count,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "republished the pod pool (--republish-every)"
                );
                (count, since) = (0, std::time::Instant::now());
            }
        }
    }

    /// Writes the pod's record (or its absence) to the state database; the
    /// record is taken now, the future completes once it is durable. The
    /// commit runs on the writer thread: status calls do not wait for it.
    pub fn persist(&self, id: &PodId) -> impl std::future::Future<Output = Result<(), Error>> {
        let store = self.store();
        let record = store.pods.get(id).map(Db::encode).transpose();
        // Queued under the store's lock: records reach the database in the
        // order of the changes they hold.
        let write = record.map(|record| self.writer.write(id, record, store.next_ordinal));
        drop(store);
        async move { write?.await }
    }

    /// Writes every pod's record in one transaction (after recovery).
    pub fn persist_all(&self) -> Result<(), Error> {
        let (records, next) = {
            let store = self.store();
            let records = store
                .pods
                .iter()
                .map(|(id, pod)| Ok((id.clone(), Db::encode(pod)?)))
                .collect::<Result<Vec<_>, Error>>()?;
            (records, store.next_ordinal)
        };
        self.db.save_all(&records, next)
    }

    /// Loads the state database (recovery).
    pub fn load(&self) -> Result<(Vec<super::state::Pod>, u64), Error> {
        self.db.load()
    }

    /// Serialises mutating calls on one pod (see `transaction.rs`).
    pub(super) async fn lock_pod(&self, id: &PodId) -> tokio::sync::OwnedMutexGuard<()> {
        self.op_lock(id).lock_owned().await
    }

    pub(super) fn op_lock(&self, id: &PodId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.op_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id.clone()).or_default().clone()
    }

    pub(super) fn forget_lock(&self, id: &PodId) {
        self.op_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Host directory for a pod's socket: short, so the socket path stays
    /// under the 108-byte limit of Unix socket addresses.
    pub fn socket_dir(&self, ordinal: u64) -> PathBuf {
        self.config.run_dir.join("pods").join(ordinal.to_string())
    }

    /// A container's state directory (overlay layers, spec, exit record).
    pub fn container_dir(&self, id: &ContainerId) -> PathBuf {
        self.config
            .state_dir
            .join("containers")
            .join(local_name(id))
    }
}

/// A container's name on the node (its directory, its cgroup): `N` for a
/// pod's first container, `N.K` for later ones.
pub fn local_name(id: &ContainerId) -> String {
    match id.seq {
        0 => id.pod.ordinal().to_string(),
        seq => format!("{}.{seq}", id.pod.ordinal()),
    }
}

/// Parses a pod sandbox ID from the kubelet. An ID that cannot be ours is
/// simply unknown.
pub fn parse_pod_id(id: &str) -> Option<PodId> {
    id.parse().ok()
}
