//! A container process as the runtime holds it: which processes it is
//! (PIDs plus start times, so a recycled PID is never mistaken for it),
//! signals, and its exit, whether the runtime started it or adopted it
//! after a restart.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::spec::{self, ExitRecord};

/// The container process and its shim, each named by PID and by its start
/// time in clock ticks since boot (`/proc/PID/stat` field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub pid: i32,
    pub pid_start: u64,
    pub shim_pid: i32,
    pub shim_start: u64,
}

impl Identity {
    pub fn of(pid: i32, shim_pid: i32) -> Self {
        Self {
            pid,
            pid_start: start_time(pid).unwrap_or_default(),
            shim_pid,
            shim_start: start_time(shim_pid).unwrap_or_default(),
        }
    }

    /// Both processes are still the ones recorded (not exited, not a
    /// recycled PID).
    pub fn is_alive(&self) -> bool {
        let same =
            |pid: i32, start: u64| start != 0 && start_time(pid) == Some(start) && !is_zombie(pid);
        same(self.pid, self.pid_start) && same(self.shim_pid, self.shim_start)
    }
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn start_time(pid: i32) -> Option<u64> {
    // Field 22 overall; the first field after ')' is field 3.
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|state| state == "Z")
}

/// A running container process, watched until it exits.
#[derive(Debug, Clone)]
pub struct Process {
    /// The container process (PID 1 of its namespace), as the host sees it.
    pub pid: i32,
    /// Its shim, which reopens the log on SIGUSR1.
    pub shim_pid: i32,
    identity: Identity,
    exited: watch::Receiver<Option<ExitRecord>>,
}

impl Process {
    pub(super) fn new(identity: Identity, exited: watch::Receiver<Option<ExitRecord>>) -> Self {
        Self {
            pid: identity.pid,
            shim_pid: identity.shim_pid,
            identity,
            exited,
        }
    }

    /// Takes over a container started by an earlier runtime: its exit is
    /// seen through a pidfd on its shim (not our child), then read from the
    /// exit record the shim leaves.
    pub fn adopt(identity: Identity, exit_file: PathBuf) -> std::io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, identity.shim_pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this descriptor.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd owns the descriptor and is dropped with it.
        let pidfd =
            unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.map_err(|e| e.into_parts().1)?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let _ = pidfd.readable().await;
            // The shim writes the record before it exits.
            let _ = tx.send(Some(read_exit(&exit_file)));
        });
        Ok(Self::new(identity, rx))
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

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
}

/// The shim's exit record, or what is known without it.
pub fn read_exit(exit_file: &Path) -> ExitRecord {
    spec::read_json(exit_file).unwrap_or_else(|_| lost_record())
}

pub fn lost_record() -> ExitRecord {
    ExitRecord {
        exit_code: 255,
        signal: None,
        finished_at: spec::now_nanos(),
        start_error: Some("the shim ended without an exit record".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_live_processes_and_not_recycled_ones() {
        let me = std::process::id() as i32;
        let identity = Identity::of(me, me);
        assert!(identity.pid_start > 0);
        assert!(identity.is_alive());
        let recycled = Identity {
            pid_start: identity.pid_start + 1,
            ..identity
        };
        assert!(!recycled.is_alive());
        assert!(!Identity::of(i32::MAX, me).is_alive());
    }
}
