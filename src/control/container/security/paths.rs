//! In the container's init, after `pivot_root`: masking and read-only
//! paths, and the loopback interface of a new network namespace.

use std::path::Path;

use nix::mount::{mount, MsFlags};

const NONE: Option<&str> = None;

/// Hides each path: an empty read-only tmpfs over a directory, `/dev/null`
/// over a file (as runc does). Paths that do not exist are skipped.
pub fn mask(paths: &[String]) -> Result<(), String> {
    for p in paths {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            continue;
        };
        let result = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                p.as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0"),
            )
        } else {
            mount(Some("/dev/null"), p.as_str(), NONE, MsFlags::MS_BIND, NONE)
        };
        result.map_err(|e| format!("mask {p}: {e}"))?;
    }
    Ok(())
}

/// Makes each path (and what is mounted below it) read-only, nosuid,
/// nodev, noexec. Paths that do not exist are skipped.
pub fn readonly(paths: &[String]) -> Result<(), String> {
    for p in paths {
        if std::fs::symlink_metadata(p).is_err() {
            continue;
        }
        mount(
            Some(p.as_str()),
            p.as_str(),
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .map_err(|e| format!("bind {p} read-only: {e}"))?;
        remount_readonly(Path::new(p)).map_err(|e| format!("make {p} read-only: {e}"))?;
    }
    Ok(())
}

/// Remounts the bind mount at `p` read-only with nosuid, nodev, noexec.
pub fn remount_readonly(p: &Path) -> nix::Result<()> {
    mount(
        NONE,
        p,
        NONE,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        NONE,
    )
}

/// Brings `lo` up in the (new) network namespace of the calling process.
pub fn loopback_up() -> Result<(), String> {
    // SAFETY: a datagram socket used only for the interface ioctls.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "socket for lo: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: ifreq is plain data; the name is NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS on a valid socket with an ifreq.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            Err("read")
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
                Err("set")
            } else {
                Ok(())
            }
        }
    };
    let error = std::io::Error::last_os_error();
    // SAFETY: closing the socket this function opened.
    unsafe { libc::close(fd) };
    result.map_err(|what| format!("bring lo up ({what} flags): {error}"))
}
