//! File-system primitives for the store: the `flock` on `dir/lock`, private
//! work directories under `dir/tmp/`, atomic writes, hashing copies.
//!
//! Owns how bytes reach the disk safely (temp file, fsync, rename). It knows
//! nothing of images, manifests or names.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use super::error::{io_err, ImageError};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique to this process and call, for temp files and work dirs.
pub(crate) fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A held `flock` on the store's lock file; released when dropped.
///
/// `flock` locks belong to the open file description, so two threads of one
/// process exclude each other exactly as two processes do.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: File,
}

impl StoreLock {
    fn open(path: &Path) -> Result<File, ImageError> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err("opening lock file", path))
    }

    /// Blocks until this process is the only writer (and no reader is in).
    pub fn exclusive(path: &Path) -> Result<StoreLock, ImageError> {
        let file = Self::open(path)?;
        flock(&file, libc::LOCK_EX).map_err(io_err("locking", path))?;
        Ok(StoreLock { _file: file })
    }

    /// Blocks until no writer is in; readers share.
    pub fn shared(path: &Path) -> Result<StoreLock, ImageError> {
        let file = Self::open(path)?;
        flock(&file, libc::LOCK_SH).map_err(io_err("locking", path))?;
        Ok(StoreLock { _file: file })
    }
}

/// A private scratch directory under `dir/tmp/`, locked while alive and
/// removed when dropped. A crashed process's work dirs are unlocked, so
/// [`clean_stale_workdirs`] can tell them from live ones.
#[derive(Debug)]
pub(crate) struct WorkDir {
    path: PathBuf,
    _lock: File,
}

impl WorkDir {
    /// Creates a work dir. Call with the store lock held exclusively, so the
    /// cleaner never sees it between `mkdir` and `flock`.
    pub fn create(tmp_root: &Path) -> Result<WorkDir, ImageError> {
        let path = tmp_root.join(unique_name("w"));
        fs::create_dir(&path).map_err(io_err("creating", &path))?;
        let lock = File::open(&path).map_err(io_err("opening", &path))?;
        flock(&lock, libc::LOCK_EX | libc::LOCK_NB).map_err(io_err("locking", &path))?;
        Ok(WorkDir { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove work dir");
            }
        }
    }
}

/// Removes work dirs (and anything else) under `tmp_root` that no live
/// [`WorkDir`] holds. Call with the store lock held exclusively.
pub(crate) fn clean_stale_workdirs(tmp_root: &Path) {
    let Ok(entries) = fs::read_dir(tmp_root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
                continue; // alive
            }
            tracing::info!(path = %path.display(), "removing stale image work dir");
            let _ = fs::remove_dir_all(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", dir))
}

/// Writes `bytes` to `path` atomically: temp file in the same directory,
/// fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    // A bare file name's parent is "", which no syscall accepts.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(unique_name(&format!(".tmp-{file_name}")));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(bytes).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    fsync_dir(dir)
}

/// Copies `reader` into `writer`, returning the byte count and `sha256:<hex>`.
/// Read errors and write errors are told apart by the two labels.
pub(crate) fn copy_hashed(
    mut reader: impl Read,
    mut writer: impl Write,
    from: &Path,
    to: &Path,
) -> Result<(u64, String), ImageError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("reading", from)(e)),
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n]).map_err(io_err("writing", to))?;
        total += n as u64;
    }
    Ok((total, format!("sha256:{}", hex::encode(hasher.finalize()))))
}

/// A reader that hashes everything read through it (for layer diff ids).
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads the rest of the stream (tar padding after the end marker) and
    /// returns `sha256:<hex>` of all of it.
    pub fn finish(mut self) -> io::Result<String> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(format!("sha256:{}", hex::encode(self.hasher.finalize())))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Opens a layer blob as a tar stream, gunzipping when it starts with the
/// gzip magic (whatever the media type says).
pub(crate) fn open_maybe_gzip(path: &Path) -> Result<Box<dyn Read>, ImageError> {
    let mut file = File::open(path).map_err(io_err("opening", path))?;
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match file.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("reading", path)(e)),
        }
    }
    let head = io::Cursor::new(magic[..got].to_vec());
    let stream = head.chain(file);
    if got == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(stream)))
    } else {
        Ok(Box::new(stream))
    }
}

/// Total `st_blocks * 512` and inode count of a tree, hard links counted once,
/// symlinks not followed, iterative (no recursion depth limit).
pub(crate) fn tree_usage(root: &Path) -> Result<(u64, u64), ImageError> {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // raced with a removal
            Err(e) => return Err(io_err("reading metadata of", &path)(e)),
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        bytes += meta.blocks() * 512;
        inodes += 1;
        if meta.is_dir() {
            match fs::read_dir(&path) {
                Ok(entries) => stack.extend(entries.flatten().map(|e| e.path())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("listing", &path)(e)),
            }
        }
    }
    Ok((bytes, inodes))
}

pub fn is_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Flushes the file system holding `dir`, so the rename that follows
/// publishes only data that is on disk.
pub fn syncfs(dir: &Path) -> Result<(), ImageError> {
    let file = File::open(dir).map_err(io_err("opening", dir))?;
    // SAFETY: syncfs on a descriptor we own; no memory is passed.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(io_err("syncing", dir)(io::Error::last_os_error()));
    }
    Ok(())
}
