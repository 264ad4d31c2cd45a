//! Disk usage of a tenant-controlled tree (a container's writable layer),
//! walked by file descriptor so no symlink, rename race or mount inside it
//! leads the walk out of it, and bounded in entries so a tenant with a
//! million tiny files cannot make a stats call expensive.
//!
//! Blocking: call it on a blocking thread. Nothing here writes.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};

/// Entries one walk looks at before it stops and reports what it has.
pub const MAX_ENTRIES: u64 = 200_000;
/// Directory depth it descends to (one descriptor is open per level).
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes (st_blocks × 512, as `du`), hard links counted once.
    pub bytes: u64,
    pub inodes: u64,
    /// The bound was hit: the figures are a lower bound.
    pub truncated: bool,
}

/// Walks `root` (not following it if it is a symlink). A missing root is
/// empty usage.
pub fn usage(root: &Path) -> std::io::Result<Usage> {
    usage_bounded(root, MAX_ENTRIES, MAX_DEPTH)
}

pub fn usage_bounded(root: &Path, max_entries: u64, max_depth: usize) -> std::io::Result<Usage> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = match Dir::open(root, flags, Mode::empty()) {
        Ok(dir) => dir,
        Err(nix::errno::Errno::ENOENT) => return Ok(Usage::default()),
        Err(e) => return Err(e.into()),
    };
    let top = fstat(dir.as_raw_fd())?;
    let mut walk = Walk {
        dev: top.st_dev,
        budget: max_entries,
        max_depth,
        seen: HashSet::new(),
        usage: Usage {
            bytes: (top.st_blocks as u64).saturating_mul(512),
            inodes: 1,
            truncated: false,
        },
    };
    walk.dir(&mut dir, 1);
    Ok(walk.usage)
}

struct Walk {
    dev: u64,
    budget: u64,
    max_depth: usize,
    /// (inode) of files with several links, counted once.
    seen: HashSet<u64>,
    usage: Usage,
}

impl Walk {
    fn dir(&mut self, dir: &mut Dir, depth: usize) {
        let fd = dir.as_raw_fd();
        let mut names: Vec<CString> = Vec::new();
        for entry in dir.iter().flatten() {
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            if self.budget == 0 {
                self.usage.truncated = true;
                break;
            }
            self.budget -= 1;
            names.push(name.to_owned());
        }
        for name in names {
            // Gone since the listing (the tenant is live): skip it.
            let Ok(st) = fstatat(Some(fd), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            if st.st_dev != self.dev {
                // A mount point: not this layer's.
                continue;
            }
            if st.st_nlink > 1 && !self.seen.insert(st.st_ino) {
                continue;
            }
            self.usage.bytes = self
                .usage
                .bytes
                .saturating_add((st.st_blocks as u64).saturating_mul(512));
            self.usage.inodes += 1;
            let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
            if !is_dir {
                continue;
            }
            if depth >= self.max_depth {
                self.usage.truncated = true;
                continue;
            }
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            // O_NOFOLLOW: a directory swapped for a symlink since the
            // fstatat fails here instead of leading out of the tree.
            if let Ok(mut child) = Dir::openat(Some(fd), name.as_c_str(), flags, Mode::empty()) {
                self.dir(&mut child, depth + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn counts_files_and_does_not_follow_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("big"), vec![1u8; 1 << 20]).unwrap();
        let d = root.path();
        fs::create_dir_all(d.join("a/b")).unwrap();
        fs::write(d.join("a/b/f"), vec![7u8; 64 * 1024]).unwrap();
        fs::hard_link(d.join("a/b/f"), d.join("a/hard")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("big"), d.join("a/escape-file")).unwrap();
        let u = usage(d).unwrap();
        // root, a, a/b, a/b/f (once for two links), escape, a/escape-file
        assert_eq!(u.inodes, 6);
        assert!(u.bytes >= 64 * 1024, "{u:?}");
        assert!(u.bytes < 1 << 20, "followed a symlink out: {u:?}");
        assert!(!u.truncated);
    }

    #[test]
    fn a_symlinked_root_is_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        let link_dir = tempfile::tempdir().unwrap();
        let link = link_dir.path().join("upper");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        assert!(usage(&link).is_err());
        assert_eq!(
            usage(&link_dir.path().join("missing")).unwrap(),
            Usage::default()
        );
    }

    #[test]
    fn stops_at_the_bounds() {
        let root = tempfile::tempdir().unwrap();
        for i in 0..50 {
            fs::write(root.path().join(i.to_string()), b"x").unwrap();
        }
        let u = usage_bounded(root.path(), 10, 8).unwrap();
        assert!(u.truncated);
        assert_eq!(u.inodes, 11);
        let mut deep = root.path().join("deep");
        for _ in 0..10 {
            deep = deep.join("d");
        }
        fs::create_dir_all(&deep).unwrap();
        let u = usage_bounded(&root.path().join("deep"), 1000, 3).unwrap();
        assert!(u.truncated);
        assert_eq!(u.inodes, 4);
    }
}
