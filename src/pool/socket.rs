//! The one way either plane connects to a component's socket.
//!
//! A pod's socket directory is writable by the component, so the path is
//! the attacker's: `grpc.sock` could be a symlink to the CRI socket, or a
//! socket some other process listens on. [`connect`] resolves the name
//! beneath its directory with no symlink followed (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`) to an `O_PATH` descriptor,
//! connects through `/proc/self/fd/N` (non-blocking: a full backlog is an
//! error, never a wait), and then checks the peer's credentials: the
//! listening process must live in the container's PID namespace
//! ([`Peer`]). It knows nothing of CRI or of async runtimes: callers wrap
//! the std stream in theirs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Who must be listening on a pod's socket: a process in this PID
/// namespace (the container's; inode of `/proc/PID/ns/pid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peer {
    pub pid_ns: u64,
}

impl Peer {
    /// The identity of the container whose process (host PID) is `pid`.
    pub fn of_pid(pid: i32) -> io::Result<Peer> {
        let meta = std::fs::metadata(format!("/proc/{pid}/ns/pid"))?;
        Ok(Peer { pid_ns: meta.ino() })
    }
}

/// Connects to `socket` (a `.../dir/name` path whose directory the host
/// owns) without following a symlink in `name`, and checks that the peer
/// is `expect` when given. The stream is non-blocking.
pub fn connect(socket: &Path, expect: Option<Peer>) -> io::Result<UnixStream> {
    let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not DIR/NAME", socket.display()),
        ));
    };
    let dir = open_path(
        libc::AT_FDCWD,
        dir.as_os_str().as_bytes(),
        libc::O_DIRECTORY,
        0,
    )?;
    let target = open_path(
        dir.as_raw_fd(),
        name.as_bytes(),
        0,
        libc::RESOLVE_BENEATH
            | libc::RESOLVE_NO_SYMLINKS
            | libc::RESOLVE_NO_MAGICLINKS
            | libc::RESOLVE_NO_XDEV,
    )
    .map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is a symbolic link: refused", socket.display()),
            )
        } else {
            e
        }
    })?;
    // SAFETY: `stat` is plain old data; all zeroes is a valid value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor this function owns.
    if unsafe { libc::fstat(target.as_raw_fd(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a socket", socket.display()),
        ));
    }
    // SAFETY: a new socket; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2).
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let via = format!("/proc/self/fd/{}", target.as_raw_fd());
    // SAFETY: sockaddr_un is plain data; the path fits (it is short).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(via.as_bytes()) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + via.len() + 1) as libc::socklen_t;
    // SAFETY: connect with a valid address of `len` bytes.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            &addr as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("connect to {}: {e}", socket.display()),
        ));
    }
    if let Some(expect) = expect {
        // SAFETY: `ucred` is plain old data; all zeroes is a valid value.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: SO_PEERCRED into a ucred of `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                &mut cred as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let got = Peer::of_pid(cred.pid).map_err(|e| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: peer process {} unreadable: {e}",
                    socket.display(),
                    cred.pid
                ),
            )
        })?;
        if got != expect {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: the listening process (pid {}) is not the container's: refused",
                    socket.display(),
                    cred.pid
                ),
            ));
        }
    }
    Ok(UnixStream::from(sock))
}

fn open_path(dirfd: i32, path: &[u8], flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    // SAFETY: open_how is plain data.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC | flags) as u64;
    how.resolve = resolve;
    // SAFETY: openat2 with a NUL-terminated path and an open_how of its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat2.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinks_and_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&real).unwrap();
        let link = dir.path().join("grpc.sock");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = connect(&link, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        // The listener is this process: the right peer passes, another not.
        let me = Peer::of_pid(std::process::id() as i32).unwrap();
        connect(&real, Some(me)).unwrap();
        let e = connect(&real, Some(Peer { pid_ns: 1 })).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(connect(&file, None).is_err());
    }
}
