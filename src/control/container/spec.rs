//! What the runtime tells a shim: the launch spec and the exit record.
//!
//! Both are JSON files in the container's state directory, so a restarted
//! runtime can read them again. This module only defines and reads them.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::security::Sandbox;

/// Everything the shim needs to start one container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LaunchSpec {
    pub container_id: String,
    /// The image's unpacked root filesystem (overlay lower, never written).
    pub lower: PathBuf,
    /// Overlay upper and work directories (the container's writable layer).
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where the overlay is mounted (inside the container's mount namespace).
    pub merged: PathBuf,
    pub readonly_rootfs: bool,
    /// argv; `args[0]` is resolved inside the container with its PATH.
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub supplemental_groups: Vec<u32>,
    /// Host directory bind-mounted at [`SOCKET_DIR_IN_CONTAINER`].
    pub socket_dir: PathBuf,
    pub log_path: Option<PathBuf>,
    /// cgroup directories the container process joins before exec.
    pub cgroups: Vec<PathBuf>,
    pub exit_file: PathBuf,
    /// The container's stdin is open for attached clients (CRI `stdin`),
    /// closed after the first one detaches (`stdin_once`); `tty`: its
    /// stdio is a pty.
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    #[serde(default)]
    pub tty: bool,
    /// Capabilities, seccomp, masked paths, namespaces (`security`).
    pub sandbox: Sandbox,
    /// CRI mounts, bound into the root by the shim (`container::mounts`).
    #[serde(default)]
    pub mounts: Vec<super::mounts::BindMount>,
}

/// Where the per-pod socket directory appears inside a container.
pub const SOCKET_DIR_IN_CONTAINER: &str = "/run/vimana";
/// The socket's file name, in that directory on both sides.
pub const SOCKET_NAME: &str = "grpc.sock";

/// How a container ended, written by the shim after reaping it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// The exit status, or 128 + signal for a killed process (as shells and
    /// the kubelet show it).
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// Unix nanoseconds.
    pub finished_at: i64,
    /// Set when the process never ran (exec failed): why.
    pub start_error: Option<String>,
}

/// The first line a shim prints on its stdout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShimHello {
    /// The container process runs with this host PID.
    Started { pid: i32 },
    /// It could not be started.
    Failed { error: String },
}

pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    // 0600: launch specs carry the container's environment (secrets).
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?
        .write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<T> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}
