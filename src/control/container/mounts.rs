//! CRI mounts: host paths bind-mounted into a container's root, checked the
//! way runc checks them; and the CRI fields of the same family (devices,
//! sysctls) that are refused by name rather than dropped.
//!
//! [`validate`] runs on the runtime side at CreateContainer and builds the
//! [`BindMount`]s of the launch spec; [`bind_all`] runs in the shim's
//! container process, after the overlay root is mounted and before
//! pivot_root. The image is tenant-controlled: a destination is resolved
//! inside the root without following any symlink out of it, and never
//! lands on `/proc`, `/sys` or the pod's socket directory. Nothing here
//! touches the store or the pod lifecycle.

use std::collections::VecDeque;
use std::fs;
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};

use super::spec::SOCKET_DIR_IN_CONTAINER;

/// How mounts under a bind propagate (`MountPropagation` in the CRI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    /// rprivate: nothing propagates either way.
    Private,
    /// rslave: the host's mounts under the source appear inside.
    HostToContainer,
}

/// One bind mount the shim makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute, lexically clean path inside the container.
    pub destination: PathBuf,
    pub readonly: bool,
    pub propagation: Propagation,
    /// Whether the source is a directory (else a file is bound).
    pub directory: bool,
}

/// Destinations never mounted over (as runc refuses `/proc`; `/sys` for the
/// same reason; the socket directory is how the component is reached).
const FORBIDDEN: [&str; 3] = ["/proc", "/sys", SOCKET_DIR_IN_CONTAINER];

/// Checks a container config's mounts, devices and the fields of them that
/// cannot be honoured here; returns the binds in mount order (parents
/// first). The error names the field and the path.
pub fn validate(config: &cri::ContainerConfig) -> Result<Vec<BindMount>, String> {
    if let Some(device) = config.devices.first() {
        return Err(format!(
            "devices are not supported by vimanad (components get no host devices): {:?} -> {:?}",
            device.host_path, device.container_path
        ));
    }
    let mut binds = Vec::new();
    for m in &config.mounts {
        binds.push(validate_one(m)?);
    }
    // Parents before children, as containerd orders them.
    binds.sort_by_key(|b| b.destination.components().count());
    Ok(binds)
}

fn validate_one(m: &cri::Mount) -> Result<BindMount, String> {
    let what = format!("mount {:?} -> {:?}", m.host_path, m.container_path);
    if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        return Err(format!("{what}: image volumes are not supported"));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(format!(
            "{what}: uid/gid mappings are not supported (no user namespaces)"
        ));
    }
    if m.recursive_read_only {
        return Err(format!(
            "{what}: recursive read-only mounts are not supported"
        ));
    }
    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationPrivate) => Propagation::Private,
        Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
        Ok(cri::MountPropagation::PropagationBidirectional) => {
            return Err(format!(
                "{what}: Bidirectional mount propagation is not supported: a component's mounts never reach the node"
            ))
        }
        Err(_) => return Err(format!("{what}: unknown propagation {}", m.propagation)),
    };
    let destination = clean_destination(&m.container_path)
        .ok_or_else(|| format!("{what}: the container path must be absolute"))?;
    check_destination(&destination).map_err(|e| format!("{what}: {e}"))?;
    if m.host_path.is_empty() || !m.host_path.starts_with('/') || m.host_path.contains('\0') {
        return Err(format!("{what}: the host path must be absolute"));
    }
    let source = PathBuf::from(&m.host_path);
    let meta = fs::metadata(&source).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("{what}: host path {:?} does not exist", m.host_path)
        }
        _ => format!("{what}: host path {:?}: {e}", m.host_path),
    })?;
    if propagation == Propagation::HostToContainer && !propagates(&source) {
        return Err(format!(
            "{what}: HostToContainer propagation needs the host path on a shared or slave mount, and {:?} is on a private one",
            m.host_path
        ));
    }
    Ok(BindMount {
        source,
        destination,
        readonly: m.readonly,
        propagation,
        directory: meta.is_dir(),
    })
}

/// `/a/./b/../c` → `/a/c`; `..` stops at the root (as inside a chroot).
fn clean_destination(path: &str) -> Option<PathBuf> {
    if !path.starts_with('/') || path.contains('\0') {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Some(out)
}

fn check_destination(destination: &Path) -> Result<(), String> {
    if destination == Path::new("/") {
        return Err("cannot mount over the container's root".to_owned());
    }
    for forbidden in FORBIDDEN {
        if destination.starts_with(forbidden) {
            return Err(format!("mounting on or under {forbidden} is not allowed"));
        }
    }
    Ok(())
}

/// True when the mount holding `path` is shared or a slave (its
/// mountinfo optional fields carry `shared:` or `master:`).
fn propagates(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<(usize, bool)> = None;
    for line in info.lines() {
        let Some((pre, _)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = pre.split(' ').collect();
        let Some(mount_point) = fields.get(4) else {
            continue;
        };
        let mount_point = unescape(mount_point);
        if path.starts_with(&mount_point) {
            let len = mount_point.as_os_str().len();
            let tagged = fields[6..]
                .iter()
                .any(|f| f.starts_with("shared:") || f.starts_with("master:"));
            // The last of equally long matches is the mount on top.
            if best.is_none_or(|(l, _)| len >= l) {
                best = Some((len, tagged));
            }
        }
    }
    best.is_some_and(|(_, tagged)| tagged)
}

fn unescape(field: &str) -> PathBuf {
    PathBuf::from(
        field
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\"),
    )
}

/// The mount status the kubelet reads back (ContainerStatus.mounts): the
/// mounts as asked, which are the mounts made.
pub fn status(config: &cri::ContainerConfig) -> Vec<cri::Mount> {
    config.mounts.clone()
}

/// Refuses the sandbox fields vimanad cannot honour (sysctls: components
/// share the node's network, and no sysctl is applied per pod).
pub fn validate_sandbox(config: &cri::PodSandboxConfig) -> Result<(), String> {
    let sysctls = config
        .linux
        .as_ref()
        .map(|l| &l.sysctls)
        .filter(|s| !s.is_empty());
    if let Some(sysctls) = sysctls {
        let mut names: Vec<&str> = sysctls.keys().map(String::as_str).collect();
        names.sort();
        return Err(format!(
            "sysctls are not supported by vimanad: {}",
            names.join(", ")
        ));
    }
    Ok(())
}

/// The most symlinks one destination may go through (as the kernel's
/// limit).
const MAX_SYMLINKS: usize = 40;

/// Resolves `destination` under `root` as if `root` were `/`: every
/// symlink met is read and followed inside the root (an absolute target
/// restarts at the root, `..` stops there), so the result is a host path
/// under `root` with no symlink in it. Components that do not exist yet
/// are kept as they are.
pub fn resolve_in_root(root: &Path, destination: &Path) -> Result<PathBuf, String> {
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<std::ffi::OsString> = destination
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(&resolved).join(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(format!(
                        "too many symlinks resolving {}",
                        destination.display()
                    ));
                }
                let target = fs::read_link(&candidate)
                    .map_err(|e| format!("read symlink {}: {e}", candidate.display()))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push_front(n.to_owned()),
                        Component::ParentDir => pending.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(&part),
        }
    }
    Ok(root.join(resolved))
}

/// In the container process (shim): creates each destination inside
/// `root` and binds its source there. Called once, after the root
/// filesystem is mounted and before pivot_root.
pub fn bind_all(root: &Path, binds: &[BindMount]) -> Result<(), String> {
    for b in binds {
        bind_one(root, b).map_err(|e| {
            format!(
                "mount {} at {}: {e}",
                b.source.display(),
                b.destination.display()
            )
        })?;
    }
    Ok(())
}

fn bind_one(root: &Path, b: &BindMount) -> Result<(), String> {
    let target = resolve_in_root(root, &b.destination)?;
    let inside = target
        .strip_prefix(root)
        .map_err(|_| "the destination resolves outside the root".to_owned())?;
    // Checked again after resolution: a symlink in the image must not turn
    // `/data` into `/proc`.
    check_destination(&Path::new("/").join(inside))?;
    create_target(root, inside, b.directory)?;
    let none: Option<&str> = None;
    mount(
        Some(&b.source),
        &target,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(|e| format!("bind: {e}"))?;
    let propagation = match b.propagation {
        Propagation::Private => MsFlags::MS_PRIVATE,
        Propagation::HostToContainer => MsFlags::MS_SLAVE,
    };
    mount(none, &target, none, propagation | MsFlags::MS_REC, none)
        .map_err(|e| format!("set propagation: {e}"))?;
    if b.readonly {
        // As runc: a remount of the bind, keeping the flags the source
        // mount has (a remount may not clear nosuid, nodev, noexec).
        let kept = kept_flags(&target);
        mount(
            none,
            &target,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept,
            none,
        )
        .map_err(|e| format!("make read-only: {e}"))?;
    }
    Ok(())
}

fn kept_flags(target: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let Ok(st) = statvfs(target) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs_flag) {
            out |= ms_flag;
        }
    }
    out
}

/// Creates the missing directories of `inside` (symlink-free, relative to
/// `root`) and the target itself: a directory for a directory source, an
/// empty file for a file.
fn create_target(root: &Path, inside: &Path, directory: bool) -> Result<(), String> {
    let mut at = root.to_path_buf();
    let parts: Vec<_> = inside.components().collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let last = i + 1 == parts.len();
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!("{} became a symlink", at.display()))
            }
            Ok(meta) if !last && !meta.is_dir() => {
                return Err(format!(
                    "/{} is not a directory in the image",
                    inside.display()
                ))
            }
            Ok(meta) if last && meta.is_dir() != directory => {
                return Err(format!(
                    "cannot bind a {} over the {} /{} of the image",
                    if directory { "directory" } else { "file" },
                    if meta.is_dir() { "directory" } else { "file" },
                    inside.display()
                ))
            }
            Ok(_) => {}
            Err(_) if !last || directory => {
                fs::create_dir(&at).map_err(|e| format!("create {}: {e}", at.display()))?
            }
            Err(_) => {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&at)
                    .map_err(|e| format!("create {}: {e}", at.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mount_of(host: &str, container: &str) -> cri::Mount {
        cri::Mount {
            host_path: host.into(),
            container_path: container.into(),
            ..Default::default()
        }
    }

    fn config(mounts: Vec<cri::Mount>) -> cri::ContainerConfig {
        cri::ContainerConfig {
            mounts,
            ..Default::default()
        }
    }

    #[test]
    fn refuses_what_runc_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().to_str().unwrap();
        for (container, wanted) in [
            ("/proc", "/proc"),
            ("/proc/sys/kernel", "/proc"),
            ("/sys/fs", "/sys"),
            ("/data/../proc/x", "/proc"),
            ("/run/vimana", "/run/vimana"),
            ("/", "root"),
            ("relative", "absolute"),
        ] {
            let e = validate(&config(vec![mount_of(host, container)])).unwrap_err();
            assert!(e.contains(wanted), "{container}: {e}");
        }
        let e = validate(&config(vec![mount_of("/nonexistent/vimana", "/data")])).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let mut bidirectional = mount_of(host, "/data");
        bidirectional.propagation = cri::MountPropagation::PropagationBidirectional as i32;
        let e = validate(&config(vec![bidirectional])).unwrap_err();
        assert!(e.contains("Bidirectional"), "{e}");
        let mut devices = config(Vec::new());
        devices.devices.push(cri::Device {
            container_path: "/dev/fuse".into(),
            host_path: "/dev/fuse".into(),
            permissions: "rwm".into(),
        });
        assert!(validate(&devices).unwrap_err().contains("devices"));
    }

    #[test]
    fn orders_parents_first_and_cleans_paths() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().to_str().unwrap();
        let binds = validate(&config(vec![
            mount_of(host, "/a/b/c"),
            mount_of(host, "/a/./b/../"),
        ]))
        .unwrap();
        assert_eq!(binds[0].destination, Path::new("/a"));
        assert_eq!(binds[1].destination, Path::new("/a/b/c"));
        assert!(binds[0].directory);
    }

    #[test]
    fn resolves_symlinks_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("real")).unwrap();
        symlink("/etc", r.join("abs")).unwrap();
        symlink("../../../../../../tmp", r.join("rel")).unwrap();
        symlink("real", r.join("inner")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(r, Path::new("/abs/passwd")).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/rel/x")).unwrap(),
            r.join("tmp/x")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/inner/x")).unwrap(),
            r.join("real/x")
        );
        assert!(resolve_in_root(r, Path::new("/loop/x")).is_err());
    }

    #[test]
    fn creates_file_and_directory_targets() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        create_target(r, Path::new("a/b/dir"), true).unwrap();
        assert!(r.join("a/b/dir").is_dir());
        create_target(r, Path::new("a/file"), false).unwrap();
        assert!(r.join("a/file").is_file());
        assert!(create_target(r, Path::new("a/file"), true).is_err());
        assert!(create_target(r, Path::new("a/file/below"), true).is_err());
    }

    #[test]
    fn refuses_sysctls_by_name() {
        let mut sandbox = cri::PodSandboxConfig::default();
        assert!(validate_sandbox(&sandbox).is_ok());
        sandbox.linux = Some(cri::LinuxPodSandboxConfig {
            sysctls: [("kernel.shm_rmid_forced".to_owned(), "1".to_owned())]
                .into_iter()
                .collect(),
            ..Default::default()
        });
        let e = validate_sandbox(&sandbox).unwrap_err();
        assert!(e.contains("kernel.shm_rmid_forced"), "{e}");
    }
}
