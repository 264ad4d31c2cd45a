//! Per-container cgroups from the CRI resources, on cgroup v2 or v1.
//!
//! The runtime creates `<parent>/<ordinal>` (parent `vimanad` by default) in each hierarchy and writes the
//! limits; the container process joins the directories itself before exec.
//! A controller the node lacks is reported once as a warning and its limit
//! is not enforced: the container still runs. Nothing here spawns processes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The limits the kubelet passes in `LinuxContainerResources` (0 = unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    /// cgroup v2 files to write verbatim (`unified` in the CRI).
    pub unified: Vec<(String, String)>,
    /// pids.max (0 = none).
    pub pids_max: i64,
}

/// The device nodes a container may use (v1 `devices.allow`): the six
/// the shim binds into its `/dev`, and nothing else (no mknod either).
const DEVICES_ALLOWED: [&str; 6] = [
    "c 1:3 rwm", // null
    "c 1:5 rwm", // zero
    "c 1:7 rwm", // full
    "c 1:8 rwm", // random
    "c 1:9 rwm", // urandom
    "c 5:0 rwm", // tty
];

/// The cgroup layout of this node.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    /// cgroup v2 with the controllers listed in the root's cgroup.controllers.
    V2 {
        root: PathBuf,
        controllers: Vec<String>,
    },
    /// cgroup v1: one mount per controller we use.
    V1 { mounts: Vec<(String, PathBuf)> },
    /// No usable cgroup filesystem: no limits.
    None,
}

// cpuacct and blkio: the CPU and I/O usage stats read (`control::stats`);
// devices: the allow list (`security`).
const V1_CONTROLLERS: [&str; 7] = [
    "blkio", "cpu", "cpuacct", "cpuset", "devices", "memory", "pids",
];

impl Hierarchy {
    /// Reads /proc/self/mountinfo. A v2 mount with controllers wins (the
    /// production default); otherwise the v1 controller mounts are used.
    pub fn detect() -> Self {
        let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
            return Hierarchy::None;
        };
        let mut v1 = Vec::new();
        for line in info.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = pre.split(' ').nth(4).unwrap_or_default();
            let mut post = post.split(' ');
            let fstype = post.next().unwrap_or_default();
            let options = post.nth(1).unwrap_or_default();
            match fstype {
                "cgroup2" => {
                    let root = PathBuf::from(mount_point);
                    let controllers: Vec<String> =
                        fs::read_to_string(root.join("cgroup.controllers"))
                            .unwrap_or_default()
                            .split_whitespace()
                            .map(str::to_owned)
                            .collect();
                    // Hybrid nodes mount an unified hierarchy holding few
                    // or no controllers beside v1: only a v2 with the
                    // resource controllers is the node's real hierarchy.
                    if controllers.iter().any(|c| c == "memory" || c == "cpu") {
                        return Hierarchy::V2 { root, controllers };
                    }
                }
                "cgroup" => {
                    for opt in options.split(',') {
                        if V1_CONTROLLERS.contains(&opt) && !v1.iter().any(|(c, _)| c == opt) {
                            v1.push((opt.to_owned(), PathBuf::from(mount_point)));
                        }
                    }
                }
                _ => {}
            }
        }
        if v1.is_empty() {
            Hierarchy::None
        } else {
            Hierarchy::V1 { mounts: v1 }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Hierarchy::V2 { root, controllers } => {
                format!(
                    "cgroup v2 at {} ({})",
                    root.display(),
                    controllers.join(" ")
                )
            }
            Hierarchy::V1 { mounts } => {
                let names: Vec<_> = mounts.iter().map(|(c, _)| c.as_str()).collect();
                format!("cgroup v1 ({})", names.join(" "))
            }
            Hierarchy::None => "no cgroup filesystem".to_owned(),
        }
    }

    /// Creates the container's cgroup(s) with `limits` and returns the
    /// directories the container must join, plus warnings for limits that
    /// cannot be enforced here.
    pub fn create(
        &self,
        parent: &str,
        name: &str,
        limits: &Limits,
    ) -> io::Result<(Vec<PathBuf>, Vec<String>)> {
        let mut warnings = Vec::new();
        let dirs = match self {
            Hierarchy::V2 { root, controllers } => {
                let parent = root.join(parent);
                fs::create_dir_all(&parent)?;
                let wanted: Vec<String> = ["cpu", "cpuset", "io", "memory", "pids"]
                    .iter()
                    .filter(|c| controllers.iter().any(|have| have == *c))
                    .map(|c| format!("+{c}"))
                    .collect();
                for dir in [root.as_path(), parent.as_path()] {
                    // Best effort: a controller already enabled or not
                    // delegable shows up below as a missing file.
                    let _ = fs::write(dir.join("cgroup.subtree_control"), wanted.join(" "));
                }
                let dir = parent.join(name);
                fs::create_dir_all(&dir)?;
                write_v2_limits(&dir, limits, &mut warnings);
                vec![dir]
            }
            Hierarchy::V1 { mounts } => {
                let mut dirs = Vec::new();
                for (controller, mount) in mounts {
                    let group = mount.join(parent);
                    fs::create_dir_all(&group)?;
                    let dir = group.join(name);
                    fs::create_dir_all(&dir)?;
                    if controller == "cpuset" {
                        // A new v1 cpuset starts empty and refuses tasks:
                        // each level takes its parent's.
                        let mut at = mount.clone();
                        for part in Path::new(parent).join(name).components() {
                            let next = at.join(part);
                            inherit_cpuset(&at, &next)?;
                            at = next;
                        }
                    }
                    if controller == "devices" {
                        fs::write(dir.join("devices.deny"), "a")?;
                        for rule in DEVICES_ALLOWED {
                            fs::write(dir.join("devices.allow"), rule)?;
                        }
                    }
                    dirs.push(dir);
                }
                write_v1_limits(mounts, &Path::new(parent).join(name), limits, &mut warnings);
                dirs
            }
            Hierarchy::None => {
                if limits != &Limits::default() {
                    warnings.push("no cgroup filesystem: resource limits not enforced".to_owned());
                }
                Vec::new()
            }
        };
        Ok((dirs, warnings))
    }
}

/// Removes a container's cgroup directories once its processes are gone.
pub fn remove(dirs: &[PathBuf]) {
    for dir in dirs {
        for _ in 0..50 {
            match fs::remove_dir(dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                _ => break,
            }
        }
    }
}

fn write_v2_limits(dir: &Path, l: &Limits, warnings: &mut Vec<String>) {
    let mut set = |file: &str, value: String| {
        if let Err(e) = fs::write(dir.join(file), &value) {
            warnings.push(format!("cgroup v2 {file}={value} not applied: {e}"));
        }
    };
    if l.cpu_quota > 0 {
        let period = if l.cpu_period > 0 {
            l.cpu_period
        } else {
            100_000
        };
        set("cpu.max", format!("{} {}", l.cpu_quota, period));
    }
    if l.cpu_shares > 0 {
        set("cpu.weight", shares_to_weight(l.cpu_shares).to_string());
    }
    if l.memory_limit_in_bytes > 0 {
        set("memory.max", l.memory_limit_in_bytes.to_string());
    }
    if !l.cpuset_cpus.is_empty() {
        set("cpuset.cpus", l.cpuset_cpus.clone());
    }
    if !l.cpuset_mems.is_empty() {
        set("cpuset.mems", l.cpuset_mems.clone());
    }
    if l.pids_max > 0 {
        set("pids.max", l.pids_max.to_string());
    }
    let (safe, unsafe_names): (Vec<_>, Vec<_>) = l
        .unified
        .iter()
        .partition(|(file, _)| !file.contains('/') && !file.starts_with('.'));
    for (file, value) in safe {
        set(file, value.clone());
    }
    for (file, _) in unsafe_names {
        warnings.push(format!("cgroup v2 file {file:?} refused"));
    }
}

fn write_v1_limits(
    mounts: &[(String, PathBuf)],
    group: &Path,
    l: &Limits,
    warnings: &mut Vec<String>,
) {
    let mut set = |controller: &str, file: &str, value: String| {
        let Some((_, mount)) = mounts.iter().find(|(c, _)| c == controller) else {
            warnings.push(format!(
                "cgroup v1 controller {controller} missing: {file}={value} not enforced"
            ));
            return;
        };
        let path = mount.join(group).join(file);
        if let Err(e) = fs::write(&path, &value) {
            warnings.push(format!("cgroup v1 {file}={value} not applied: {e}"));
        }
    };
    if l.cpu_period > 0 {
        set("cpu", "cpu.cfs_period_us", l.cpu_period.to_string());
    }
    if l.cpu_quota > 0 {
        set("cpu", "cpu.cfs_quota_us", l.cpu_quota.to_string());
    }
    if l.cpu_shares > 0 {
        set("cpu", "cpu.shares", l.cpu_shares.to_string());
    }
    if l.memory_limit_in_bytes > 0 {
        set(
            "memory",
            "memory.limit_in_bytes",
            l.memory_limit_in_bytes.to_string(),
        );
    }
    if !l.cpuset_cpus.is_empty() {
        set("cpuset", "cpuset.cpus", l.cpuset_cpus.clone());
    }
    if !l.cpuset_mems.is_empty() {
        set("cpuset", "cpuset.mems", l.cpuset_mems.clone());
    }
    if l.pids_max > 0 {
        set("pids", "pids.max", l.pids_max.to_string());
    }
    if !l.unified.is_empty() {
        warnings.push("cgroup v1 node: unified (v2) resources ignored".to_owned());
    }
}

fn inherit_cpuset(from: &Path, to: &Path) -> io::Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let current = fs::read_to_string(to.join(file)).unwrap_or_default();
        if current.trim().is_empty() {
            fs::write(to.join(file), fs::read_to_string(from.join(file))?.trim())?;
        }
    }
    Ok(())
}

/// The kubelet's own conversion from cpu.shares [2, 262144] to cpu.weight
/// [1, 10000].
fn shares_to_weight(shares: i64) -> i64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_shares_like_the_kubelet() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1), 1);
    }

    #[test]
    fn detects_this_node_hierarchy() {
        let h = Hierarchy::detect();
        // Any answer is valid; it must be self-consistent and describable.
        assert!(!h.describe().is_empty());
    }
}
