//! RunPodSandbox, StopPodSandbox, RemovePodSandbox.

use k8s_cri::v1 as cri;

use super::labels;
use crate::control::lifecycle::{step, Call, Lifecycle, Step};
use crate::control::runtime::{parse_id, Runtime};
use crate::control::state::{now_nanos, Pod, SandboxKey};
use crate::control::Error;
use crate::pool::PodId;

impl Runtime {
    pub fn run_pod_sandbox(&self, req: cri::RunPodSandboxRequest) -> Result<PodId, Error> {
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
        if req.runtime_handler != self.config.runtime_handler {
            return Err(Error::InvalidArgument(format!(
                "runtime handler {:?} is not served here: vimanad runs pods of handler {:?} (set runtimeClassName to a RuntimeClass with that handler)",
                req.runtime_handler, self.config.runtime_handler
            )));
        }
        let component = labels::component_of_pod(&config.labels)?;
        crate::control::container::mounts::validate_sandbox(&config)
            .map_err(Error::InvalidArgument)?;
        let key = SandboxKey::of(metadata);

        let mut store = self.store();
        if let Some(id) = store.names.get(&key) {
            let pod = &store.pods[id];
            if pod.config == config && pod.runtime_handler == req.runtime_handler {
                return Ok(id.clone());
            }
            return Err(Error::AlreadyExists(format!(
                "pod sandbox {}/{} (uid {}, attempt {}) already exists as {id} with a different configuration",
                key.namespace, key.name, key.uid, key.attempt
            )));
        }
        let ordinal = store.next_ordinal;
        let id = PodId::new(component, ordinal);
        let socket_dir = self.socket_dir(ordinal);
        // A leftover of an earlier runtime must not leak into this pod.
        let _ = std::fs::remove_dir_all(&socket_dir);
        std::fs::create_dir_all(&socket_dir).map_err(Error::io(format!(
            "pod {id}: create socket directory {}",
            socket_dir.display()
        )))?;
        store.next_ordinal += 1;
        store.names.insert(key, id.clone());
        store.pool.insert_pod(&id);
        self.publish(&store);
        store.pods.insert(
            id.clone(),
            Pod {
                id: id.clone(),
                config,
                runtime_handler: req.runtime_handler,
                created_at: now_nanos(),
                socket_dir,
                lifecycle: Lifecycle::Initiated,
                container: None,
            },
        );
        tracing::info!(pod = %id, "pod sandbox initiated");
        Ok(id)
    }

    pub async fn stop_pod_sandbox(&self, pod_id: &str) -> Result<(), Error> {
        let Some(id) = parse_id(pod_id) else {
            return Ok(());
        };
        let _op = self.lock_pod(&id).await;
        let Some((lifecycle, present)) = self.phase(&id) else {
            return Ok(());
        };
        match step(lifecycle, Call::StopPodSandbox, present) {
            Step::Go => {}
            _ => return Ok(()),
        }
        // Immediate kill, as containerd does: the kubelet has already given
        // the container its grace period through StopContainer.
        self.stop_process(&id, std::time::Duration::ZERO).await?;
        let mut store = self.store();
        if let Some(pod) = store.pods.get_mut(&id) {
            pod.lifecycle = Lifecycle::Killed;
            let _ = std::fs::remove_file(crate::control::container::socket_path(&pod.socket_dir));
        }
        tracing::info!(pod = %id, "pod sandbox stopped");
        Ok(())
    }

    pub async fn remove_pod_sandbox(&self, pod_id: &str) -> Result<(), Error> {
        let Some(id) = parse_id(pod_id) else {
            return Ok(());
        };
        let op = self.lock_pod(&id).await;
        let Some((lifecycle, present)) = self.phase(&id) else {
            return Ok(());
        };
        match step(lifecycle, Call::RemovePodSandbox, present) {
            Step::Go => {}
            Step::Refuse(why) => return Err(Error::FailedPrecondition(format!("pod {id}: {why}"))),
            _ => return Ok(()),
        }
        let socket_dir = self.socket_dir(id.ordinal());
        let container_dir = self.container_dir(id.ordinal());
        std::fs::remove_dir_all(&container_dir)
            .or_else(ignore_not_found)
            .map_err(Error::io(format!(
                "pod {id}: remove {}",
                container_dir.display()
            )))?;
        std::fs::remove_dir_all(&socket_dir)
            .or_else(ignore_not_found)
            .map_err(Error::io(format!(
                "pod {id}: remove {}",
                socket_dir.display()
            )))?;
        {
            let mut store = self.store();
            if let Some(pod) = store.pods.remove(&id) {
                store.names.remove(&SandboxKey::of(&pod.metadata()));
            }
            store.pool.remove_pod(&id);
            self.publish(&store);
        }
        drop(op);
        self.forget_lock(&id);
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
