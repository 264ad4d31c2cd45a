//! Containers as processes: launching, readiness, signals, exit.
//!
//! The runtime side of a container: it writes a [`LaunchSpec`], starts a
//! [`shim`] for it, learns the container's PID, waits for the component to
//! serve gRPC on its socket, and watches for its exit. It knows nothing of
//! CRI messages or of the pod lifecycle; `control::cri` decides when to call
//! what.

pub mod cgroup;
pub mod logs;
mod ready;
pub mod shim;
pub mod spec;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

pub use ready::{wait_ready, NotReady, Readiness};
pub use spec::{ExitRecord, LaunchSpec, ShimHello, SOCKET_DIR_IN_CONTAINER, SOCKET_NAME};

/// Errors of this layer; each names the container and what failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {id}: {what}: {source}")]
    Io {
        id: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id}: {reason}")]
    StartFailed { id: String, reason: String },
    #[error("container {id}: exited with code {code} before it served gRPC{log}")]
    ExitedDuringStart { id: String, code: i32, log: String },
    #[error("container {id}: not ready within {timeout:?} ({last}); the process was killed")]
    NotReady {
        id: String,
        timeout: Duration,
        last: String,
    },
}

/// A running container process, watched until it exits.
#[derive(Debug, Clone)]
pub struct Process {
    /// The container process (PID 1 of its namespace), as the host sees it.
    pub pid: i32,
    /// Its shim, which reopens the log on SIGUSR1.
    pub shim_pid: i32,
    exited: watch::Receiver<Option<ExitRecord>>,
}

impl Process {
    /// Sends `signal` to the container process (its host PID).
    pub fn signal(&self, signal: Signal) {
        if self.exit().is_none() {
            let _ = kill(Pid::from_raw(self.pid), signal);
        }
    }

    /// How it ended, once it has.
    pub fn exit(&self) -> Option<ExitRecord> {
        self.exited.borrow().clone()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> ExitRecord {
        let mut rx = self.exited.clone();
        let record = rx.wait_for(Option::is_some).await.map(|r| r.clone());
        record.ok().flatten().unwrap_or_else(lost_record)
    }

    /// Waits up to `timeout` for the exit.
    pub async fn wait_timeout(&self, timeout: Duration) -> Option<ExitRecord> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }

    /// A receiver that sees the exit (for tasks reacting to crashes).
    pub fn exited(&self) -> watch::Receiver<Option<ExitRecord>> {
        self.exited.clone()
    }
}

fn lost_record() -> ExitRecord {
    ExitRecord {
        exit_code: 255,
        signal: None,
        finished_at: spec::now_nanos(),
        start_error: Some("the shim ended without an exit record".to_owned()),
    }
}

/// Starts a shim for `spec` in `dir` (the container's state directory) and
/// returns once the container process runs (or could not be started).
pub async fn launch(spec: &LaunchSpec, dir: &Path) -> Result<Process, ContainerError> {
    let id = spec.container_id.clone();
    let io = |what: &str| {
        let id = id.clone();
        let what = what.to_owned();
        move |source| ContainerError::Io { id, what, source }
    };
    let spec_path = dir.join("spec.json");
    let _ = std::fs::remove_file(&spec.exit_file);
    spec::write_json_atomic(&spec_path, spec).map_err(io("write launch spec"))?;
    let shim_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("shim.log"))
        .map_err(io("open shim log"))?;
    // The running binary itself, even when an upgrade replaced the file.
    // No pre_exec hook: std can then use posix_spawn instead of fork, which
    // would copy the shards' locked io_uring memory. The shim makes its own
    // session.
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command
        .arg("shim")
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(shim_log)
        .env_clear()
        .kill_on_drop(false);
    let mut child = command.spawn().map_err(io("start shim"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .await
        .map_err(io("read shim hello"))?;
    let hello: ShimHello =
        serde_json::from_str(first.trim()).unwrap_or_else(|_| ShimHello::Failed {
            error: format!(
                "the shim failed before starting the container (see {})",
                dir.join("shim.log").display()
            ),
        });
    let exit_file = spec.exit_file.clone();
    let (tx, rx) = watch::channel(None);
    let pid = match hello {
        ShimHello::Started { pid } => pid,
        ShimHello::Failed { error } => {
            let _ = child.wait().await;
            return Err(ContainerError::StartFailed { id, reason: error });
        }
    };
    let shim_pid = child.id().map(|p| p as i32).unwrap_or_default();
    tokio::spawn(async move {
        let _ = child.wait().await;
        let record = spec::read_json(&exit_file).unwrap_or_else(|_| lost_record());
        let _ = tx.send(Some(record));
    });
    Ok(Process {
        pid,
        shim_pid,
        exited: rx,
    })
}

/// The last `n` messages of a CRI log file, for errors the operator can act on.
pub fn log_tail(path: Option<&Path>, n: usize) -> String {
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return String::new();
    };
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last output: {}", tail.join(" | "))
    }
}

/// Creates the mount points the shim needs in an image's root filesystem
/// once, so starting a container does not copy them up into its writable
/// layer every time. Idempotent.
pub fn prepare_mountpoints(rootfs: &Path) -> std::io::Result<()> {
    for dir in ["proc", "dev", "tmp", "run/vimana", ".oldroot", "etc"] {
        let path = rootfs.join(dir);
        if !path.is_dir() {
            std::fs::create_dir_all(&path)?;
        }
    }
    let resolv = rootfs.join("etc/resolv.conf");
    if std::fs::symlink_metadata(&resolv).is_err() {
        std::fs::File::create(&resolv)?;
    }
    Ok(())
}

/// The host path of a pod's socket in its socket directory.
pub fn socket_path(socket_dir: &Path) -> PathBuf {
    socket_dir.join(SOCKET_NAME)
}
