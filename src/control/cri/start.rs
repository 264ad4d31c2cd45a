//! StartContainer: from image and CRI config to a component serving gRPC.
//!
//! The container is routable (in the pod pool) before this call returns
//! success, and a start that fails leaves the pod `Stopped` with the reason,
//! no process and no cgroup behind (one rollback: [`Runtime::roll_back`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;

use crate::control::container::{
    self, cgroup, log_tail, security, wait_ready, ContainerError, LaunchSpec, NotReady, Process,
    SOCKET_DIR_IN_CONTAINER, SOCKET_NAME,
};
use crate::control::image::Image;
use crate::control::lifecycle::{step, Call, Lifecycle, Step};
use crate::control::runtime::{local_name, Runtime};
use crate::control::state::{now_nanos, ContainerId, ContainerPhase};
use crate::control::Error;

/// What a start needs from the store, taken once.
struct Inputs {
    sandbox: cri::PodSandboxConfig,
    config: cri::ContainerConfig,
    image: Image,
    socket_dir: PathBuf,
    dir: PathBuf,
    log_path: Option<PathBuf>,
}

/// Where a container's process runs: known once the image is unpacked and
/// the cgroups made.
struct Placement {
    lower: PathBuf,
    cgroups: Vec<PathBuf>,
    log_path: Option<PathBuf>,
}

/// What a start made so far, for its rollback.
#[derive(Default)]
struct Made {
    process: Option<Process>,
    cgroups: Vec<PathBuf>,
}

impl Runtime {
    pub async fn start_container(self: &Arc<Self>, container_id: &str) -> Result<(), Error> {
        let cid = ContainerId::parse(container_id)
            .ok_or_else(|| Error::NotFound(format!("container {container_id:?} not found")))?;
        let op = self.begin(&cid.pod).await;
        let result = self.start(&cid).await;
        self.commit(op, result).await
    }

    async fn start(self: &Arc<Self>, cid: &ContainerId) -> Result<(), Error> {
        let inputs = {
            let mut store = self.store();
            let pod = store.pods.get_mut(&cid.pod).ok_or_else(|| {
                Error::NotFound(format!(
                    "container {cid} not found: the pod has no container (CreateContainer first)"
                ))
            })?;
            let current = pod.is_current(cid.seq);
            if pod.container(cid.seq).is_none() {
                return Err(Error::NotFound(format!(
                    "container {cid} not found: the pod has no container (CreateContainer first)"
                )));
            }
            match step(pod.lifecycle, Call::StartContainer { current }) {
                Step::Go(target) => pod.lifecycle = target,
                Step::AlreadyDone => return Ok(()),
                other => {
                    return Err(
                        super::container::refusal(&format!("container {cid}"), other)
                            .expect("refused"),
                    )
                }
            }
            let c = pod.container(cid.seq).expect("checked above");
            Inputs {
                sandbox: pod.config.clone(),
                config: c.config.clone(),
                image: c.image.clone(),
                socket_dir: pod.socket_dir.clone(),
                dir: c.dir.clone(),
                log_path: c.log_path.clone(),
            }
        };
        let mut made = Made::default();
        match self.launch(cid, &inputs, &mut made).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.roll_back(cid, made, &e).await;
                Err(e)
            }
        }
    }

    /// Every step of a start; on error the caller rolls back what `made`
    /// holds.
    async fn launch(
        self: &Arc<Self>,
        cid: &ContainerId,
        inputs: &Inputs,
        made: &mut Made,
    ) -> Result<(), Error> {
        let image_rootfs = {
            let (images, image) = (self.images.clone(), inputs.image.clone());
            tokio::task::spawn_blocking(move || images.rootfs(&image))
                .await
                .map_err(|e| Error::Io {
                    what: format!("container {cid}: unpack image"),
                    source: std::io::Error::other(e),
                })??
        };
        container::prepare_mountpoints(&image_rootfs).map_err(Error::io(format!(
            "container {cid}: prepare {}",
            image_rootfs.display()
        )))?;

        let socket = container::socket_path(&inputs.socket_dir);
        // Never through a symlink the last container left there.
        if crate::pool::socket::connect(&socket, None).is_ok() {
            return Err(Error::FailedPrecondition(format!(
                "container {cid}: socket {} is in use by another process",
                socket.display()
            )));
        }
        let _ = std::fs::remove_file(&socket);

        let (cgroups, warnings) = self
            .cgroups
            .create(
                &self.cgroup_parent_of(&cid.pod, &inputs.sandbox)?,
                &local_name(cid),
                &self.limits(&inputs.config),
            )
            .map_err(Error::io(format!("container {cid}: create cgroup")))?;
        made.cgroups = cgroups.clone();
        for warning in warnings {
            tracing::warn!(container = %cid, "{warning}");
        }
        let placement = Placement {
            lower: image_rootfs,
            cgroups: cgroups.clone(),
            log_path: inputs.log_path.clone(),
        };
        let spec = launch_spec(cid, inputs, placement, &self.config.seccomp_profile_root)?;
        // The component's user owns its socket directory (in a user
        // namespace: the node's ids its own map to).
        let owner = match &spec.sandbox.user_namespace {
            Some(maps) => maps
                .host_uid(spec.uid.unwrap_or(0))
                .zip(maps.host_gid(spec.gid.unwrap_or(0))),
            None => spec.uid.zip(spec.gid.or(Some(0))),
        };
        if let Some((uid, gid)) = owner {
            let _ = nix::unistd::chown(
                &spec.socket_dir,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            );
        }

        let process = container::launch(&spec, &inputs.dir).await?;
        made.process = Some(process.clone());
        if let Some(c) = self.store().container_mut(cid) {
            c.identity = Some(process.identity());
            c.process = Some(process.clone());
            c.cgroups = cgroups;
            c.phase = ContainerPhase::Created;
            c.started_at = now_nanos();
            c.finished_at = 0;
            c.exit_code = 0;
            c.reason.clear();
            c.message.clear();
            c.stop_requested = false;
        }
        // Recorded before waiting for readiness: a runtime that dies now
        // must find (and not orphan) this process when it comes back. The
        // transaction's commit records the outcome.
        self.persist(&cid.pod).await?;

        match wait_ready(&socket, &process, self.config.start_timeout).await {
            Ok(readiness) => {
                let mut store = self.store();
                let mut started_at = 0;
                if let Some(pod) = store.pods.get_mut(&cid.pod) {
                    pod.lifecycle = Lifecycle::Running;
                    if let Some(c) = pod.container_mut(cid.seq) {
                        c.phase = ContainerPhase::Running;
                        started_at = c.started_at;
                    }
                }
                let peer = crate::pool::Peer::of_pid(process.pid).unwrap_or_default();
                store.route(&cid.pod, socket, started_at as u64, peer);
                self.emit(&store, cid, cri::ContainerEventType::ContainerStartedEvent);
                drop(store);
                let event = if cid.seq > 0 { "restart" } else { "start" };
                self.metrics
                    .container_events
                    .with_label_values(&[event, "ready"])
                    .inc();
                self.watch_exit(cid.clone(), process);
                tracing::info!(container = %cid, ?readiness, "container running");
                Ok(())
            }
            Err(NotReady::Exited(record)) => Err(ContainerError::ExitedDuringStart {
                id: cid.to_string(),
                code: record.exit_code,
                log: log_tail(inputs.log_path.as_deref(), 3),
            }
            .into()),
            Err(NotReady::Timeout(last)) => Err(ContainerError::NotReady {
                id: cid.to_string(),
                timeout: self.config.start_timeout,
                last,
            }
            .into()),
        }
    }

    /// The one rollback of a failed start: the process (if any) killed and
    /// reaped, its cgroups removed, the container EXITED with the reason,
    /// the pod `Stopped`.
    async fn roll_back(&self, cid: &ContainerId, made: Made, error: &Error) {
        let record = match &made.process {
            Some(process) => {
                process.signal(Signal::SIGKILL);
                Some(process.wait().await)
            }
            None => None,
        };
        {
            let mut store = self.store();
            if let Some(pod) = store.pods.get_mut(&cid.pod) {
                pod.lifecycle = Lifecycle::Stopped;
                if let Some(c) = pod.container_mut(cid.seq) {
                    match (&made.process, &record) {
                        (Some(process), Some(record)) => {
                            c.record_exit(process.pid, record);
                        }
                        _ => {
                            c.phase = ContainerPhase::Exited;
                            c.finished_at = now_nanos();
                            c.exit_code = 128;
                        }
                    }
                    c.phase = ContainerPhase::Exited;
                    c.reason = "StartError".into();
                    c.message = error.to_string();
                    c.cgroups.clear();
                }
            }
            self.emit(&store, cid, cri::ContainerEventType::ContainerStoppedEvent);
        }
        self.metrics
            .container_events
            .with_label_values(&["start_failed", "StartError"])
            .inc();
        cgroup::remove(&made.cgroups);
        tracing::warn!(container = %cid, error = %error, "container failed to start");
    }

    /// Marks the container EXITED and takes it out of routing the moment
    /// its process ends on its own, then records it.
    /// CreateContainer's check of what the container asks of its sandbox
    /// (security context, log path): refused now, before anything exists.
    pub(crate) fn check_security(
        &self,
        pod: &cri::PodSandboxConfig,
        cid: &ContainerId,
        config: &cri::ContainerConfig,
    ) -> Result<(), Error> {
        security::check_log_path(&config.log_path)
            .and_then(|()| {
                security::from_cri(pod, config, &self.config.seccomp_profile_root).map(drop)
            })
            .map_err(|e| Error::InvalidArgument(format!("container {cid}: {e}")))
    }

    /// The cgroup a pod's containers go under: the kubelet's pod cgroup
    /// (QoS tier, node allocatable) when it names one, else vimanad's.
    pub(crate) fn cgroup_parent_of(
        &self,
        pod: &crate::pool::PodId,
        sandbox: &cri::PodSandboxConfig,
    ) -> Result<String, Error> {
        let asked = sandbox
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        Ok(security::cgroup_parent(&asked)
            .map_err(|e| Error::InvalidArgument(format!("pod {pod}: {e}")))?
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| self.config.cgroup_parent.clone()))
    }

    /// The cgroup limits of a container: its CRI resources and the node's
    /// process limit.
    pub(crate) fn limits(&self, config: &cri::ContainerConfig) -> cgroup::Limits {
        let mut limits = limits_of(config);
        limits.pids_max = self.config.pids_limit;
        limits
    }

    pub(crate) fn watch_exit(self: &Arc<Self>, cid: ContainerId, process: Process) {
        let runtime = Arc::downgrade(self);
        tokio::spawn(async move {
            let record = process.wait().await;
            let Some(runtime) = runtime.upgrade() else {
                return;
            };
            let (cgroups, requested) = {
                let mut store = runtime.store();
                let Some(pod) = store.pods.get_mut(&cid.pod) else {
                    return;
                };
                let current = pod.is_current(cid.seq);
                let Some(c) = pod.container_mut(cid.seq) else {
                    return;
                };
                if !c.record_exit(process.pid, &record) {
                    return;
                }
                runtime
                    .metrics
                    .container_events
                    .with_label_values(&["exit", &c.reason])
                    .inc();
                let requested = c.stop_requested;
                let cgroups = std::mem::take(&mut c.cgroups);
                if current && matches!(pod.lifecycle, Lifecycle::Running | Lifecycle::Starting) {
                    pod.lifecycle = Lifecycle::Stopped;
                }
                if current {
                    store.unroute(&cid.pod);
                    runtime.publish_changes(&mut store);
                }
                runtime.emit(&store, &cid, cri::ContainerEventType::ContainerStoppedEvent);
                (cgroups, requested)
            };
            cgroup::remove(&cgroups);
            if requested {
                tracing::info!(container = %cid, exit_code = record.exit_code, "container exited");
            } else {
                tracing::warn!(container = %cid, exit_code = record.exit_code, "container exited on its own");
            }
            if let Err(e) = runtime.persist(&cid.pod).await {
                tracing::error!(container = %cid, error = %e, "cannot record the container's exit");
            }
        });
    }
}

/// The process to run, as Docker and containerd compose it: the CRI command
/// replaces the image entrypoint (and drops its cmd); CRI args replace cmd.
fn launch_spec(
    id: &ContainerId,
    inputs: &Inputs,
    placement: Placement,
    seccomp_profile_root: &Path,
) -> Result<LaunchSpec, Error> {
    let (sandbox, config, image) = (&inputs.sandbox, &inputs.config, &inputs.image.config);
    let (socket_dir, dir) = (inputs.socket_dir.as_path(), inputs.dir.as_path());
    let pod_sandbox = security::from_cri(sandbox, config, seccomp_profile_root)
        .map_err(|e| Error::InvalidArgument(format!("container {id}: {e}")))?;
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
    set("VIMANA_POD_ID", &id.pod.to_string());
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }

    let security = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let (mut uid, mut gid) = (None, None);
    if let Some(user) = image.user.as_deref().filter(|u| !u.is_empty()) {
        let found = super::user::resolve(&placement.lower, user).map_err(|e| {
            Error::InvalidArgument(format!("container {id}: {e} (or set runAsUser)"))
        })?;
        (uid, gid) = (Some(found.uid), found.gid);
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
        lower: placement.lower,
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
        log_path: placement.log_path,
        cgroups: placement.cgroups,
        exit_file: dir.join("exit.json"),
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        sandbox: pod_sandbox,
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
        pids_max: 0,
    }
}
