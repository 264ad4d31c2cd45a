//! RunPodSandbox, StopPodSandbox, RemovePodSandbox.

use k8s_cri::v1 as cri;

use super::labels;
use crate::control::lifecycle::{step, Call, Lifecycle, Step};
use crate::control::runtime::Runtime;
use crate::control::state::{Pod, SandboxKey};
use crate::control::Error;
use crate::pool::PodId;

impl Runtime {
    pub async fn run_pod_sandbox(&self, req: cri::RunPodSandboxRequest) -> Result<PodId, Error> {
        let config = req.config.ok_or_else(|| {
            Error::InvalidArgument("RunPodSandbox without a pod sandbox config".into())
        })?;
        let metadata = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("pod sandbox config without metadata".into()))?;
        if metadata.name.is_empty() || metadata.uid.is_empty() || metadata.namespace.is_empty() {
            return Err(Error::InvalidArgument(
                "pod sandbox metadata needs a name, a uid and a namespace".into(),
            ));
        }
        // "" is the runtime's default handler (a standalone kubelet, or a
        // pod without runtimeClassName): vimanad's default is its own.
        if !req.runtime_handler.is_empty() && req.runtime_handler != self.config.runtime_handler {
            return Err(Error::InvalidArgument(format!(
                "runtime handler {:?} is not served here: vimanad runs pods of handler {:?} (set runtimeClassName to a RuntimeClass with that handler)",
                req.runtime_handler, self.config.runtime_handler
            )));
        }
        let component = labels::component_of_pod(&config.labels)?;
        crate::control::container::security::check_pod(&config).map_err(Error::InvalidArgument)?;
        crate::control::container::mounts::validate_sandbox(&config)
            .map_err(Error::InvalidArgument)?;
        let key = SandboxKey::of(metadata);

        // The ID is taken and the pod recorded under the store's lock; its
        // directory is made after, under the new pod's operation lock, which
        // a retry of this call waits for.
        let (id, op) = {
            let mut store = self.store();
            if let Some(id) = store.names.get(&key) {
                let pod = &store.pods[id];
                if pod.config != config || pod.runtime_handler != req.runtime_handler {
                    return Err(Error::AlreadyExists(format!(
                        "pod sandbox {}/{} (uid {}, attempt {}) already exists as {id} with a different configuration",
                        key.namespace, key.name, key.uid, key.attempt
                    )));
                }
                (id.clone(), None)
            } else {
                let ordinal = store.next_ordinal;
                store.next_ordinal += 1;
                let id = PodId::new(component, ordinal);
                let op = self
                    .try_begin(&id)
                    .expect("a new pod's operation lock is free");
                let socket_dir = self.socket_dir(ordinal);
                store.insert(Pod::new(
                    id.clone(),
                    config,
                    req.runtime_handler,
                    socket_dir,
                ));
                (id, Some(op))
            }
        };
        let Some(op) = op else {
            // A retry: wait for the first call to finish, then answer as it
            // did.
            let _op = self.begin(&id).await;
            return match self.store().pods.contains_key(&id) {
                true => Ok(id),
                false => Err(Error::NotFound(format!(
                    "pod sandbox {id} could not be created; run it again"
                ))),
            };
        };
        let socket_dir = self.socket_dir(id.ordinal());
        // A leftover of an earlier runtime must not leak into this pod.
        let _ = std::fs::remove_dir_all(&socket_dir);
        let made = std::fs::create_dir_all(&socket_dir).map_err(Error::io(format!(
            "pod {id}: create socket directory {}",
            socket_dir.display()
        )));
        if made.is_err() {
            self.store().remove(&id);
        } else {
            tracing::info!(pod = %id, "pod sandbox initiated");
        }
        self.commit(op, made.map(|()| id.clone())).await
    }

    pub async fn stop_pod_sandbox(&self, pod_id: &str) -> Result<(), Error> {
        let Some(id) = crate::control::runtime::parse_pod_id(pod_id) else {
            return Ok(());
        };
        let op = self.begin(&id).await;
        let Some(lifecycle) = self.store().pods.get(&id).map(|p| p.lifecycle) else {
            return Ok(());
        };
        if step(lifecycle, Call::StopPodSandbox) == Step::AlreadyDone {
            return Ok(());
        }
        let result = self.kill_pod(&id).await;
        self.commit(op, result).await
    }

    /// Stops the pod's process at once (containerd does the same: the
    /// kubelet has already given it its grace period with StopContainer)
    /// and marks the pod `Killed`.
    async fn kill_pod(&self, id: &PodId) -> Result<(), Error> {
        self.stop_process(id, std::time::Duration::ZERO).await?;
        let socket = {
            let mut store = self.store();
            let Some(pod) = store.pods.get_mut(id) else {
                return Ok(());
            };
            pod.lifecycle = Lifecycle::Killed;
            crate::control::container::socket_path(&pod.socket_dir)
        };
        let _ = std::fs::remove_file(socket);
        tracing::info!(pod = %id, "pod sandbox stopped");
        Ok(())
    }

    pub async fn remove_pod_sandbox(&self, pod_id: &str) -> Result<(), Error> {
        let Some(id) = crate::control::runtime::parse_pod_id(pod_id) else {
            return Ok(());
        };
        let op = self.begin(&id).await;
        let Some(lifecycle) = self.store().pods.get(&id).map(|p| p.lifecycle) else {
            return Ok(());
        };
        debug_assert_eq!(step(lifecycle, Call::RemovePodSandbox), Step::Delete);
        let result = self.delete_pod(&id, lifecycle).await;
        self.commit(op, result).await
    }

    /// Stops what still runs (CRI: removal is forced), then removes every
    /// container's directory, the socket directory and the record.
    async fn delete_pod(&self, id: &PodId, lifecycle: Lifecycle) -> Result<(), Error> {
        if lifecycle != Lifecycle::Killed {
            self.kill_pod(id).await?;
        }
        let dirs: Vec<_> = {
            let store = self.store();
            let Some(pod) = store.pods.get(id) else {
                return Ok(());
            };
            pod.containers
                .iter()
                .map(|c| c.dir.clone())
                .chain([self.container_dir(&crate::control::state::ContainerId {
                    pod: id.clone(),
                    seq: 0,
                })])
                .chain([pod.socket_dir.clone()])
                .collect()
        };
        for dir in dirs {
            std::fs::remove_dir_all(&dir)
                .or_else(ignore_not_found)
                .map_err(Error::io(format!("pod {id}: remove {}", dir.display())))?;
        }
        let mut store = self.store();
        let seqs: Vec<u32> = store
            .pods
            .get(id)
            .map(|p| p.containers.iter().map(|c| c.seq).collect())
            .unwrap_or_default();
        for seq in seqs {
            let cid = crate::control::state::ContainerId {
                pod: id.clone(),
                seq,
            };
            if let Some(pod) = store.pods.get_mut(id) {
                pod.containers.retain(|c| c.seq != seq);
            }
            self.emit(&store, &cid, cri::ContainerEventType::ContainerDeletedEvent);
        }
        store.remove(id);
        drop(store);
        tracing::info!(pod = %id, "pod sandbox removed");
        Ok(())
    }
}

pub fn ignore_not_found(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}
