//! CreateContainer, StopContainer, RemoveContainer, UpdateContainerResources,
//! ReopenContainerLog (StartContainer has its own file).

use std::path::PathBuf;
use std::time::Duration;

use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

use super::labels;
use super::sandbox::ignore_not_found;
use crate::control::container::cgroup;
use crate::control::lifecycle::{step, Call, Lifecycle, Step};
use crate::control::runtime::{local_name, parse_pod_id, Runtime};
use crate::control::state::{now_nanos, Container, ContainerId, ContainerPhase};
use crate::control::Error;
use crate::pool::PodId;

/// The error of a step that does not go ahead (`what` names the pod or
/// container), or `None` for one that succeeds without doing anything.
pub(super) fn refusal(what: &str, step: Step) -> Option<Error> {
    match step {
        Step::Conflict(why) => Some(Error::AlreadyExists(format!("{what}: {why}"))),
        Step::Refuse(why) => Some(Error::FailedPrecondition(format!("{what}: {why}"))),
        Step::Go(_) | Step::Delete | Step::AlreadyDone => None,
    }
}

fn attempt(config: &cri::ContainerConfig) -> u32 {
    config.metadata.as_ref().map_or(0, |m| m.attempt)
}

impl Runtime {
    pub async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<ContainerId, Error> {
        let id = parse_pod_id(&req.pod_sandbox_id).ok_or_else(|| {
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
        let op = self.begin(&id).await;
        let result = self.create_in(&id, config, &image_ref).await;
        self.commit(op, result).await
    }

    async fn create_in(
        &self,
        id: &PodId,
        config: cri::ContainerConfig,
        image_ref: &str,
    ) -> Result<ContainerId, Error> {
        let (target, cid, log_dir) = {
            let store = self.store();
            let pod = store
                .pods
                .get(id)
                .ok_or_else(|| Error::NotFound(format!("pod sandbox {id} not found")))?;
            labels::check_container_labels(&config.labels, &pod.config.labels)?;
            let current = pod.current();
            let next = ContainerId {
                pod: id.clone(),
                seq: pod.next_seq,
            };
            self.check_security(&pod.config, &next, &config)?;
            crate::control::container::mounts::validate(&config)
                .map_err(|e| Error::InvalidArgument(format!("pod {id}: {e}")))?;
            let call = Call::CreateContainer {
                same: current.is_some_and(|c| c.config == config),
                newer: current.is_some_and(|c| attempt(&config) > attempt(&c.config)),
            };
            let target = match step(pod.lifecycle, call) {
                Step::Go(target) => target,
                Step::AlreadyDone => {
                    return Ok(pod.container_id(current.expect("a retry has a container")))
                }
                other => return Err(refusal(&format!("pod {id}"), other).expect("refused")),
            };
            let cid = ContainerId {
                pod: id.clone(),
                seq: pod.next_seq,
            };
            (target, cid, pod.config.log_directory.clone())
        };
        let image = self.images.find(image_ref)?.ok_or_else(|| {
            Error::NotFound(format!(
                "image {image_ref:?} not found in the image store: pull it, or import it with `vimanad image import`"
            ))
        })?;

        let dir = self.container_dir(&cid);
        // A leftover of an earlier container with this ID (a removed pod's
        // first container after a lost database) starts from clean layers.
        std::fs::remove_dir_all(&dir)
            .or_else(ignore_not_found)
            .map_err(Error::io(format!(
                "container {cid}: clear {}",
                dir.display()
            )))?;
        for sub in ["upper", "work", "merged"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(Error::io(format!(
                "container {cid}: create {}",
                dir.join(sub).display()
            )))?;
        }
        let log_path = (!log_dir.is_empty() && !config.log_path.is_empty())
            .then(|| PathBuf::from(&log_dir).join(&config.log_path));

        let mut store = self.store();
        let pod = store
            .pods
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id} not found")))?;
        pod.next_seq = cid.seq + 1;
        pod.containers.push(Container {
            seq: cid.seq,
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
            stop_requested: false,
        });
        pod.lifecycle = target;
        self.emit(&store, &cid, cri::ContainerEventType::ContainerCreatedEvent);
        tracing::info!(container = %cid, "container created");
        Ok(cid)
    }

    pub async fn stop_container(&self, container_id: &str, timeout_secs: i64) -> Result<(), Error> {
        let Some(cid) = ContainerId::parse(container_id) else {
            return Ok(());
        };
        let op = self.begin(&cid.pod).await;
        let Some((lifecycle, current)) = self.placement(&cid) else {
            return Ok(());
        };
        let Step::Go(target) = step(lifecycle, Call::StopContainer { current }) else {
            return Ok(());
        };
        let grace = Duration::from_secs(timeout_secs.max(0) as u64);
        let result = self.stop_process(&cid.pod, grace).await.map(|()| {
            if let Some(pod) = self.store().pods.get_mut(&cid.pod) {
                pod.lifecycle = target;
            }
            tracing::info!(container = %cid, "container stopped");
        });
        self.commit(op, result).await
    }

    /// The pod's lifecycle and whether the container is its current one,
    /// if both exist.
    pub(super) fn placement(&self, cid: &ContainerId) -> Option<(Lifecycle, bool)> {
        let store = self.store();
        let (pod, _) = store.container(cid)?;
        Some((pod.lifecycle, pod.is_current(cid.seq)))
    }

    /// Takes the pod's running container out of routing (published before
    /// any signal), then SIGTERM, `grace`, SIGKILL, and records the exit.
    /// Does nothing when no process runs.
    pub(crate) async fn stop_process(&self, id: &PodId, grace: Duration) -> Result<(), Error> {
        let process = {
            let mut store = self.store();
            store.unroute(id);
            self.publish_changes(&mut store);
            let Some(c) = store.pods.get_mut(id).and_then(|p| p.current_mut()) else {
                return Ok(());
            };
            if c.process.is_some() {
                c.stop_requested = true;
            }
            c.process.clone()
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
            let Some(pod) = store.pods.get_mut(id) else {
                return Ok(());
            };
            let Some(c) = pod.current_mut() else {
                return Ok(());
            };
            let recorded = c.record_exit(process.pid, &record);
            let cgroups = std::mem::take(&mut c.cgroups);
            let cid = ContainerId {
                pod: id.clone(),
                seq: c.seq,
            };
            if recorded {
                self.emit(&store, &cid, cri::ContainerEventType::ContainerStoppedEvent);
            }
            cgroups
        };
        cgroup::remove(&cgroups);
        Ok(())
    }

    pub async fn remove_container(&self, container_id: &str) -> Result<(), Error> {
        let Some(cid) = ContainerId::parse(container_id) else {
            return Ok(());
        };
        let op = self.begin(&cid.pod).await;
        let Some((lifecycle, current)) = self.placement(&cid) else {
            return Ok(());
        };
        let Step::Go(target) = step(lifecycle, Call::RemoveContainer { current }) else {
            return Ok(());
        };
        let result = self.remove_one(&cid, current, target).await;
        self.commit(op, result).await
    }

    async fn remove_one(
        &self,
        cid: &ContainerId,
        current: bool,
        target: Lifecycle,
    ) -> Result<(), Error> {
        if current {
            // Forced, as the CRI asks: a running container stops at once.
            self.stop_process(&cid.pod, Duration::ZERO).await?;
        }
        let dir = self.container_dir(cid);
        std::fs::remove_dir_all(&dir)
            .or_else(ignore_not_found)
            .map_err(Error::io(format!(
                "container {cid}: remove {}",
                dir.display()
            )))?;
        let mut store = self.store();
        if let Some(pod) = store.pods.get_mut(&cid.pod) {
            pod.containers.retain(|c| c.seq != cid.seq);
            pod.lifecycle = target;
            self.emit(&store, cid, cri::ContainerEventType::ContainerDeletedEvent);
        }
        drop(store);
        tracing::info!(container = %cid, "container removed");
        Ok(())
    }

    /// Applies new limits to a container's cgroup. Fields left zero or
    /// empty keep their value, as containerd does: the status reports what
    /// the cgroup holds.
    pub async fn update_container_resources(
        &self,
        container_id: &str,
        resources: Option<cri::LinuxContainerResources>,
    ) -> Result<(), Error> {
        let not_found = || Error::NotFound(format!("container {container_id:?} not found"));
        let cid = ContainerId::parse(container_id).ok_or_else(not_found)?;
        let op = self.begin(&cid.pod).await;
        let result = self.update_resources(&cid, resources, not_found);
        self.commit(op, result).await
    }

    fn update_resources(
        &self,
        cid: &ContainerId,
        resources: Option<cri::LinuxContainerResources>,
        not_found: impl Fn() -> Error,
    ) -> Result<(), Error> {
        let (limits, parent) = {
            let mut store = self.store();
            let sandbox = store
                .pods
                .get(&cid.pod)
                .map(|p| p.config.clone())
                .ok_or_else(&not_found)?;
            let container = store.container_mut(cid).ok_or_else(&not_found)?;
            let linux = container.config.linux.get_or_insert_with(Default::default);
            let merged = linux.resources.get_or_insert_with(Default::default);
            if let Some(new) = resources {
                merge_resources(merged, new);
            }
            if container.phase != ContainerPhase::Running {
                return Ok(());
            }
            (
                self.limits(&container.config),
                self.cgroup_parent_of(&cid.pod, &sandbox)?,
            )
        };
        let (_, warnings) = self
            .cgroups
            .create(&parent, &local_name(cid), &limits)
            .map_err(Error::io(format!("container {cid}: update cgroup")))?;
        for warning in warnings {
            tracing::warn!(container = %cid, "{warning}");
        }
        Ok(())
    }

    /// Asks the shim to reopen the log file after the kubelet rotated it,
    /// and returns once the new file exists.
    pub async fn reopen_container_log(&self, container_id: &str) -> Result<(), Error> {
        let not_found = || Error::NotFound(format!("container {container_id:?} not found"));
        let cid = ContainerId::parse(container_id).ok_or_else(not_found)?;
        let (process, log_path) = {
            let store = self.store();
            let (_, c) = store.container(&cid).ok_or_else(not_found)?;
            (c.process.clone(), c.log_path.clone())
        };
        let not_running = || Error::FailedPrecondition(format!("container {cid} is not running"));
        let (Some(process), Some(log_path)) = (process, log_path) else {
            return Err(not_running());
        };
        if process.exit().is_some() {
            return Err(not_running());
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
            "container {cid}: log file {} was not reopened within 1s",
            log_path.display()
        )))
    }
}

/// Overwrites the fields `new` sets (non-zero, non-empty); the others keep
/// their value.
fn merge_resources(into: &mut cri::LinuxContainerResources, new: cri::LinuxContainerResources) {
    fn set<T: PartialEq + Default>(into: &mut T, new: T) {
        if new != T::default() {
            *into = new;
        }
    }
    set(&mut into.cpu_period, new.cpu_period);
    set(&mut into.cpu_quota, new.cpu_quota);
    set(&mut into.cpu_shares, new.cpu_shares);
    set(&mut into.memory_limit_in_bytes, new.memory_limit_in_bytes);
    set(&mut into.oom_score_adj, new.oom_score_adj);
    set(&mut into.cpuset_cpus, new.cpuset_cpus);
    set(&mut into.cpuset_mems, new.cpuset_mems);
    set(&mut into.hugepage_limits, new.hugepage_limits);
    set(
        &mut into.memory_swap_limit_in_bytes,
        new.memory_swap_limit_in_bytes,
    );
    into.unified.extend(new.unified);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_resource_updates_merge() {
        let mut held = cri::LinuxContainerResources::default();
        merge_resources(
            &mut held,
            cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            },
        );
        merge_resources(
            &mut held,
            cri::LinuxContainerResources {
                cpu_quota: 50_000,
                cpu_period: 100_000,
                ..Default::default()
            },
        );
        assert_eq!(held.memory_limit_in_bytes, 64 << 20);
        assert_eq!((held.cpu_quota, held.cpu_period), (50_000, 100_000));
    }
}
