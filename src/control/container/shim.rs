//! The per-container shim: `vimanad shim SPEC`.
//!
//! A small single-threaded process started by the runtime in its own session.
//! It creates the container's namespaces, forks the container process (PID 1
//! of a new PID namespace, inside an overlay of the image), writes its output
//! to the CRI log file, reaps it and leaves an [`ExitRecord`]. It outlives the
//! runtime, so a runtime restart loses neither the container nor its logs,
//! and the container never outlives it (parent-death signal).
//!
//! It must not start threads or an async runtime: it forks.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};

use super::logs::{LineSplitter, LogFile, Stream};
use super::security;
use super::spec::{
    now_nanos, read_json, write_json_atomic, ExitRecord, LaunchSpec, ShimHello,
    SOCKET_DIR_IN_CONTAINER,
};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs the shim; returns the shim's own exit code.
pub fn main(spec_path: &Path) -> i32 {
    // Its own session: signals aimed at the runtime's process group do not
    // reach containers, and the shim outlives the runtime.
    let _ = nix::unistd::setsid();
    let spec: LaunchSpec = match read_json(spec_path) {
        Ok(spec) => spec,
        Err(e) => {
            hello(&ShimHello::Failed {
                error: format!("read launch spec {}: {e}", spec_path.display()),
            });
            return 1;
        }
    };
    match run(&spec) {
        Ok(()) => 0,
        Err(error) => {
            // Tell the runtime if it is still listening, and leave the same
            // words in the exit record for one that restarts later.
            hello(&ShimHello::Failed {
                error: error.clone(),
            });
            let record = ExitRecord {
                exit_code: 128,
                signal: None,
                finished_at: now_nanos(),
                start_error: Some(error),
            };
            let _ = write_json_atomic(&spec.exit_file, &record);
            1
        }
    }
}

fn hello(message: &ShimHello) {
    let mut line = serde_json::to_vec(message).unwrap_or_default();
    line.push(b'\n');
    let _ = std::io::stdout().write_all(&line);
    let _ = std::io::stdout().flush();
}

fn run(spec: &LaunchSpec) -> Result<(), String> {
    let mut log = LogFile::open(spec.log_path.as_deref())
        .map_err(|e| format!("open log file {:?}: {e}", spec.log_path))?;
    let (out_r, out_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // The container's stdio, held by the attach relay (forked here, before
    // the PID namespace exists), which feeds the log pipes.
    let stdio = super::attach::start(spec, &out_w, &err_w)?;
    let (fail_r, fail_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // The user namespace handshake: the child says it has unshared, the
    // shim (root in the node's namespace) writes its id maps and answers.
    let (userns_r, userns_w) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (mapped_r, mapped_w) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;

    // Blocked before the fork so no SIGCHLD can slip by unseen; the child
    // unblocks them before exec.
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        signals.add(s);
    }
    signals
        .thread_block()
        .map_err(|e| format!("block signals: {e}"))?;

    // The new PID namespace takes effect for the child only; the shim keeps
    // the host's mounts, so it is unaffected by the child's pivot_root.
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("create PID namespace: {e}"))?;

    // SAFETY: the shim is single-threaded (no runtime, no helper threads), so
    // the child may allocate and run ordinary code until exec.
    let child = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((out_r, err_r, fail_r, userns_r, mapped_w));
            let handshake = Handshake {
                unshared: fs::File::from(userns_w),
                mapped: fs::File::from(mapped_r),
            };
            let error = match container_init(spec, &stdio, handshake) {
                Err(e) => e,
                Ok(never) => match never {},
            };
            let mut fail_w = fs::File::from(fail_w);
            let _ = fail_w.write_all(error.as_bytes());
            // SAFETY: leaving the forked child without running destructors.
            unsafe { libc::_exit(127) };
        }
        ForkResult::Parent { child } => child,
    };
    drop((out_w, err_w, fail_w, userns_w, mapped_r, stdio));
    if let Some(maps) = &spec.sandbox.user_namespace {
        let mut byte = [0u8; 1];
        // EOF instead: the child failed before; the fail pipe says why.
        if fs::File::from(userns_r).read(&mut byte).unwrap_or(0) == 1 {
            let (uids, gids) = maps.files();
            let written = fs::write(format!("/proc/{child}/uid_map"), uids)
                .and_then(|()| fs::write(format!("/proc/{child}/gid_map"), gids));
            if let Err(e) = written {
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(format!("write the user namespace's id maps: {e}"));
            }
            let _ = fs::File::from(mapped_w).write_all(b"m");
        }
    } else {
        drop((userns_r, mapped_w));
    }

    let mut failure = String::new();
    let _ = fs::File::from(fail_r).read_to_string(&mut failure);
    if !failure.is_empty() {
        let _ = waitpid(child, None);
        return Err(failure);
    }
    hello(&ShimHello::Started {
        pid: child.as_raw(),
    });
    detach_stdout();

    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("signalfd: {e}"))?;
    let status = pump(child, &sfd, out_r, err_r, &mut log);
    let (exit_code, signal) = match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let record = ExitRecord {
        exit_code,
        signal,
        finished_at: now_nanos(),
        start_error: None,
    };
    write_json_atomic(&spec.exit_file, &record).map_err(|e| format!("write exit record: {e}"))
}

/// Copies the container's output into the log until it has exited and both
/// streams are closed; returns how it ended.
fn pump(
    child: Pid,
    sfd: &SignalFd,
    out_r: OwnedFd,
    err_r: OwnedFd,
    log: &mut LogFile,
) -> WaitStatus {
    let mut streams = [
        Some((out_r, LineSplitter::new(Stream::Stdout))),
        Some((err_r, LineSplitter::new(Stream::Stderr))),
    ];
    let mut status = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut drain_deadline: Option<std::time::Instant> = None;
    loop {
        if status.is_some() && streams.iter().all(Option::is_none) {
            break;
        }
        if let Some(deadline) = drain_deadline {
            // Output held open by a descendant that escaped the namespace's
            // teardown must not keep the exit record from being written.
            if std::time::Instant::now() > deadline {
                break;
            }
        }
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        for (fd, _) in streams.iter().flatten() {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        let timeout = if drain_deadline.is_some() {
            PollTimeout::from(100u16)
        } else {
            PollTimeout::NONE
        };
        if poll(&mut fds, timeout).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            while let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {
                        if let Some(s) = reap(child) {
                            status = Some(s);
                            drain_deadline =
                                Some(std::time::Instant::now() + std::time::Duration::from_secs(2));
                        }
                    }
                    Ok(Signal::SIGUSR1) => {
                        if let Err(e) = log.reopen() {
                            eprintln!("vimanad shim: reopen log: {e}");
                        }
                    }
                    Ok(sig) => {
                        let _ = kill(child, sig);
                    }
                    Err(_) => {}
                }
            }
        }
        let mut polled = ready[1..].iter();
        for slot in streams.iter_mut() {
            let Some((fd, splitter)) = slot else { continue };
            if !polled.next().copied().unwrap_or(false) {
                continue;
            }
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => {
                    let _ = splitter.finish(log);
                    *slot = None;
                }
                Ok(n) => {
                    if let Err(e) = splitter.feed(&buf[..n], log) {
                        eprintln!("vimanad shim: write log: {e}");
                    }
                }
            }
        }
    }
    for (_, splitter) in streams.iter_mut().flatten() {
        let _ = splitter.finish(log);
    }
    status.unwrap_or_else(|| waitpid(child, None).unwrap_or(WaitStatus::StillAlive))
}

fn reap(child: Pid) -> Option<WaitStatus> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(s) if s.pid() == Some(child) => return Some(s),
            Ok(_) => continue,
        }
    }
}

fn detach_stdout() {
    if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1, which this process owns.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// In the forked child, PID 1 of the new namespace: build the root
/// filesystem, drop into it and exec. Returns only on failure, with why.
/// The child's ends of the user namespace handshake.
struct Handshake {
    unshared: fs::File,
    mapped: fs::File,
}

fn container_init(
    spec: &LaunchSpec,
    stdio: &super::attach::ContainerSide,
    mut handshake: Handshake,
) -> Result<std::convert::Infallible, String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("set parent-death signal: {e}"))?;
    let sandbox = &spec.sandbox;
    let mut namespaces = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS;
    if !sandbox.host_ipc {
        namespaces |= CloneFlags::CLONE_NEWIPC;
    }
    if !sandbox.host_network {
        namespaces |= CloneFlags::CLONE_NEWNET;
    }
    unshare(namespaces).map_err(|e| format!("create namespaces ({namespaces:?}): {e}"))?;
    if !sandbox.host_network {
        security::paths::loopback_up()?;
    }
    for dir in &spec.cgroups {
        fs::write(dir.join("cgroup.procs"), "0")
            .map_err(|e| format!("join cgroup {}: {e}", dir.display()))?;
    }
    setup_rootfs(spec)?;
    security::paths::mask(&sandbox.masked_paths)?;
    security::paths::readonly(&sandbox.readonly_paths)?;
    if let Some(hostname) = &spec.hostname {
        nix::unistd::sethostname(hostname)
            .map_err(|e| format!("set hostname {hostname:?}: {e}"))?;
    }
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    fs::create_dir_all(cwd).map_err(|e| format!("create working directory {cwd}: {e}"))?;
    nix::unistd::chdir(cwd).map_err(|e| format!("enter working directory {cwd}: {e}"))?;

    // Last of the namespaces: every other one stays owned by the node's
    // user namespace, so the container's root (a node uid of the kubelet's
    // range) holds capabilities over nothing but its own user namespace.
    if spec.sandbox.user_namespace.is_some() {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("create user namespace: {e}"))?;
        handshake
            .unshared
            .write_all(b"u")
            .map_err(|e| format!("user namespace handshake: {e}"))?;
        let mut byte = [0u8; 1];
        if handshake.mapped.read(&mut byte).unwrap_or(0) != 1 {
            return Err("the shim did not map the user namespace".into());
        }
    }
    drop(handshake);

    // runc's order: without no_new_privs the filter must go in while the
    // init still holds CAP_SYS_ADMIN; with it, last before exec.
    if let (Some(programs), false) = (&sandbox.seccomp, sandbox.no_new_privs) {
        security::seccomp::install(programs)?;
    }
    security::caps::drop_bounding(sandbox.caps)?;
    security::caps::keep_across_setuid(true)?;
    set_user(spec)?;
    security::caps::keep_across_setuid(false)?;
    security::caps::apply(sandbox.caps, sandbox.ambient)?;

    let program = resolve_program(spec)?;
    let argv = cstrings(&spec.args)?;
    let envp = cstrings(&spec.env)?;
    // SAFETY: plain fd plumbing in the child before exec.
    unsafe {
        libc::dup2(stdio.stdin.as_raw_fd(), 0);
        libc::dup2(stdio.stdout.as_raw_fd(), 1);
        libc::dup2(stdio.stderr.as_raw_fd(), 2);
    }
    if stdio.tty {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        // SAFETY: fd 0 is the pty's slave end.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(format!(
                "set the controlling terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    SigSet::empty()
        .thread_set_mask()
        .map_err(|e| format!("unblock signals: {e}"))?;
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    if sandbox.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("set no_new_privs: {e}"))?;
        if let Some(programs) = &sandbox.seccomp {
            security::seccomp::install(programs)?;
        }
    }
    let error = nix::unistd::execve(&program, &argv, &envp).unwrap_err();
    Err(format!(
        "exec {}: {}",
        spec.args.first().map(String::as_str).unwrap_or(""),
        error.desc()
    ))
}

fn setup_rootfs(spec: &LaunchSpec) -> Result<(), String> {
    let none: Option<&str> = None;
    let merged = &spec.merged;
    // rslave, as runc's default: nothing propagates to the host, and
    // HostToContainer binds (`mounts.rs`) still receive the host's mounts.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)
        .map_err(|e| format!("make mounts slaves: {e}"))?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        spec.lower.display(),
        spec.upper.display(),
        spec.work.display()
    );
    mount(
        Some("overlay"),
        merged,
        Some("overlay"),
        // No device node an image or the container writes is usable.
        MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|e| format!("mount overlay root filesystem at {}: {e}", merged.display()))?;

    let inside = |p: &str| merged.join(p.trim_start_matches('/'));
    for dir in [
        "proc",
        "sys",
        "dev",
        "tmp",
        SOCKET_DIR_IN_CONTAINER,
        ".oldroot",
    ] {
        fs::create_dir_all(inside(dir))
            .map_err(|e| format!("create /{dir} in root filesystem: {e}"))?;
    }
    mount(
        Some("proc"),
        &inside("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(|e| format!("mount /proc: {e}"))?;
    mount(
        Some("sysfs"),
        &inside("sys"),
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(|e| format!("mount /sys read-only: {e}"))?;
    mount(
        Some("tmpfs"),
        &inside("dev"),
        Some("tmpfs"),
        // nodev: a node made here (CAP_MKNOD) opens nothing; the six
        // below are bind mounts of the host's and keep their own flags.
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(|e| format!("mount /dev: {e}"))?;
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = inside("dev").join(dev);
        fs::File::create(&target).map_err(|e| format!("create /dev/{dev}: {e}"))?;
        mount(
            Some(&PathBuf::from("/dev").join(dev)),
            &target,
            none,
            MsFlags::MS_BIND,
            none,
        )
        .map_err(|e| format!("bind /dev/{dev}: {e}"))?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(to, inside("dev").join(link));
    }
    if Path::new("/etc/resolv.conf").exists() {
        let target = inside("etc/resolv.conf");
        if let Some(parent) = target.parent() {
            let _ = fs::create_dir_all(parent);
        }
        if fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&target)
            .is_ok()
        {
            let _ = mount(
                Some("/etc/resolv.conf"),
                &target,
                none,
                MsFlags::MS_BIND,
                none,
            );
            let _ = mount(
                none,
                &target,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                none,
            );
        }
    }
    mount(
        Some(&spec.socket_dir),
        &inside(SOCKET_DIR_IN_CONTAINER),
        none,
        MsFlags::MS_BIND,
        none,
    )
    .map_err(|e| format!("bind socket directory {}: {e}", spec.socket_dir.display()))?;
    mount(
        none,
        &inside(SOCKET_DIR_IN_CONTAINER),
        none,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(|e| {
        format!(
            "restrict socket directory {}: {e}",
            spec.socket_dir.display()
        )
    })?;
    super::mounts::bind_all(merged, &spec.mounts)?;
    if spec.readonly_rootfs {
        mount(
            none,
            merged,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            none,
        )
        .map_err(|e| format!("make root filesystem read-only: {e}"))?;
    }

    nix::unistd::pivot_root(merged, &inside(".oldroot")).map_err(|e| format!("pivot_root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    umount2("/.oldroot", MntFlags::MNT_DETACH).map_err(|e| format!("detach old root: {e}"))?;
    let _ = fs::remove_dir("/.oldroot");
    Ok(())
}

/// Also used by `vimanad exec-shim`, so an exec'd command gets exactly the
/// container's user and groups.
pub(crate) fn set_user(spec: &LaunchSpec) -> Result<(), String> {
    // Always set explicitly: the runtime's own supplementary groups never
    // reach a container.
    let uid = spec.uid.unwrap_or(0);
    let gid = spec.gid.unwrap_or(0);
    let mut gids = vec![gid];
    gids.extend(&spec.supplemental_groups);
    if spec.sandbox.merge_image_groups {
        gids.extend(security::users::image_groups(uid));
    }
    let mut seen = std::collections::HashSet::new();
    gids.retain(|g| seen.insert(*g));
    let groups: Vec<nix::unistd::Gid> = gids.into_iter().map(nix::unistd::Gid::from_raw).collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("set groups: {e}"))?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))
        .map_err(|e| format!("set gid {gid}: {e}"))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
        .map_err(|e| format!("set uid {uid}: {e}"))?;
    Ok(())
}

/// Finds argv[0] in the container, with the container's PATH when it has
/// no slash.
fn resolve_program(spec: &LaunchSpec) -> Result<CString, String> {
    let Some(name) = spec.args.first().filter(|a| !a.is_empty()) else {
        return Err(
            "no command: the image has no entrypoint and the container gives no command".to_owned(),
        );
    };
    let is_executable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if name.contains('/') {
        let p = PathBuf::from(name);
        if !p.exists() {
            return Err(format!("exec {name}: no such file in the image"));
        }
        p
    } else {
        let path = spec
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .map(|dir| Path::new(dir).join(name))
            .find(|p| is_executable(p))
            .ok_or_else(|| format!("exec {name}: not found in PATH {path}"))?
    };
    if !is_executable(&found) {
        return Err(format!("exec {}: not an executable file", found.display()));
    }
    CString::new(found.into_os_string().into_encoded_bytes())
        .map_err(|_| format!("exec {name}: path has a NUL byte"))
}

fn cstrings(items: &[String]) -> Result<Vec<CString>, String> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| format!("argument or environment entry {s:?} has a NUL byte"))
        })
        .collect()
}
