//! Containers as processes: launching, readiness, signals, exit.
//!
//! The runtime side of a container: it writes a [`LaunchSpec`], starts a
//! [`shim`] for it, learns the container's PID, waits for the component to
//! serve gRPC on its socket, and watches for its exit. It knows nothing of
//! CRI messages or of the pod lifecycle; `control::cri` decides when to call
//! what.

pub mod attach;
pub mod cgroup;
pub mod logs;
pub mod mounts;
pub mod process;
mod ready;
pub mod security;
pub mod shim;
pub mod spec;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

pub use process::{Identity, Process};
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
        .arg0("vimanad")
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
        let _ = tx.send(Some(process::read_exit(&exit_file)));
    });
    Ok(Process::new(Identity::of(pid, shim_pid), rx))
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
    for dir in ["proc", "sys", "dev", "tmp", "run/vimana", ".oldroot", "etc"] {
        let path = rootfs.join(dir);
        if !path.is_dir() {
            std::fs::create_dir_all(&path)?;
            if dir == "tmp" {
                // As every distribution has it: any user may write there.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o1777))?;
            }
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
