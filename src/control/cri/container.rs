//! CreateContainer, StopContainer, RemoveContainer (StartContainer has its
//! own file).

use std::path::PathBuf;
use std::time::Duration;

use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

use super::labels;
use super::sandbox::ignore_not_found;
use crate::control::container::cgroup;
use crate::control::lifecycle::{step, Call, Lifecycle, Step};
use crate::control::runtime::{parse_id, Runtime};
use crate::control::state::{now_nanos, Container, ContainerPhase};
use crate::control::Error;
use crate::pool::PodId;

impl Runtime {
    pub async fn create_container(&self, req: cri::CreateContainerRequest) -> Result<PodId, Error> {
        let id = parse_id(&req.pod_sandbox_id).ok_or_else(|| {
            Error::NotFound(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
        })?;
        let config = req.config.ok_or_else(|| {
            Error::InvalidArgument("CreateContainer without a container config".into())
        })?;
        if config.metadata.as_ref().is_none_or(|m| m.name.is_empty()) {
            return Err(Error::InvalidArgument(
                "container config without a metadata name".into(),
            ));
        }
        let image_ref = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Error::InvalidArgument("container config without an image".into()))?;

        let _op = self.lock_pod(&id).await;
        let (lifecycle, present, pod_labels, log_dir) = {
            let store = self.store();
            let pod = store
                .pods
                .get(&id)
                .ok_or_else(|| Error::NotFound(format!("pod sandbox {id} not found")))?;
            (
                pod.lifecycle,
                pod.container.is_some(),
                pod.config.labels.clone(),
                pod.config.log_directory.clone(),
            )
        };
        labels::check_container_labels(&config.labels, &pod_labels)?;
        crate::control::container::mounts::validate(&config)
            .map_err(|e| Error::InvalidArgument(format!("pod {id}: {e}")))?;
        match step(lifecycle, Call::CreateContainer, present) {
            Step::Go => {}
            Step::SameOrConflict => {
                let store = self.store();
                let same = store.pods[&id]
                    .container
                    .as_ref()
                    .is_some_and(|c| c.config == config);
                return if same {
                    Ok(id)
                } else {
                    Err(Error::AlreadyExists(format!(
                        "pod {id} already has a container with a different configuration; remove it first"
                    )))
                };
            }
            Step::Refuse(why) => return Err(Error::FailedPrecondition(format!("pod {id}: {why}"))),
            Step::AlreadyDone | Step::NoContainer => return Ok(id),
        }
        let image = self.images.find(&image_ref)?.ok_or_else(|| {
            Error::NotFound(format!(
                "image {image_ref:?} not found in the image store: pull it, or import it with `vimanad image import`"
            ))
        })?;

        let dir = self.container_dir(id.ordinal());
        // A container created again after RemoveContainer starts from a
        // clean writable layer.
        std::fs::remove_dir_all(&dir)
            .or_else(ignore_not_found)
            .map_err(Error::io(format!(
                "container {id}: clear {}",
                dir.display()
            )))?;
        for sub in ["upper", "work", "merged"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(Error::io(format!(
                "container {id}: create {}",
                dir.join(sub).display()
            )))?;
        }
        let log_path = (!log_dir.is_empty() && !config.log_path.is_empty())
            .then(|| PathBuf::from(&log_dir).join(&config.log_path));

        let mut store = self.store();
        let pod = store
            .pods
            .get_mut(&id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id} not found")))?;
        pod.container = Some(Container {
            config,
            image,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            phase: ContainerPhase::Created,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path,
            dir,
            process: None,
            identity: None,
            cgroups: Vec::new(),
        });
        pod.lifecycle = Lifecycle::Created;
        tracing::info!(container = %id, "container created");
        Ok(id)
    }

    pub async fn stop_container(&self, container_id: &str, timeout_secs: i64) -> Result<(), Error> {
        let Some(id) = parse_id(container_id) else {
            return Ok(());
        };
        let _op = self.lock_pod(&id).await;
        let Some((lifecycle, present)) = self.phase(&id) else {
            return Ok(());
        };
        if step(lifecycle, Call::StopContainer, present) != Step::Go {
            return Ok(());
        }
        self.stop_process(&id, Duration::from_secs(timeout_secs.max(0) as u64))
            .await?;
        if let Some(pod) = self.store().pods.get_mut(&id) {
            pod.lifecycle = Lifecycle::Stopped;
        }
        tracing::info!(container = %id, "container stopped");
        Ok(())
    }

    /// Takes the container out of routing, then SIGTERM, `grace`, SIGKILL,
    /// and records the exit. Does nothing when no process runs.
    pub(crate) async fn stop_process(&self, id: &PodId, grace: Duration) -> Result<(), Error> {
        let process = {
            let mut store = self.store();
            if store.pool.set_not_running(id) {
                self.publish(&store);
            }
            store
                .pods
                .get(id)
                .and_then(|p| p.container.as_ref())
                .and_then(|c| c.process.clone())
        };
        let Some(process) = process else {
            return Ok(());
        };
        let record = match process.exit() {
            Some(record) => record,
            None => {
                let mut ended = None;
                if !grace.is_zero() {
                    process.signal(Signal::SIGTERM);
                    ended = process.wait_timeout(grace).await;
                }
                match ended {
                    Some(record) => record,
                    None => {
                        process.signal(Signal::SIGKILL);
                        process.wait().await
                    }
                }
            }
        };
        let cgroups = {
            let mut store = self.store();
            let Some(container) = store.pods.get_mut(id).and_then(|p| p.container.as_mut()) else {
                return Ok(());
            };
            container.record_exit(process.pid, &record);
            std::mem::take(&mut container.cgroups)
        };
        cgroup::remove(&cgroups);
        Ok(())
    }

    pub async fn remove_container(&self, container_id: &str) -> Result<(), Error> {
        let Some(id) = parse_id(container_id) else {
            return Ok(());
        };
        let _op = self.lock_pod(&id).await;
        let Some((lifecycle, present)) = self.phase(&id) else {
            return Ok(());
        };
        match step(lifecycle, Call::RemoveContainer, present) {
            Step::Go => {}
            Step::Refuse(why) => {
                return Err(Error::FailedPrecondition(format!("container {id}: {why}")))
            }
            _ => return Ok(()),
        }
        let dir = self.container_dir(id.ordinal());
        std::fs::remove_dir_all(&dir)
            .or_else(ignore_not_found)
            .map_err(Error::io(format!(
                "container {id}: remove {}",
                dir.display()
            )))?;
        if let Some(pod) = self.store().pods.get_mut(&id) {
            pod.container = None;
            if pod.lifecycle != Lifecycle::Killed {
                pod.lifecycle = Lifecycle::Removed;
            }
        }
        tracing::info!(container = %id, "container removed");
        Ok(())
    }
}

impl Runtime {
    /// Applies new limits to a container's cgroup.
    pub async fn update_container_resources(
        &self,
        container_id: &str,
        resources: Option<cri::LinuxContainerResources>,
    ) -> Result<(), Error> {
        let not_found = || Error::NotFound(format!("container {container_id:?} not found"));
        let id = parse_id(container_id).ok_or_else(not_found)?;
        let _op = self.lock_pod(&id).await;
        let limits = {
            let mut store = self.store();
            let container = store
                .pods
                .get_mut(&id)
                .and_then(|p| p.container.as_mut())
                .ok_or_else(not_found)?;
            let linux = container.config.linux.get_or_insert_with(Default::default);
            linux.resources = resources;
            if container.phase != ContainerPhase::Running {
                return Ok(());
            }
            super::start::limits_of(&container.config)
        };
        let (_, warnings) = self
            .cgroups
            .create(
                &self.config.cgroup_parent,
                &id.ordinal().to_string(),
                &limits,
            )
            .map_err(Error::io(format!("container {id}: update cgroup")))?;
        for warning in warnings {
            tracing::warn!(container = %id, "{warning}");
        }
        Ok(())
    }

    /// Asks the shim to reopen the log file after the kubelet rotated it,
    /// and returns once the new file exists.
    pub async fn reopen_container_log(&self, container_id: &str) -> Result<(), Error> {
        let not_found = || Error::NotFound(format!("container {container_id:?} not found"));
        let id = parse_id(container_id).ok_or_else(not_found)?;
        let (process, log_path) = {
            let store = self.store();
            let c = store
                .pods
                .get(&id)
                .and_then(|p| p.container.as_ref())
                .ok_or_else(not_found)?;
            (c.process.clone(), c.log_path.clone())
        };
        let (Some(process), Some(log_path)) = (process, log_path) else {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        };
        if process.exit().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let shim = process.shim_pid;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), Signal::SIGUSR1);
        for _ in 0..200 {
            if log_path.exists() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(Error::DeadlineExceeded(format!(
            "container {id}: log file {} was not reopened within 1s",
            log_path.display()
        )))
    }
}
