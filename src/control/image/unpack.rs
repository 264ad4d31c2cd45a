//! Applying one layer tar to a root filesystem being built: OCI whiteouts
//! (`.wh.NAME`, `.wh..wh..opq`), modes, ownership, symlinks, hard links,
//! devices, and the uncompressed digest (diff id) check.
//!
//! Safety rule: nothing outside `root` is ever written or followed. Entry
//! paths with `..` or a leading `/` are errors; a symlink met on the way to
//! an entry is followed only when its target is relative and stays inside the
//! root (absolute or escaping targets are errors); hard links must point at
//! an existing non-directory inside the root. Nothing here knows the store.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, FileTimes, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tar::EntryType;

use super::error::{io_err, ImageError};
use super::fsutil::{open_maybe_gzip, HashingReader};
use super::oci::Descriptor;

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// Symlinks followed while resolving one path (like the kernel's 40).
const MAX_SYMLINKS: usize = 40;

/// Who the layer and image are, for error messages.
struct Ctx<'a> {
    image: &'a str,
    layer: &'a str,
}

impl Ctx<'_> {
    fn unsafe_path(&self, path: &Path, reason: impl Into<String>) -> ImageError {
        ImageError::UnsafePath {
            image: self.image.to_string(),
            layer: self.layer.to_string(),
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }

    fn invalid(&self, reason: impl std::fmt::Display) -> ImageError {
        ImageError::invalid_image(self.image, format!("layer {}: {reason}", self.layer))
    }
}

/// What one layer did, for whiteouts, which apply to lower layers only and
/// so are done after the whole layer (whatever the order of its entries).
#[derive(Default)]
struct LayerState {
    /// Resolved paths (relative to root) this layer wrote, with all ancestors.
    touched: HashSet<PathBuf>,
    /// `.wh.NAME`: (parent path as written, NAME).
    whiteouts: Vec<(Vec<OsString>, OsString)>,
    /// `.wh..wh..opq`: the directory path as written.
    opaques: Vec<Vec<OsString>>,
}

/// Applies the layer blob at `blob` to `root`, checking its uncompressed
/// digest against `diff_id`.
pub(crate) fn apply_layer(
    root: &Path,
    blob: &Path,
    layer: &Descriptor,
    diff_id: &str,
    image: &str,
) -> Result<(), ImageError> {
    let ctx = Ctx {
        image,
        layer: &layer.digest,
    };
    let as_root = nix::unistd::geteuid().is_root();
    let mut hashing = HashingReader::new(open_maybe_gzip(blob)?);
    let mut state = LayerState::default();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive
            .entries()
            .map_err(|e| ctx.invalid(format!("malformed tar: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ctx.invalid(format!("malformed tar: {e}")))?;
            apply_entry(root, &mut entry, &mut state, &ctx, as_root)?;
        }
    }
    let got = hashing
        .finish()
        .map_err(|e| ctx.invalid(format!("malformed layer: {e}")))?;
    if got != diff_id {
        return Err(ImageError::DigestMismatch {
            image: image.to_string(),
            what: format!("layer {} uncompressed", layer.digest),
            expected: diff_id.to_string(),
            actual: got,
        });
    }
    for (parent, name) in &state.whiteouts {
        if let Some(dir) = resolve_parent(
            root,
            parent,
            false,
            &ctx,
            &parent.iter().collect::<PathBuf>().join(name),
        )? {
            prune(root, dir.join(name), &state.touched)?;
        }
    }
    for dir in &state.opaques {
        if let Some(dir) = resolve_parent(root, dir, false, &ctx, &dir.iter().collect::<PathBuf>())?
        {
            prune_children(root, &dir, &state.touched)?;
        }
    }
    Ok(())
}

/// An entry path's components: `.` dropped, `..` and absolute paths refused.
fn clean(path: &Path, ctx: &Ctx) -> Result<Vec<OsString>, ImageError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(ctx.unsafe_path(path, "path contains \"..\"")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ctx.unsafe_path(path, "absolute path"))
            }
        }
    }
    Ok(out)
}

fn apply_entry<R: io::Read>(
    root: &Path,
    entry: &mut tar::Entry<R>,
    state: &mut LayerState,
    ctx: &Ctx,
    as_root: bool,
) -> Result<(), ImageError> {
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink
    ) {
        return Ok(());
    }
    let raw = entry
        .path()
        .map_err(|e| ctx.invalid(format!("bad entry path: {e}")))?
        .into_owned();
    let mut parts = clean(&raw, ctx)?;
    let Some(name) = parts.pop() else {
        return Ok(()); // the root itself ("./")
    };
    let name_bytes = name.as_bytes();
    if name_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
        if name_bytes == WHITEOUT_OPAQUE.as_bytes() {
            state.opaques.push(parts);
        } else if !name_bytes.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            let target = OsString::from(std::ffi::OsStr::from_bytes(
                &name_bytes[WHITEOUT_PREFIX.len()..],
            ));
            if target.is_empty() || target == "." || target == ".." {
                return Err(ctx.unsafe_path(&raw, "bad whiteout"));
            }
            state.whiteouts.push((parts, target));
        }
        return Ok(());
    }
    let Some(parent) = resolve_parent(root, &parts, true, ctx, &raw)? else {
        return Err(ctx.invalid(format!(
            "cannot create parent of {:?}",
            raw.display().to_string()
        )));
    };
    let rel = parent.join(&name);
    let dest = root.join(&rel);
    let mut p = Some(rel.as_path());
    while let Some(q) = p.filter(|q| !q.as_os_str().is_empty()) {
        if !state.touched.insert(q.to_path_buf()) {
            break;
        }
        p = q.parent();
    }
    let header = entry.header();
    let mode = header
        .mode()
        .map_err(|e| ctx.invalid(format!("{}: bad mode: {e}", raw.display())))?
        & 0o7777;
    let owner = |v: io::Result<u64>| -> Result<u32, ImageError> {
        v.ok()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ctx.invalid(format!("{}: bad owner", raw.display())))
    };
    let (uid, gid) = (owner(header.uid())?, owner(header.gid())?);
    let mtime = header
        .mtime()
        .ok()
        .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)));
    match kind {
        EntryType::Directory => {
            match fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    remove_any(&dest)?;
                    fs::create_dir(&dest).map_err(io_err("creating", &dest))?;
                }
                Err(_) => fs::create_dir(&dest).map_err(io_err("creating", &dest))?,
            }
            if as_root {
                std::os::unix::fs::lchown(&dest, Some(uid), Some(gid))
                    .map_err(io_err("chown", &dest))?;
            }
            fs::set_permissions(&dest, Permissions::from_mode(mode))
                .map_err(io_err("chmod", &dest))?;
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            remove_any(&dest)?;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&dest)
                .map_err(io_err("creating", &dest))?;
            io::copy(entry, &mut file).map_err(io_err("extracting", &dest))?;
            if as_root {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .map_err(io_err("chown", &dest))?;
            }
            file.set_permissions(Permissions::from_mode(mode))
                .map_err(io_err("chmod", &dest))?;
            if let Some(t) = mtime {
                file.set_times(FileTimes::new().set_modified(t).set_accessed(t))
                    .map_err(io_err("setting times of", &dest))?;
            }
        }
        EntryType::Symlink => {
            let target = link_name(entry, &raw, ctx)?;
            remove_any(&dest)?;
            std::os::unix::fs::symlink(&target, &dest)
                .map_err(io_err("creating symlink", &dest))?;
            if as_root {
                std::os::unix::fs::lchown(&dest, Some(uid), Some(gid))
                    .map_err(io_err("chown", &dest))?;
            }
        }
        EntryType::Link => {
            let target = link_name(entry, &raw, ctx)?;
            let mut tparts = clean(&target, ctx).map_err(|_| {
                ctx.unsafe_path(
                    &raw,
                    format!(
                        "hard link to {:?} outside the root",
                        target.display().to_string()
                    ),
                )
            })?;
            let missing = || {
                ctx.invalid(format!(
                    "{}: hard link to missing {}",
                    raw.display(),
                    target.display()
                ))
            };
            let tname = tparts.pop().ok_or_else(missing)?;
            let tdir = resolve_parent(root, &tparts, false, ctx, &raw)?.ok_or_else(missing)?;
            let src = root.join(tdir).join(tname);
            match fs::symlink_metadata(&src) {
                Ok(m) if m.is_dir() => {
                    return Err(ctx.unsafe_path(&raw, "hard link to a directory"))
                }
                Ok(_) => {}
                Err(_) => return Err(missing()),
            }
            if src != dest {
                remove_any(&dest)?;
                fs::hard_link(&src, &dest).map_err(io_err("creating hard link", &dest))?;
            }
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            if !as_root && kind != EntryType::Fifo {
                tracing::debug!(path = %raw.display(), "not root: skipping device node");
                return Ok(());
            }
            remove_any(&dest)?;
            make_node(&dest, kind, mode, header, ctx, &raw)?;
            if as_root {
                std::os::unix::fs::lchown(&dest, Some(uid), Some(gid))
                    .map_err(io_err("chown", &dest))?;
            }
        }
        other => tracing::debug!(path = %raw.display(), kind = ?other, "skipping tar entry"),
    }
    Ok(())
}

fn link_name<R: io::Read>(
    entry: &tar::Entry<R>,
    raw: &Path,
    ctx: &Ctx,
) -> Result<PathBuf, ImageError> {
    match entry.link_name() {
        Ok(Some(t)) if !t.as_os_str().is_empty() => Ok(t.into_owned()),
        _ => Err(ctx.invalid(format!("{}: link without target", raw.display()))),
    }
}

fn make_node(
    dest: &Path,
    kind: EntryType,
    mode: u32,
    header: &tar::Header,
    ctx: &Ctx,
    raw: &Path,
) -> Result<(), ImageError> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let perm = Mode::from_bits_truncate(mode as libc::mode_t);
    let (sflag, dev) = match kind {
        EntryType::Char | EntryType::Block => {
            let bad = || ctx.invalid(format!("{}: bad device numbers", raw.display()));
            let major = header.device_major().ok().flatten().ok_or_else(bad)?;
            let minor = header.device_minor().ok().flatten().ok_or_else(bad)?;
            let flag = if kind == EntryType::Char {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            (flag, makedev(major.into(), minor.into()))
        }
        _ => (SFlag::S_IFIFO, 0),
    };
    mknod(dest, sflag, perm, dev).map_err(|e| io_err("creating node", dest)(e.into()))?;
    fs::set_permissions(dest, Permissions::from_mode(mode)).map_err(io_err("chmod", dest))
}

/// Resolves the directory `parts` (relative to root) to a real directory
/// inside root, following in-root relative symlinks. With `create`, missing
/// directories are made (0755); without, a missing one gives `None`.
/// `entry` is the tar entry's path, for error messages.
fn resolve_parent(
    root: &Path,
    parts: &[OsString],
    create: bool,
    ctx: &Ctx,
    entry: &Path,
) -> Result<Option<PathBuf>, ImageError> {
    let shown = || entry.to_path_buf();
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<OsString> = parts.iter().cloned().collect();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == "." {
            continue;
        }
        if c == ".." {
            if !resolved.pop() {
                return Err(
                    ctx.unsafe_path(&shown(), "a symlink on the way points outside the root")
                );
            }
            continue;
        }
        let here = root.join(&resolved).join(&c);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.is_dir() => resolved.push(&c),
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ctx.unsafe_path(&shown(), "too many levels of symlinks"));
                }
                let target = fs::read_link(&here).map_err(io_err("reading link", &here))?;
                if target.is_absolute() {
                    return Err(ctx.unsafe_path(
                        &shown(),
                        format!("goes through symlink {:?} -> {:?}, an absolute target, which would leave the root", resolved.join(&c).display().to_string(), target.display().to_string()),
                    ));
                }
                for tc in target.components().rev() {
                    pending.push_front(tc.as_os_str().to_os_string());
                }
            }
            Ok(_) if create => {
                return Err(ctx.invalid(format!(
                    "{}: {} is not a directory",
                    shown().display(),
                    resolved.join(&c).display()
                )))
            }
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&here).map_err(io_err("creating", &here))?;
                fs::set_permissions(&here, Permissions::from_mode(0o755))
                    .map_err(io_err("chmod", &here))?;
                resolved.push(&c);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading metadata of", &here)(e)),
        }
    }
    Ok(Some(resolved))
}

fn remove_any(path: &Path) -> Result<(), ImageError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("removing", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("removing", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("reading metadata of", path)(e)),
    }
}

/// Removes `rel` unless this layer wrote it; if it wrote it (or something
/// below it) and it is a directory, prunes its children the same way.
fn prune(root: &Path, rel: PathBuf, touched: &HashSet<PathBuf>) -> Result<(), ImageError> {
    let mut stack = vec![rel];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !touched.contains(&rel) {
            remove_any(&path)?;
        } else if meta.is_dir() {
            let entries = fs::read_dir(&path).map_err(io_err("listing", &path))?;
            for e in entries {
                let e = e.map_err(io_err("listing", &path))?;
                stack.push(rel.join(e.file_name()));
            }
        }
    }
    Ok(())
}

/// Opaque directory: hides everything lower layers put in `dir`.
fn prune_children(root: &Path, dir: &Path, touched: &HashSet<PathBuf>) -> Result<(), ImageError> {
    let path = root.join(dir);
    let entries = match fs::read_dir(&path) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("listing", &path)(e)),
    };
    for e in entries {
        let e = e.map_err(io_err("listing", &path))?;
        prune(root, dir.join(e.file_name()), touched)?;
    }
    Ok(())
}
