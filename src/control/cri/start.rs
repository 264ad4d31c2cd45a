//! StartContainer: from image and CRI config to a component serving gRPC.
//!
//! The container is routable (in the pod pool) before this call returns
//! success, and a start that fails leaves the pod `Stopped` with the reason,
//! no process and no cgroup behind.

use std::path::Path;

use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

use crate::control::container::{
    self, cgroup, log_tail, wait_ready, ContainerError, LaunchSpec, NotReady, Process,
    SOCKET_DIR_IN_CONTAINER, SOCKET_NAME,
};
use crate::control::image::ImageConfig;
use crate::control::lifecycle::{step, Call, Lifecycle, Step};
use crate::control::runtime::{parse_id, Runtime};
use crate::control::state::{now_nanos, ContainerPhase};
use crate::control::Error;
use crate::pool::PodId;

impl Runtime {
    pub async fn start_container(
        self: &std::sync::Arc<Self>,
        container_id: &str,
    ) -> Result<(), Error> {
        let id = parse_id(container_id)
            .ok_or_else(|| Error::NotFound(format!("container {container_id:?} not found")))?;
        let _op = self.lock_pod(&id).await;
        let (spec, log_path, limits) = {
            let mut store = self.store();
            let pod = store
                .pods
                .get_mut(&id)
                .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
            match step(pod.lifecycle, Call::StartContainer, pod.container.is_some()) {
                Step::Go => {}
                Step::AlreadyDone => return Ok(()),
                Step::NoContainer => {
                    return Err(Error::NotFound(format!(
                        "container {id} not found: the pod has no container (CreateContainer first)"
                    )))
                }
                Step::Refuse(why) => {
                    return Err(Error::FailedPrecondition(format!("container {id}: {why}")))
                }
                Step::SameOrConflict => unreachable!("not a StartContainer step"),
            }
            let container = pod.container.as_ref().expect("step checked the container");
            let spec = launch_spec(
                &id,
                &pod.config,
                &container.config,
                &container.image.config,
                &pod.socket_dir,
                &container.dir,
            )?;
            let limits = limits_of(&container.config);
            let log_path = container.log_path.clone();
            let mut spec = spec;
            spec.log_path = log_path.clone();
            pod.lifecycle = Lifecycle::Starting;
            (spec, log_path, limits)
        };
        match self
            .launch_and_wait(&id, spec, log_path.as_deref(), &limits)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Some(pod) = self.store().pods.get_mut(&id) {
                    pod.lifecycle = Lifecycle::Stopped;
                    if let Some(c) = pod.container.as_mut() {
                        if c.phase != ContainerPhase::Exited {
                            c.phase = ContainerPhase::Exited;
                            c.finished_at = now_nanos();
                            c.exit_code = 128;
                            c.reason = "StartError".into();
                            c.message = e.to_string();
                        }
                    }
                }
                tracing::warn!(container = %id, error = %e, "container failed to start");
                Err(e)
            }
        }
    }

    async fn launch_and_wait(
        self: &std::sync::Arc<Self>,
        id: &PodId,
        mut spec: LaunchSpec,
        log_path: Option<&Path>,
        limits: &cgroup::Limits,
    ) -> Result<(), Error> {
        let image_rootfs = {
            let images = self.images.clone();
            let image = self.store().pods[id]
                .container
                .as_ref()
                .map(|c| c.image.clone());
            let image =
                image.ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
            tokio::task::spawn_blocking(move || images.rootfs(&image))
                .await
                .map_err(|e| Error::Io {
                    what: format!("container {id}: unpack image"),
                    source: std::io::Error::other(e),
                })??
        };
        container::prepare_mountpoints(&image_rootfs).map_err(Error::io(format!(
            "container {id}: prepare {}",
            image_rootfs.display()
        )))?;
        spec.lower = image_rootfs;

        let socket = container::socket_path(&spec.socket_dir);
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Err(Error::FailedPrecondition(format!(
                "container {id}: socket {} is in use by another process",
                socket.display()
            )));
        }
        let _ = std::fs::remove_file(&socket);
        if let (Some(uid), Some(gid)) = (spec.uid, spec.gid.or(Some(0))) {
            let _ = nix::unistd::chown(
                &spec.socket_dir,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            );
        }

        let (cgroups, warnings) = self
            .cgroups
            .create(
                &self.config.cgroup_parent,
                &id.ordinal().to_string(),
                limits,
            )
            .map_err(Error::io(format!("container {id}: create cgroup")))?;
        for warning in warnings {
            tracing::warn!(container = %id, "{warning}");
        }
        spec.cgroups = cgroups.clone();

        let dir = self.container_dir(id.ordinal());
        let process = match container::launch(&spec, &dir).await {
            Ok(process) => process,
            Err(e) => {
                cgroup::remove(&cgroups);
                return Err(e.into());
            }
        };
        {
            let mut store = self.store();
            if let Some(c) = store.pods.get_mut(id).and_then(|p| p.container.as_mut()) {
                c.identity = Some(process.identity());
                c.process = Some(process.clone());
                c.cgroups = cgroups.clone();
                c.phase = ContainerPhase::Created;
                c.started_at = now_nanos();
                c.exit_code = 0;
                c.reason.clear();
                c.message.clear();
            }
        }
        // Recorded before waiting for readiness: a runtime that dies now
        // must find (and not orphan) this process when it comes back.
        if let Err(e) = self.persist(id) {
            process.signal(Signal::SIGKILL);
            process.wait().await;
            cgroup::remove(&cgroups);
            return Err(e);
        }

        match wait_ready(&socket, &process, self.config.start_timeout).await {
            Ok(readiness) => {
                let mut store = self.store();
                let pod = store
                    .pods
                    .get_mut(id)
                    .expect("pod held by the operation lock");
                pod.lifecycle = Lifecycle::Running;
                if let Some(c) = pod.container.as_mut() {
                    c.phase = ContainerPhase::Running;
                }
                let incarnation = pod_started_at(&store, id);
                store.pool.set_running(id, socket.clone(), incarnation);
                self.publish(&store);
                drop(store);
                self.watch_exit(id.clone(), process);
                tracing::info!(container = %id, ?readiness, "container running");
                Ok(())
            }
            Err(not_ready) => {
                let error = match not_ready {
                    NotReady::Exited(record) => ContainerError::ExitedDuringStart {
                        id: id.to_string(),
                        code: record.exit_code,
                        log: log_tail(log_path, 3),
                    },
                    NotReady::Timeout(last) => {
                        process.signal(Signal::SIGKILL);
                        ContainerError::NotReady {
                            id: id.to_string(),
                            timeout: self.config.start_timeout,
                            last,
                        }
                    }
                };
                let record = process.wait().await;
                let cgroups = {
                    let mut store = self.store();
                    let c = store.pods.get_mut(id).and_then(|p| p.container.as_mut());
                    match c {
                        Some(c) => {
                            c.record_exit(process.pid, &record);
                            c.reason = "StartError".into();
                            c.message = error.to_string();
                            std::mem::take(&mut c.cgroups)
                        }
                        None => Vec::new(),
                    }
                };
                cgroup::remove(&cgroups);
                Err(error.into())
            }
        }
    }

    /// Marks the container EXITED and takes it out of routing the moment
    /// its process ends on its own.
    pub(crate) fn watch_exit(self: &std::sync::Arc<Self>, id: PodId, process: Process) {
        let runtime = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let record = process.wait().await;
            let Some(runtime) = runtime.upgrade() else {
                return;
            };
            let cgroups = {
                let mut store = runtime.store();
                let Some(pod) = store.pods.get_mut(&id) else {
                    return;
                };
                let Some(container) = pod.container.as_mut() else {
                    return;
                };
                if !container.record_exit(process.pid, &record) {
                    return;
                }
                if matches!(pod.lifecycle, Lifecycle::Running | Lifecycle::Starting) {
                    pod.lifecycle = Lifecycle::Stopped;
                }
                let cgroups = std::mem::take(&mut container.cgroups);
                if store.pool.set_not_running(&id) {
                    runtime.publish(&store);
                }
                cgroups
            };
            cgroup::remove(&cgroups);
            tracing::warn!(container = %id, exit_code = record.exit_code, "container exited");
            if let Err(e) = runtime.persist(&id) {
                tracing::error!(container = %id, error = %e, "cannot record the container's exit");
            }
        });
    }
}

/// The process to run, as Docker and containerd compose it: the CRI command
/// replaces the image entrypoint (and drops its cmd); CRI args replace cmd.
fn launch_spec(
    id: &PodId,
    sandbox: &cri::PodSandboxConfig,
    config: &cri::ContainerConfig,
    image: &ImageConfig,
    socket_dir: &Path,
    dir: &Path,
) -> Result<LaunchSpec, Error> {
    let mut args = if config.command.is_empty() {
        image.entrypoint.clone()
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        args.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        args.extend(image.cmd.iter().cloned());
    }
    if args.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "container {id}: no command: the image has no entrypoint or cmd and the container config gives none"
        )));
    }

    let mut env: Vec<String> = image.env.clone();
    let mut set = |key: &str, value: &str| {
        let prefix = format!("{key}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{key}={value}"));
    };
    for kv in &config.envs {
        set(&kv.key, &kv.value);
    }
    set(
        "VIMANA_GRPC_ADDRESS",
        &format!("unix:{SOCKET_DIR_IN_CONTAINER}/{SOCKET_NAME}"),
    );
    set("VIMANA_POD_ID", &id.to_string());
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }

    let security = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let (mut uid, mut gid) = (None, None);
    if let Some(user) = image.user.as_deref().filter(|u| !u.is_empty()) {
        let (u, g) = user.split_once(':').unwrap_or((user, ""));
        uid = Some(u.parse::<u32>().map_err(|_| {
            Error::InvalidArgument(format!(
                "container {id}: image user {user:?} is not numeric; user names are not supported (set runAsUser)"
            ))
        })?);
        gid = g.parse::<u32>().ok();
    }
    if let Some(s) = security {
        if let Some(u) = &s.run_as_user {
            uid = Some(u.value as u32);
        }
        if let Some(g) = &s.run_as_group {
            gid = Some(g.value as u32);
        }
        if !s.run_as_username.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "container {id}: runAsUserName {:?} is not supported; use a numeric runAsUser",
                s.run_as_username
            )));
        }
    }
    let hostname =
        (!sandbox.hostname.is_empty()).then(|| sandbox.hostname.chars().take(64).collect());
    let working_dir = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else {
        image.working_dir.clone().unwrap_or_else(|| "/".into())
    };
    Ok(LaunchSpec {
        container_id: id.to_string(),
        lower: Default::default(),
        upper: dir.join("upper"),
        work: dir.join("work"),
        merged: dir.join("merged"),
        readonly_rootfs: security.is_some_and(|s| s.readonly_rootfs),
        args,
        env,
        cwd: working_dir,
        hostname,
        uid,
        gid,
        supplemental_groups: security
            .map(|s| s.supplemental_groups.iter().map(|g| *g as u32).collect())
            .unwrap_or_default(),
        socket_dir: socket_dir.to_path_buf(),
        log_path: None,
        cgroups: Vec::new(),
        exit_file: dir.join("exit.json"),
        mounts: container::mounts::validate(config)
            .map_err(|e| Error::InvalidArgument(format!("container {id}: {e}")))?,
    })
}

pub(crate) fn limits_of(config: &cri::ContainerConfig) -> cgroup::Limits {
    let Some(r) = config.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
        return cgroup::Limits::default();
    };
    let mut unified: Vec<_> = r
        .unified
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    unified.sort();
    cgroup::Limits {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        unified,
    }
}

fn pod_started_at(store: &crate::control::state::Store, id: &PodId) -> u64 {
    store.pods[id]
        .container
        .as_ref()
        .map(|c| c.started_at as u64)
        .unwrap_or_default()
}
