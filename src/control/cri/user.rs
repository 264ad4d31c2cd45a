//! The user of an image's config (`USER app`, `app:staff`, `1000`,
//! `1000:50`) as IDs, names looked up in the image's own /etc/passwd and
//! /etc/group as runc and containerd do.
//!
//! The image is the tenant's: both files are opened beneath the image root
//! with openat2(RESOLVE_IN_ROOT) (a symlink, `..` or absolute path inside
//! the image cannot leave it; no magic links, no other mounts), must be
//! regular files, and are read up to 1 MiB; malformed lines are skipped.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

/// Most bytes read of either file.
const MAX_FILE: u64 = 1 << 20;

/// The user's ID and, when known, its group's.
#[derive(Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: Option<u32>,
}

/// Resolves `spec` against the image rooted at `root`. The error says what
/// could not be found.
pub fn resolve(root: &Path, spec: &str) -> Result<User, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_in_root(root, "etc/passwd")?;
    // name:password:uid:gid:...
    let mut entries = passwd.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _ = f.next()?;
        let uid = f.next()?.parse::<u32>().ok()?;
        let gid = f.next()?.parse::<u32>().ok()?;
        Some((name, uid, gid))
    });
    let (uid, mut gid) = match user.parse::<u32>() {
        Ok(uid) => {
            let primary = entries.find(|(_, u, _)| *u == uid).map(|(_, _, g)| g);
            (uid, primary)
        }
        Err(_) => {
            let entry = entries.find(|(n, _, _)| *n == user);
            let (_, uid, gid) = entry
                .ok_or_else(|| format!("image user {user:?} is not in the image's /etc/passwd"))?;
            (uid, Some(gid))
        }
    };
    if let Some(group) = group.filter(|g| !g.is_empty()) {
        gid = Some(match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_in_root(root, "etc/group")?;
                // name:password:gid:members
                groups
                    .lines()
                    .filter_map(|line| {
                        let mut f = line.split(':');
                        let name = f.next()?;
                        let _ = f.next()?;
                        Some((name, f.next()?.parse::<u32>().ok()?))
                    })
                    .find(|(n, _)| *n == group)
                    .map(|(_, gid)| gid)
                    .ok_or_else(|| {
                        format!("image group {group:?} is not in the image's /etc/group")
                    })?
            }
        });
    }
    Ok(User { uid, gid })
}

/// A file of the image, resolved as if `root` were `/`; empty when absent.
fn read_in_root(root: &Path, path: &str) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| format!("read /{path} of the image: {e}");
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail(&e))?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    use std::os::fd::AsRawFd;
    let fd = match nix::fcntl::openat2(dir.as_raw_fd(), path, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(String::new()),
        Err(e) => return Err(fail(&e)),
    };
    // SAFETY: `openat2` just returned this descriptor; nothing else owns it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file.metadata().map_err(|e| fail(&e))?;
    if !meta.file_type().is_file() {
        return Err(fail(&"not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(&e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(passwd: &str, group: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(root.path().join("etc/group"), group).unwrap();
        root
    }

    #[test]
    fn names_and_numbers() {
        let root = image(
            "root:x:0:0:root:/root:/bin/sh\nbroken line\napp:x:1000:1001::/home/app:/bin/sh\n",
            "root:x:0:\nstaff:x:50:app\n",
        );
        let r = |s| resolve(root.path(), s);
        assert_eq!(
            r("app"),
            Ok(User {
                uid: 1000,
                gid: Some(1001)
            })
        );
        assert_eq!(
            r("app:staff"),
            Ok(User {
                uid: 1000,
                gid: Some(50)
            })
        );
        assert_eq!(
            r("app:7"),
            Ok(User {
                uid: 1000,
                gid: Some(7)
            })
        );
        assert_eq!(
            r("1000"),
            Ok(User {
                uid: 1000,
                gid: Some(1001)
            })
        );
        assert_eq!(
            r("4242"),
            Ok(User {
                uid: 4242,
                gid: None
            })
        );
        assert_eq!(
            r("4242:staff"),
            Ok(User {
                uid: 4242,
                gid: Some(50)
            })
        );
        assert!(r("nobody").unwrap_err().contains("\"nobody\""));
        assert!(r("app:wheel").unwrap_err().contains("\"wheel\""));
    }

    #[test]
    fn symlinks_cannot_leave_the_image() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        // Absolute and relative escapes both resolve inside the root, where
        // there is no such file.
        std::os::unix::fs::symlink(
            outside.path().join("passwd"),
            root.path().join("etc/passwd"),
        )
        .unwrap();
        assert!(resolve(root.path(), "evil").is_err());
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        let up = format!(
            "../../../../../../..{}",
            outside.path().join("passwd").display()
        );
        std::os::unix::fs::symlink(up, root.path().join("etc/passwd")).unwrap();
        assert!(resolve(root.path(), "evil").is_err());
        // A directory or a device is refused.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::fs::create_dir(root.path().join("etc/passwd")).unwrap();
        assert!(resolve(root.path(), "evil")
            .unwrap_err()
            .contains("regular"));
        std::fs::remove_dir(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root/etc/passwd", root.path().join("etc/passwd"))
            .unwrap();
        assert!(resolve(root.path(), "root").is_err());
    }
}
