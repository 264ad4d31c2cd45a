//! Running commands in a container, from vimanad's side: every command runs
//! through a `vimanad exec-shim` process ([`super::exec_shim`]), started
//! without fork hooks (no fork from the multi-threaded process). ExecSync
//! collects bounded output under a timeout; an interactive exec wires the
//! command's stdio (pipes, or a pty) to a transport's bounded channels.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::exec_shim::{Outcome, Request};
use super::StreamError;

/// Most stdout (and, apart, stderr) ExecSync keeps; the rest is read and
/// dropped so the command is never blocked by it. Both together stay under
/// the 16 MiB the kubelet's (and crictl's) CRI client accepts in a message.
pub const SYNC_OUTPUT_LIMIT: usize = (8 << 20) - (32 << 10);
/// How long output may still arrive after the command exited (a background
/// child holding the pipe must not hold the call).
const DRAIN_GRACE: Duration = Duration::from_secs(1);
const CHUNK: usize = 32 * 1024;

/// The running container a command goes into.
#[derive(Debug, Clone)]
pub struct Target {
    pub container_id: String,
    pub pid: i32,
    pub pid_start: u64,
    /// The container's launch spec.
    pub spec: PathBuf,
}

/// What ExecSync returns.
#[derive(Debug)]
pub struct SyncOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// The stdio a transport offers an interactive command. `None`: not
/// requested. Senders are bounded: a client that does not read blocks the
/// command's writes, nothing more.
#[derive(Default)]
pub struct Io {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// Terminal sizes (width, height), with a TTY.
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

struct Spawned {
    child: Child,
    status: tokio::net::unix::pipe::Receiver,
}

fn spawn(
    target: &Target,
    args: &[String],
    tty: bool,
    stdio: [Stdio; 3],
) -> Result<Spawned, StreamError> {
    let io = |what: &'static str| move |e: std::io::Error| StreamError::Io(what, e);
    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| StreamError::Io("status pipe", e.into()))?;
    // The write end alone is inherited. The control thread is the only one
    // that starts processes, so no other spawn can take it meanwhile.
    nix::fcntl::fcntl(
        status_w.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| StreamError::Io("status pipe", e.into()))?;
    let request = Request {
        spec: target.spec.clone(),
        pid: target.pid,
        pid_start: target.pid_start,
        args: args.to_vec(),
        tty,
        status_fd: status_w.as_raw_fd(),
    };
    let request = serde_json::to_string(&request).unwrap_or_default();
    let [stdin, stdout, stderr] = stdio;
    let child = Command::new("/proc/self/exe")
        .arg0("vimanad")
        .arg("exec-shim")
        .arg(request)
        .env_clear()
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(io("start the exec helper"))?;
    drop(status_w);
    let status =
        tokio::net::unix::pipe::Receiver::from_owned_fd(status_r).map_err(io("status pipe"))?;
    Ok(Spawned { child, status })
}

/// The helper's report, once it has exited.
async fn outcome(spawned: &mut Spawned) -> Outcome {
    let _ = spawned.child.wait().await;
    let mut text = Vec::new();
    let _ = (&mut spawned.status)
        .take(64 * 1024)
        .read_to_end(&mut text)
        .await;
    serde_json::from_slice(&text).unwrap_or_else(|_| Outcome::Failed {
        error: "the exec helper ended without a report".to_owned(),
    })
}

/// Runs `args` in the container and returns its output and exit code;
/// kills it at `timeout`.
pub async fn exec_sync(
    target: &Target,
    args: &[String],
    timeout: Option<Duration>,
) -> Result<SyncOutput, StreamError> {
    let mut spawned = spawn(
        target,
        args,
        false,
        [Stdio::null(), Stdio::piped(), Stdio::piped()],
    )?;
    let out = spawned
        .child
        .stdout
        .take()
        .map(|s| tokio::spawn(collect(s)));
    let err = spawned
        .child
        .stderr
        .take()
        .map(|s| tokio::spawn(collect(s)));
    let waited = match timeout {
        Some(limit) => tokio::time::timeout(limit, spawned.child.wait()).await.ok(),
        None => Some(spawned.child.wait().await),
    };
    if waited.is_none() {
        let _ = spawned.child.start_kill();
        let _ = spawned.child.wait().await;
        return Err(StreamError::Timeout {
            command: args.to_vec(),
            timeout: timeout.unwrap_or_default(),
        });
    }
    let outcome = outcome(&mut spawned).await;
    let drained = |task: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
        let Some(task) = task else { return Vec::new() };
        let abort = task.abort_handle();
        match tokio::time::timeout(DRAIN_GRACE, task).await {
            Ok(Ok(bytes)) => bytes,
            _ => {
                abort.abort();
                Vec::new()
            }
        }
    };
    let (stdout, stderr) = tokio::join!(drained(out), drained(err));
    match outcome {
        Outcome::Exited { code, .. } => Ok(SyncOutput {
            stdout,
            stderr,
            exit_code: code,
        }),
        Outcome::Failed { error } => Err(StreamError::ExecFailed(error)),
    }
}

/// Reads a stream to its end, keeping the first [`SYNC_OUTPUT_LIMIT`] bytes.
async fn collect(mut stream: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = SYNC_OUTPUT_LIMIT - kept.len();
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Runs `args` interactively; returns once it exited and its output was
/// passed on.
pub async fn exec_interactive(
    target: &Target,
    args: &[String],
    tty: bool,
    io: Io,
) -> Result<Outcome, StreamError> {
    if tty {
        return exec_tty(target, args, io).await;
    }
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let mut spawned = spawn(
        target,
        args,
        false,
        [
            piped(io.stdin.is_some()),
            piped(io.stdout.is_some()),
            piped(io.stderr.is_some()),
        ],
    )?;
    let mut pumps = Vec::new();
    if let (Some(mut rx), Some(mut stdin)) = (io.stdin, spawned.child.stdin.take()) {
        // Not awaited at the end: stdin may stay open after the exit.
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if stdin.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
    }
    if let (Some(tx), Some(out)) = (io.stdout, spawned.child.stdout.take()) {
        pumps.push(tokio::spawn(forward(out, tx)));
    }
    if let (Some(tx), Some(err)) = (io.stderr, spawned.child.stderr.take()) {
        pumps.push(tokio::spawn(forward(err, tx)));
    }
    let outcome = outcome(&mut spawned).await;
    drain(pumps).await;
    Ok(outcome)
}

async fn drain(pumps: Vec<tokio::task::JoinHandle<()>>) {
    for pump in pumps {
        let abort = pump.abort_handle();
        if tokio::time::timeout(DRAIN_GRACE, pump).await.is_err() {
            abort.abort();
        }
    }
}

/// Copies a command's output into a bounded channel until EOF.
async fn forward(mut from: impl AsyncRead + Unpin, to: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn exec_tty(target: &Target, args: &[String], io: Io) -> Result<Outcome, StreamError> {
    let pty = nix::pty::openpty(None, None).map_err(|e| StreamError::Io("openpty", e.into()))?;
    let slave = |fd: &OwnedFd| -> Result<Stdio, StreamError> {
        Ok(Stdio::from(
            fd.try_clone().map_err(|e| StreamError::Io("pty", e))?,
        ))
    };
    let stdio = [slave(&pty.slave)?, slave(&pty.slave)?, slave(&pty.slave)?];
    let mut spawned = spawn(target, args, true, stdio)?;
    drop(pty.slave);
    let master = Pty::new(pty.master).map_err(|e| StreamError::Io("pty", e))?;
    let master = std::sync::Arc::new(master);
    if let Some(mut rx) = io.stdin {
        let master = master.clone();
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if master.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
    }
    if let Some(mut rx) = io.resize {
        let master = master.clone();
        tokio::spawn(async move {
            while let Some((width, height)) = rx.recv().await {
                master.resize(width, height);
            }
        });
    }
    let mut pumps = Vec::new();
    if let Some(tx) = io.stdout {
        let master = master.clone();
        pumps.push(tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            // EIO once every holder of the slave end is gone.
            while let Ok(n) = master.read(&mut buf).await {
                if n == 0 || tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    break;
                }
            }
        }));
    }
    let outcome = outcome(&mut spawned).await;
    drain(pumps).await;
    Ok(outcome)
}

/// A pty's master end, non-blocking under tokio.
struct Pty {
    fd: AsyncFd<OwnedFd>,
}

impl Pty {
    fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the AsyncFd owns the descriptor and is dropped with it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), buf).map_err(std::io::Error::from)
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    fn resize(&self, width: u16, height: u16) {
        let size = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
        unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &size) };
    }
}
