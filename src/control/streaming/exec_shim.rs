//! The exec helper: `vimanad exec-shim REQUEST` (hidden), started by
//! [`super::exec`] for every ExecSync and Exec.
//!
//! A small single-threaded process (no runtime, no threads: it calls setns
//! and forks). It checks that the container's init is still the process
//! vimanad recorded (PID and start time, through a pidfd, so a recycled PID
//! is never entered), joins the container's cgroups, enters all its
//! namespaces at once (`setns(pidfd, ...)`: mount, PID, IPC, UTS, network,
//! cgroup; the mount namespace brings the container's root), and forks the
//! command, which enters the container's user namespace if it has one (last,
//! as the shim creates it), and takes the container's working directory, environment,
//! user and groups, and the same capabilities, seccomp filter and
//! no_new_privs as the container, through the sandbox's own functions
//! (`container::security`), in the shim's order. The command's stdio is
//! this process's, as vimanad set it up (pipes or a pty). It reports how the
//! command ended as one JSON [`Outcome`] on the status descriptor.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult};
use serde::{Deserialize, Serialize};

use crate::control::container::security;
use crate::control::container::spec::{read_json, LaunchSpec};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What vimanad asks (one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The container's launch spec (in its state directory).
    pub spec: PathBuf,
    /// The container's init (host PID) and its start time.
    pub pid: i32,
    pub pid_start: u64,
    pub args: Vec<String>,
    /// Make the command a session leader with fd 0 as controlling terminal.
    pub tty: bool,
    /// Inherited descriptor the outcome is written to.
    pub status_fd: i32,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It ran; exit code, 128 + signal if killed.
    Exited { code: i32, signal: Option<i32> },
    /// It never ran: why, in runc's words where runc has some.
    Failed { error: String },
}

pub fn main(request: &str) -> i32 {
    let request: Request = match serde_json::from_str(request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vimanad exec-shim: bad request: {e}");
            return 2;
        }
    };
    // SAFETY: vimanad passes this descriptor to this process only.
    let mut status = fs::File::from(unsafe { OwnedFd::from_raw_fd(request.status_fd) });
    let _ = nix::fcntl::fcntl(
        status.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let outcome = run(&request).unwrap_or_else(|error| Outcome::Failed { error });
    let _ = status.write_all(&serde_json::to_vec(&outcome).unwrap_or_default());
    match outcome {
        Outcome::Exited { code, .. } => code,
        Outcome::Failed { .. } => 126,
    }
}

fn run(request: &Request) -> Result<Outcome, String> {
    let spec: LaunchSpec = read_json(&request.spec)
        .map_err(|e| format!("read the container's spec {}: {e}", request.spec.display()))?;
    if request.args.first().is_none_or(|a| a.is_empty()) {
        return Err("no command given".to_owned());
    }
    let pidfd = open_container(request.pid, request.pid_start)?;
    for dir in &spec.cgroups {
        fs::write(dir.join("cgroup.procs"), "0")
            .map_err(|e| format!("join the container's cgroup {}: {e}", dir.display()))?;
    }
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    // SAFETY: setns on a pidfd this process owns; single-threaded.
    if unsafe { libc::setns(pidfd.as_raw_fd(), flags) } != 0 {
        return Err(format!(
            "enter the container's namespaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    let (fail_r, fail_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: single-threaded; the child only runs ordinary code then execs.
    let child = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(fail_r);
            let error = match command(&spec, request, &pidfd) {
                Err(e) => e,
                Ok(never) => match never {},
            };
            let _ = fs::File::from(fail_w).write_all(error.as_bytes());
            // SAFETY: leave the forked child without running destructors.
            unsafe { libc::_exit(127) };
        }
        ForkResult::Parent { child } => child,
    };
    drop(fail_w);
    let mut failure = String::new();
    let _ = fs::File::from(fail_r).read_to_string(&mut failure);
    let status = loop {
        match waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    if !failure.is_empty() {
        return Ok(Outcome::Failed { error: failure });
    }
    Ok(match status {
        Ok(WaitStatus::Exited(_, code)) => Outcome::Exited { code, signal: None },
        Ok(WaitStatus::Signaled(_, sig, _)) => Outcome::Exited {
            code: 128 + sig as i32,
            signal: Some(sig as i32),
        },
        other => Outcome::Failed {
            error: format!("wait for the command: {other:?}"),
        },
    })
}

/// A pidfd on the container's init, once it is proved to be the recorded
/// process (the pidfd pins it: checking after opening closes the race).
fn open_container(pid: i32, start: u64) -> Result<OwnedFd, String> {
    let gone = || "the container is not running (its process has exited)".to_owned();
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(gone());
    }
    // SAFETY: the kernel just gave us this descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|_| gone())?;
    let rest = &stat[stat.rfind(')').ok_or_else(gone)? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("Z");
    let started: Option<u64> = fields.get(19).and_then(|s| s.parse().ok());
    if state == "Z" || started != Some(start) || start == 0 {
        return Err(gone());
    }
    Ok(pidfd)
}

/// In the forked child (already in the container's namespaces): becomes
/// the command. Returns only on failure, with why.
fn command(
    spec: &LaunchSpec,
    request: &Request,
    pidfd: &OwnedFd,
) -> Result<std::convert::Infallible, String> {
    // The container's user namespace, when it has one, last: its other
    // namespaces are owned by the node's, as the shim made them.
    if spec.sandbox.user_namespace.is_some() {
        // SAFETY: setns on a pidfd this process owns; single-threaded.
        if unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWUSER) } != 0 {
            return Err(format!(
                "enter the container's user namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    if request.tty {
        // SAFETY: fd 0 is the pty's slave end, set up by vimanad.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(format!(
                "set the controlling terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    nix::unistd::chdir(cwd).map_err(|e| format!("chdir to {cwd}: {e}"))?;
    let program = resolve(&request.args[0], &spec.env)?;
    let argv = cstrings(&request.args)?;
    let envp = cstrings(&spec.env)?;

    // The container's own sandbox and user, in the shim's order and
    // through the shim's and the sandbox's own functions.
    let sandbox = &spec.sandbox;
    if let (Some(programs), false) = (&sandbox.seccomp, sandbox.no_new_privs) {
        security::seccomp::install(programs)?;
    }
    security::caps::drop_bounding(sandbox.caps)?;
    security::caps::keep_across_setuid(true)?;
    crate::control::container::shim::set_user(spec)?;
    security::caps::keep_across_setuid(false)?;
    security::caps::apply(sandbox.caps, sandbox.ambient)?;
    // After the credential changes, which clear it: the command dies with
    // this process (vimanad kills it at an ExecSync timeout).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("set parent-death signal: {e}"))?;
    if sandbox.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("set no_new_privs: {e}"))?;
        if let Some(programs) = &sandbox.seccomp {
            security::seccomp::install(programs)?;
        }
    }
    let error = nix::unistd::execve(&program, &argv, &envp).unwrap_err();
    Err(format!("exec: {:?}: {}", request.args[0], error.desc()))
}

/// Finds the program as runc does: a name with a slash is a path, any
/// other is looked up in the container's PATH. Errors are runc's words.
fn resolve(name: &str, env: &[String]) -> Result<CString, String> {
    let executable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if name.contains('/') {
        let path = PathBuf::from(name);
        match fs::metadata(&path) {
            Err(_) => {
                return Err(format!(
                    "exec: {name:?}: stat {name}: no such file or directory"
                ))
            }
            Ok(m) if m.is_dir() => return Err(format!("exec: {name:?}: is a directory")),
            Ok(_) if !executable(&path) => {
                return Err(format!("exec: {name:?}: permission denied"))
            }
            Ok(_) => path,
        }
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(name))
            .find(|p| executable(p))
            .ok_or_else(|| format!("exec: {name:?}: executable file not found in $PATH"))?
    };
    CString::new(found.into_os_string().into_encoded_bytes())
        .map_err(|_| format!("exec: {name:?}: path has a NUL byte"))
}

fn cstrings(items: &[String]) -> Result<Vec<CString>, String> {
    items
        .iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| format!("{s:?} has a NUL byte")))
        .collect()
}
