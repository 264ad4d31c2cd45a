//! The container's own stdio, held for CRI Attach: a relay process the shim
//! forks before the container.
//!
//! The container's stdin, stdout and stderr are pipes (or one pty with
//! `tty`) whose other ends the relay holds. It copies output on to the
//! shim's log pipes (so the CRI log is unchanged) and to every attached
//! client, and passes clients' input to the container's stdin (open only
//! with `stdin: true`; with `stdin_once` closed when the first client
//! detaches). Clients connect to `attach.sock` in the container's state
//! directory (root only, 0600; the container cannot reach it), so attach
//! survives vimanad's restart: the relay belongs to the shim.
//!
//! Wire format, both ways: frames of `[channel u8][length u32 BE][data]`;
//! channels [`STDIN`], [`STDOUT`], [`STDERR`], [`RESIZE`] (width, height as
//! u16 BE) and [`CLOSE_STDIN`]. A client that does not read has its frames
//! dropped past [`CLIENT_BUFFER`] and is disconnected; the container and the
//! log never wait for a client.
//!
//! The relay is forked by the shim and re-executed as `vimanad
//! attach-relay` (hidden). Single-threaded, poll(2) only.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::{fork, pipe2, ForkResult};

use super::spec::LaunchSpec;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const RESIZE: u8 = 4;
pub const CLOSE_STDIN: u8 = 255;
/// Output queued for one client, at most.
pub const CLIENT_BUFFER: usize = 1 << 20;
const MAX_CLIENTS: usize = 8;
const MAX_FRAME: usize = 1 << 20;
/// Input queued for the container, at most (then clients are not read).
const STDIN_BUFFER: usize = 256 * 1024;

/// The socket of a container whose state directory holds `exit_file`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("attach.sock")
}

/// The container's ends of its stdio, for the shim to install as fds 0-2.
pub struct ContainerSide {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The three are one pty slave: the container must make it its
    /// controlling terminal.
    pub tty: bool,
}

/// Creates the container's stdio and forks the relay. Call before the
/// PID namespace is made (the relay must not be its init). `log_out` and
/// `log_err` are the shim's log pipes; the relay keeps them.
pub fn start(
    spec: &LaunchSpec,
    log_out: &OwnedFd,
    log_err: &OwnedFd,
) -> Result<ContainerSide, String> {
    let dir = spec
        .exit_file
        .parent()
        .ok_or("the container has no state directory")?;
    let path = socket_path(dir);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    let pipe = || pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (side, relay_in, relay_out, relay_err) = if spec.tty {
        let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
        set_cloexec(&pty.master);
        set_cloexec(&pty.slave);
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup: {e}"));
        let side = ContainerSide {
            stdin: dup(&pty.slave)?,
            stdout: dup(&pty.slave)?,
            stderr: pty.slave,
            tty: true,
        };
        let master = pty.master;
        (side, Some(dup(&master)?), Some(master), None)
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let stdin = if spec.stdin {
            (in_r, Some(in_w))
        } else {
            drop(in_w);
            let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
            drop(in_r);
            (OwnedFd::from(null), None)
        };
        let side = ContainerSide {
            stdin: stdin.0,
            stdout: out_w,
            stderr: err_w,
            tty: false,
        };
        (side, stdin.1, Some(out_r), Some(err_r))
    };
    let log_out = log_out.try_clone().map_err(|e| format!("dup: {e}"))?;
    let log_err = log_err.try_clone().map_err(|e| format!("dup: {e}"))?;
    // SAFETY: the shim is single-threaded; the child runs the relay loop and
    // exits without returning.
    match unsafe { fork() }.map_err(|e| format!("fork the attach relay: {e}"))? {
        ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            // Not the runtime's hello pipe, not the container's ends.
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                // SAFETY: plain fd plumbing in the child.
                unsafe {
                    libc::dup2(null.as_raw_fd(), 0);
                    libc::dup2(null.as_raw_fd(), 1);
                }
            }
            drop(side);
            // Nothing of the shim's stays open here (its start-failure pipe
            // above all, whose EOF the shim waits for).
            let keep: Vec<i32> = [
                Some(listener.as_raw_fd()),
                Some(log_out.as_raw_fd()),
                Some(log_err.as_raw_fd()),
            ]
            .into_iter()
            .chain(relay_in.iter().map(|f| Some(f.as_raw_fd())))
            .chain(relay_out.iter().map(|f| Some(f.as_raw_fd())))
            .chain(relay_err.iter().map(|f| Some(f.as_raw_fd())))
            .flatten()
            .collect();
            close_others(&keep);
            let _ = nix::sys::signal::SigSet::all().thread_unblock();
            // A process of its own (`vimanad attach-relay`, seen as such in
            // ps), given its descriptors by number.
            let fds = RelayFds {
                listener: listener.as_raw_fd(),
                stdin: relay_in
                    .as_ref()
                    .filter(|_| spec.stdin || spec.tty)
                    .map(|f| f.as_raw_fd()),
                outputs: [
                    relay_out.as_ref().map(|f| f.as_raw_fd()),
                    relay_err.as_ref().map(|f| f.as_raw_fd()),
                ],
                logs: [log_out.as_raw_fd(), log_err.as_raw_fd()],
                stdin_open: spec.stdin,
                stdin_once: spec.stdin_once,
                tty: spec.tty,
            };
            for fd in &keep {
                let _ = nix::fcntl::fcntl(
                    *fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                );
            }
            let args = [
                c"vimanad".to_owned(),
                c"attach-relay".to_owned(),
                std::ffi::CString::new(serde_json::to_string(&fds).unwrap_or_default())
                    .unwrap_or_default(),
            ];
            let _ = nix::unistd::execve(c"/proc/self/exe", &args, &[] as &[std::ffi::CString]);
            // SAFETY: leave the forked child without running the shim's code.
            unsafe { libc::_exit(127) };
        }
        ForkResult::Parent { .. } => {}
    }
    Ok(side)
}

/// Closes every descriptor above 2 but `keep`.
fn close_others(keep: &[i32]) {
    let open: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing descriptors this forked process inherited and
            // no owner in it will use again (it only runs the relay).
            unsafe { libc::close(fd) };
        }
    }
}

/// What `vimanad attach-relay` is given: its inherited descriptors.
#[derive(serde::Serialize, serde::Deserialize)]
struct RelayFds {
    listener: i32,
    stdin: Option<i32>,
    outputs: [Option<i32>; 2],
    logs: [i32; 2],
    stdin_open: bool,
    stdin_once: bool,
    tty: bool,
}

/// `vimanad attach-relay FDS` (hidden): runs the relay until the
/// container's output ends.
pub fn relay_main(fds: &str) -> i32 {
    let Ok(fds) = serde_json::from_str::<RelayFds>(fds) else {
        eprintln!("vimanad attach-relay: bad arguments");
        return 2;
    };
    // SAFETY: the shim's forked child passed these descriptors, open, to
    // this process alone; each is owned once from here.
    let own = |fd: i32| unsafe { OwnedFd::from_raw_fd(fd) };
    let all = [
        Some(fds.listener),
        fds.stdin,
        fds.outputs[0],
        fds.outputs[1],
    ]
    .into_iter()
    .flatten()
    .chain(fds.logs);
    for fd in all {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    let relay = Relay {
        listener: UnixListener::from(own(fds.listener)),
        stdin: fds.stdin.map(own),
        stdin_open: fds.stdin_open,
        stdin_once: fds.stdin_once,
        tty: fds.tty,
        outputs: [fds.outputs[0].map(own), fds.outputs[1].map(own)],
        logs: [own(fds.logs[0]), own(fds.logs[1])],
        clients: Vec::new(),
        pending_stdin: VecDeque::new(),
        attached_once: false,
    };
    relay.run();
    0
}

fn set_cloexec(fd: &OwnedFd) {
    let _ = nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
}

fn set_nonblocking(fd: &impl AsRawFd) {
    if let Ok(flags) = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL) {
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        let _ = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags));
    }
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    output: VecDeque<u8>,
    /// It sent input (so its leaving counts for stdin_once).
    gave_input: bool,
    /// Its stdin half-closed (or it left).
    done_input: bool,
}

struct Relay {
    listener: UnixListener,
    /// Where clients' input goes: the stdin pipe or the pty master.
    stdin: Option<OwnedFd>,
    stdin_open: bool,
    stdin_once: bool,
    tty: bool,
    /// The container's stdout and stderr (with a tty: the master, alone).
    outputs: [Option<OwnedFd>; 2],
    logs: [OwnedFd; 2],
    clients: Vec<Client>,
    pending_stdin: VecDeque<u8>,
    attached_once: bool,
}

impl Relay {
    fn run(mut self) {
        set_nonblocking(&self.listener);
        if let Some(stdin) = &self.stdin {
            set_nonblocking(stdin);
        }
        let mut buf = vec![0u8; 64 * 1024];
        while self.outputs.iter().any(Option::is_some) {
            let mut fds: Vec<PollFd> = Vec::new();
            let mut slots: Vec<Slot> = Vec::new();
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
            slots.push(Slot::Listener);
            for (i, out) in self.outputs.iter().enumerate() {
                if let Some(fd) = out {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    slots.push(Slot::Output(i));
                }
            }
            if let (Some(stdin), false) = (&self.stdin, self.pending_stdin.is_empty()) {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLOUT));
                slots.push(Slot::Stdin);
            }
            let room = self.pending_stdin.len() < STDIN_BUFFER;
            for (i, c) in self.clients.iter().enumerate() {
                let mut flags = PollFlags::empty();
                if room {
                    flags |= PollFlags::POLLIN;
                }
                if !c.output.is_empty() {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(c.stream.as_fd(), flags));
                slots.push(Slot::Client(i));
            }
            if poll(&mut fds, PollTimeout::NONE).is_err() {
                continue;
            }
            let ready: Vec<(Slot, PollFlags)> = fds
                .iter()
                .zip(slots)
                .filter_map(|(fd, slot)| fd.revents().filter(|r| !r.is_empty()).map(|r| (slot, r)))
                .collect();
            drop(fds);
            let mut gone = Vec::new();
            for (slot, revents) in ready {
                match slot {
                    Slot::Listener => self.accept(),
                    Slot::Output(i) => self.output(i, &mut buf),
                    Slot::Stdin => self.flush_stdin(),
                    Slot::Client(i) => {
                        if !self.client_io(i, revents, &mut buf) {
                            gone.push(i);
                        }
                    }
                }
            }
            gone.sort_unstable();
            for i in gone.into_iter().rev() {
                let c = self.clients.remove(i);
                if c.gave_input && !c.done_input {
                    self.detached();
                }
            }
        }
        // The container's output ended: hand clients what is queued.
        for c in &mut self.clients {
            let (a, b) = c.output.as_slices();
            let _ = c.stream.set_nonblocking(false);
            let _ = c
                .stream
                .set_write_timeout(Some(std::time::Duration::from_secs(1)));
            let _ = c.stream.write_all(a).and_then(|_| c.stream.write_all(b));
        }
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.clients.len() >= MAX_CLIENTS {
                continue;
            }
            let _ = stream.set_nonblocking(true);
            self.clients.push(Client {
                stream,
                input: Vec::new(),
                output: VecDeque::new(),
                gave_input: false,
                done_input: false,
            });
        }
    }

    fn output(&mut self, i: usize, buf: &mut [u8]) {
        let Some(fd) = &self.outputs[i] else { return };
        match nix::unistd::read(fd.as_raw_fd(), buf) {
            // EIO: a pty whose slave ends are all closed.
            Ok(0) | Err(_) => {
                self.outputs[i] = None;
            }
            Ok(n) => {
                let data = &buf[..n];
                // The log first, always (a blocking write to the shim).
                let _ = write_all_fd(&self.logs[i], data);
                let channel = if i == 0 { STDOUT } else { STDERR };
                for c in &mut self.clients {
                    if c.output.len() + n + 5 <= CLIENT_BUFFER {
                        c.output.push_back(channel);
                        c.output.extend((n as u32).to_be_bytes());
                        c.output.extend(data);
                    } else {
                        // Too slow: it loses its place rather than stall
                        // the container.
                        let _ = c.stream.shutdown(std::net::Shutdown::Both);
                    }
                }
            }
        }
    }

    fn flush_stdin(&mut self) {
        let Some(stdin) = &self.stdin else { return };
        let (a, _) = self.pending_stdin.as_slices();
        match nix::unistd::write(stdin, a) {
            Ok(n) => {
                self.pending_stdin.drain(..n);
            }
            Err(nix::errno::Errno::EAGAIN) => {}
            Err(_) => {
                self.pending_stdin.clear();
                self.stdin = None;
            }
        }
    }

    /// False when the client is gone.
    fn client_io(&mut self, i: usize, revents: PollFlags, buf: &mut [u8]) -> bool {
        if revents.contains(PollFlags::POLLOUT) {
            let c = &mut self.clients[i];
            let (a, _) = c.output.as_slices();
            match c.stream.write(a) {
                Ok(n) => {
                    c.output.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
        }
        if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            let n = match self.clients[i].stream.read(buf) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            };
            self.clients[i].input.extend_from_slice(&buf[..n]);
            return self.frames(i);
        }
        true
    }

    /// Handles the client's complete frames; false on a protocol error.
    fn frames(&mut self, i: usize) -> bool {
        loop {
            let input = &self.clients[i].input;
            if input.len() < 5 {
                return true;
            }
            let len = u32::from_be_bytes([input[1], input[2], input[3], input[4]]) as usize;
            if len > MAX_FRAME {
                return false;
            }
            if input.len() < 5 + len {
                return true;
            }
            let channel = input[0];
            let data: Vec<u8> = input[5..5 + len].to_vec();
            self.clients[i].input.drain(..5 + len);
            match channel {
                STDIN if self.stdin_open && !self.clients[i].done_input => {
                    self.clients[i].gave_input = true;
                    self.pending_stdin.extend(data);
                }
                RESIZE if self.tty && data.len() == 4 => {
                    let size = libc::winsize {
                        ws_col: u16::from_be_bytes([data[0], data[1]]),
                        ws_row: u16::from_be_bytes([data[2], data[3]]),
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    if let Some(master) = &self.outputs[0] {
                        // SAFETY: TIOCSWINSZ reads a winsize.
                        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
                    }
                }
                CLOSE_STDIN if !self.clients[i].done_input => {
                    self.clients[i].done_input = true;
                    self.detached();
                }
                _ => {}
            }
        }
    }

    /// A client stopped giving input: with stdin_once, the container's
    /// stdin closes (a tty gets end-of-file, ^D).
    fn detached(&mut self) {
        if !self.stdin_once || !self.stdin_open || self.attached_once {
            return;
        }
        self.attached_once = true;
        self.stdin_open = false;
        if self.tty {
            self.pending_stdin.push_back(0x04);
        } else {
            self.pending_stdin.clear();
            self.stdin = None;
        }
    }
}

enum Slot {
    Listener,
    Output(usize),
    Stdin,
    Client(usize),
}

fn write_all_fd(fd: &OwnedFd, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
