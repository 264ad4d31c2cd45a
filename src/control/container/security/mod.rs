//! The container's sandbox: what the CRI security context asks, checked
//! and turned into a [`Sandbox`] the shim applies (capabilities,
//! no_new_privs, seccomp, masked and read-only paths, namespaces).
//!
//! Everything a pod asks is either honoured or refused here with the name
//! of the field (the caller answers INVALID_ARGUMENT); nothing is ignored.
//! This module reads CRI messages and profile files; it starts no process
//! and touches no cgroup (`cgroup.rs` holds the devices and pids limits).

pub mod caps;
pub mod paths;
pub mod seccomp;
mod syscalls;
pub mod users;

use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

pub use caps::CapSet;
use seccomp::{Profile, Programs};

/// What the shim applies to one container, decided by the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Bounding, permitted and effective sets.
    pub caps: CapSet,
    /// Ambient (and inheritable) set.
    pub ambient: CapSet,
    pub no_new_privs: bool,
    /// Compiled seccomp programs; `None` is Unconfined.
    pub seccomp: Option<Programs>,
    /// Paths hidden inside the container (runc's defaults when the kubelet
    /// sends none).
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// The node's network namespace (hostNetwork) instead of its own.
    pub host_network: bool,
    /// The node's IPC namespace (hostIPC).
    pub host_ipc: bool,
    /// Add the groups the image's /etc/group gives the user
    /// (SupplementalGroupsPolicy Merge, the default; Strict: only those
    /// the CRI names).
    pub merge_image_groups: bool,
    /// A user namespace with these maps (CRI UserNamespace mode POD), or
    /// the node's.
    pub user_namespace: Option<IdMappings>,
}

/// The runtime's directories, closed to the node's other users: the state
/// directory (image roots keep their setuid files and device nodes; specs
/// and the database hold the containers' environment) 0700 and its
/// database 0600; the volatile directory 0711 with the pod socket
/// directories below a 0700 directory.
pub fn restrict_files(state_dir: &Path, run_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, mode: u32| -> std::io::Result<()> {
        match std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    set(state_dir, 0o700)?;
    for sub in ["images", "containers"] {
        set(&state_dir.join(sub), 0o700)?;
    }
    set(&state_dir.join("state.redb"), 0o600)?;
    set(run_dir, 0o711)?;
    set(&run_dir.join("pods"), 0o700)
}

/// runc's and containerd's default masked paths (the kubelet sends the
/// same list for the Default procMount).
pub const DEFAULT_MASKED: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's default read-only paths.
pub const DEFAULT_READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn invalid(field: &str, why: impl std::fmt::Display) -> String {
    format!("{field}: {why}")
}

/// Checks the pod-level fields at RunPodSandbox: what vimanad cannot honour
/// is refused before anything exists.
pub fn check_pod(config: &cri::PodSandboxConfig) -> Result<(), String> {
    let Some(linux) = config.linux.as_ref() else {
        return Ok(());
    };
    if !linux.sysctls.is_empty() {
        let mut names: Vec<&String> = linux.sysctls.keys().collect();
        names.sort();
        return Err(invalid(
            "linux.sysctls",
            format!("sysctls are not supported (asked: {names:?})"),
        ));
    }
    cgroup_parent(&linux.cgroup_parent)?;
    if let Some(s) = linux.security_context.as_ref() {
        if s.privileged {
            return Err(invalid(
                "linux.security_context.privileged",
                "privileged pods are not run by vimanad",
            ));
        }
        if s.run_as_group.is_some() && s.run_as_user.is_none() {
            return Err(invalid(
                "linux.security_context.run_as_group",
                "run_as_group needs run_as_user",
            ));
        }
        selinux(
            "linux.security_context.selinux_options",
            s.selinux_options.as_ref(),
        )?;
        apparmor("linux.security_context.apparmor", s.apparmor.as_ref(), "")?;
        namespaces(
            "linux.security_context.namespace_options",
            s.namespace_options.as_ref(),
        )?;
    }
    Ok(())
}

/// The pod's cgroup parent as a path relative to each hierarchy's root
/// (the kubelet's cgroupfs form `/kubepods/burstable/podUID`, or the
/// systemd form `kubepods-burstable-podUID.slice`, expanded as systemd
/// nests slices). `None` when the pod names none.
pub fn cgroup_parent(parent: &str) -> Result<Option<PathBuf>, String> {
    if parent.is_empty() {
        return Ok(None);
    }
    let field = "linux.cgroup_parent";
    if !parent.contains('/') && parent.ends_with(".slice") {
        let stem = &parent[..parent.len() - ".slice".len()];
        if stem.is_empty() || stem.split('-').any(str::is_empty) {
            return Err(invalid(
                field,
                format!("{parent:?} is not a systemd slice name"),
            ));
        }
        let mut path = PathBuf::new();
        let parts: Vec<&str> = stem.split('-').collect();
        for i in 1..=parts.len() {
            path.push(format!("{}.slice", parts[..i].join("-")));
        }
        return Ok(Some(path));
    }
    let mut path = PathBuf::new();
    for c in Path::new(parent).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => path.push(n),
            _ => return Err(invalid(field, format!("{parent:?} leaves the cgroup tree"))),
        }
    }
    if path.as_os_str().is_empty() {
        return Err(invalid(field, format!("{parent:?} names the root cgroup")));
    }
    Ok(Some(path))
}

/// `log_path` must stay below the pod's `log_directory`: relative, without
/// `..` (CRI: "relative to PodSandboxConfig.LogDirectory").
pub fn check_log_path(log_path: &str) -> Result<(), String> {
    if log_path.is_empty() {
        return Ok(());
    }
    let ok = Path::new(log_path)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok || log_path.contains('\0') {
        return Err(invalid(
            "log_path",
            format!("{log_path:?} must be a relative path inside the pod's log directory"),
        ));
    }
    Ok(())
}

fn selinux(field: &str, options: Option<&cri::SeLinuxOption>) -> Result<(), String> {
    if let Some(o) = options {
        if !(o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty()) {
            return Err(invalid(
                field,
                "SELinux labels are not supported on this node",
            ));
        }
    }
    Ok(())
}

fn apparmor(
    field: &str,
    profile: Option<&cri::SecurityProfile>,
    legacy: &str,
) -> Result<(), String> {
    use cri::security_profile::ProfileType;
    if let Some(p) = profile {
        if p.profile_type() != ProfileType::Unconfined {
            return Err(invalid(
                field,
                format!(
                    "AppArmor profile {:?} {:?} cannot be applied: vimanad does not load AppArmor profiles",
                    p.profile_type().as_str_name(),
                    p.localhost_ref
                ),
            ));
        }
    } else if !legacy.is_empty() && legacy != "unconfined" {
        return Err(invalid(
            "apparmor_profile",
            format!("AppArmor profile {legacy:?} cannot be applied: vimanad does not load AppArmor profiles"),
        ));
    }
    Ok(())
}

/// (host network, host IPC, user namespace), or the mode that cannot be
/// honoured.
fn namespaces(
    field: &str,
    options: Option<&cri::NamespaceOption>,
) -> Result<(bool, bool, Option<IdMappings>), String> {
    use cri::NamespaceMode;
    let Some(o) = options else {
        return Ok((false, false, None));
    };
    match o.pid() {
        NamespaceMode::Pod | NamespaceMode::Container => {}
        other => {
            return Err(invalid(
                &format!("{field}.pid"),
                format!(
                    "{} is not supported: every container has its own PID namespace",
                    other.as_str_name()
                ),
            ))
        }
    }
    let host_ipc = match o.ipc() {
        NamespaceMode::Pod | NamespaceMode::Container => false,
        NamespaceMode::Node => true,
        NamespaceMode::Target => {
            return Err(invalid(&format!("{field}.ipc"), "TARGET is not supported"))
        }
    };
    let host_network = match o.network() {
        NamespaceMode::Pod | NamespaceMode::Container => false,
        NamespaceMode::Node => true,
        NamespaceMode::Target => {
            return Err(invalid(
                &format!("{field}.network"),
                "TARGET is not supported",
            ))
        }
    };
    let userns = match o.userns_options.as_ref() {
        None => None,
        Some(u) => match u.mode() {
            NamespaceMode::Node => None,
            NamespaceMode::Pod => Some(
                IdMappings::from_cri(u)
                    .map_err(|e| invalid(&format!("{field}.userns_options"), e))?,
            ),
            other => {
                return Err(invalid(
                    &format!("{field}.userns_options"),
                    format!("{} is not supported (POD or NODE)", other.as_str_name()),
                ))
            }
        },
    };
    Ok((host_network, host_ipc, userns))
}

/// A user namespace's id maps, as the kubelet sends them (container id,
/// host id, length).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMappings {
    pub uids: Vec<(u32, u32, u32)>,
    pub gids: Vec<(u32, u32, u32)>,
}

impl IdMappings {
    fn from_cri(u: &cri::UserNamespace) -> Result<Self, String> {
        let list = |maps: &[cri::IdMapping], what: &str| -> Result<Vec<(u32, u32, u32)>, String> {
            if maps.is_empty() || maps.len() > 340 {
                return Err(format!("mode POD needs 1 to 340 {what} mappings"));
            }
            maps.iter()
                .map(|m| {
                    let ok = m.length > 0
                        && m.container_id.checked_add(m.length).is_some()
                        && m.host_id.checked_add(m.length).is_some();
                    ok.then_some((m.container_id, m.host_id, m.length))
                        .ok_or_else(|| format!("{what} mapping {m:?} is empty or overflows"))
                })
                .collect()
        };
        let mappings = IdMappings {
            uids: list(&u.uids, "uid")?,
            gids: list(&u.gids, "gid")?,
        };
        // The point of a user namespace: the container's root is not the
        // node's.
        if mappings.host_uid(0) == Some(0) || mappings.host_gid(0) == Some(0) {
            return Err("mappings that make the container's root the node's root".into());
        }
        Ok(mappings)
    }

    fn map(list: &[(u32, u32, u32)], id: u32) -> Option<u32> {
        list.iter()
            .find(|(c, _, l)| id >= *c && id - c < *l)
            .map(|(c, h, _)| h + (id - c))
    }

    /// The node's uid for the container's `uid`.
    pub fn host_uid(&self, uid: u32) -> Option<u32> {
        Self::map(&self.uids, uid)
    }

    pub fn host_gid(&self, gid: u32) -> Option<u32> {
        Self::map(&self.gids, gid)
    }

    /// `/proc/PID/uid_map` and `gid_map` contents.
    pub fn files(&self) -> (String, String) {
        let text = |l: &[(u32, u32, u32)]| {
            l.iter()
                .map(|(c, h, n)| format!("{c} {h} {n}\n"))
                .collect::<String>()
        };
        (text(&self.uids), text(&self.gids))
    }
}

/// The sandbox for one container, from the pod's and the container's
/// security contexts. `profile_root` holds the Localhost seccomp profiles.
pub fn from_cri(
    pod: &cri::PodSandboxConfig,
    config: &cri::ContainerConfig,
    profile_root: &Path,
) -> Result<Sandbox, String> {
    check_pod(pod)?;
    let pod_security = pod.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let s = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let f = |name: &str| format!("linux.security_context.{name}");
    if s.privileged {
        return Err(invalid(
            &f("privileged"),
            "privileged containers are not run by vimanad",
        ));
    }
    if s.run_as_group.is_some() && s.run_as_user.is_none() && s.run_as_username.is_empty() {
        return Err(invalid(
            &f("run_as_group"),
            "run_as_group needs run_as_user",
        ));
    }
    selinux(&f("selinux_options"), s.selinux_options.as_ref())?;
    #[allow(deprecated)]
    let legacy_apparmor = s.apparmor_profile.as_str();
    apparmor(&f("apparmor"), s.apparmor.as_ref(), legacy_apparmor)?;
    let (host_network, host_ipc, user_namespace) = match s.namespace_options.as_ref() {
        Some(o) => namespaces(&f("namespace_options"), Some(o))?,
        None => namespaces(
            "linux.security_context.namespace_options",
            pod_security.and_then(|p| p.namespace_options.as_ref()),
        )?,
    };
    let (add, drop, ambient) = s
        .capabilities
        .as_ref()
        .map(|c| {
            (
                c.add_capabilities.as_slice(),
                c.drop_capabilities.as_slice(),
                c.add_ambient_capabilities.as_slice(),
            )
        })
        .unwrap_or_default();
    let (caps, ambient) =
        caps::from_cri(add, drop, ambient).map_err(|e| invalid(&f("capabilities"), e))?;
    let seccomp = seccomp_of(&s, profile_root)
        .map_err(|e| invalid(&f("seccomp"), e))?
        .map(|p| p.compile(caps))
        .transpose()
        .map_err(|e| invalid(&f("seccomp"), e))?;
    let paths = |given: &[String], default: &[&str], name: &str| -> Result<Vec<String>, String> {
        if given.is_empty() {
            return Ok(default.iter().map(|p| p.to_string()).collect());
        }
        for p in given {
            let ok = p.starts_with('/')
                && Path::new(p)
                    .components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
            if !ok {
                return Err(invalid(&f(name), format!("{p:?} is not an absolute path")));
            }
        }
        Ok(given.to_vec())
    };
    Ok(Sandbox {
        caps,
        ambient,
        no_new_privs: s.no_new_privs,
        seccomp,
        masked_paths: paths(&s.masked_paths, &DEFAULT_MASKED, "masked_paths")?,
        readonly_paths: paths(&s.readonly_paths, &DEFAULT_READONLY, "readonly_paths")?,
        host_network,
        host_ipc,
        merge_image_groups: s.supplemental_groups_policy() == cri::SupplementalGroupsPolicy::Merge,
        user_namespace,
    })
}

/// The seccomp profile asked for: `seccomp`, else the deprecated
/// `seccomp_profile_path`. A container that names none gets the runtime
/// default (stricter than containerd, which runs it unconfined).
fn seccomp_of(
    s: &cri::LinuxContainerSecurityContext,
    profile_root: &Path,
) -> Result<Option<Profile>, String> {
    use cri::security_profile::ProfileType;
    let localhost = |reference: &str| -> Result<Option<Profile>, String> {
        let path = if Path::new(reference).is_absolute() {
            PathBuf::from(reference)
        } else {
            profile_root.join(reference)
        };
        let ok = path.starts_with(profile_root)
            && path
                .components()
                .all(|c| !matches!(c, Component::ParentDir));
        if !ok {
            return Err(format!(
                "Localhost profile {reference:?} is not under the seccomp profile root {}",
                profile_root.display()
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("read Localhost profile {}: {e}", path.display()))?;
        Profile::from_json(&text)
            .map(Some)
            .map_err(|e| format!("Localhost profile {}: {e}", path.display()))
    };
    match s.seccomp.as_ref() {
        Some(p) => match p.profile_type() {
            ProfileType::RuntimeDefault => Ok(Some(Profile::runtime_default())),
            ProfileType::Unconfined => Ok(None),
            ProfileType::Localhost => localhost(&p.localhost_ref),
        },
        #[allow(deprecated)]
        None => match s.seccomp_profile_path.as_str() {
            "" | "runtime/default" | "docker/default" => Ok(Some(Profile::runtime_default())),
            "unconfined" => Ok(None),
            other => match other.strip_prefix("localhost/") {
                Some(path) => localhost(path),
                None => Err(format!("unknown seccomp_profile_path {other:?}")),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parents_in_both_forms() {
        assert_eq!(cgroup_parent("").unwrap(), None);
        assert_eq!(
            cgroup_parent("/kubepods/burstable/pod1").unwrap(),
            Some(PathBuf::from("kubepods/burstable/pod1"))
        );
        assert_eq!(
            cgroup_parent("kubepods-burstable-pod1.slice").unwrap(),
            Some(PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
            ))
        );
        assert!(cgroup_parent("/kubepods/../../etc").is_err());
        assert!(cgroup_parent("/").is_err());
    }

    #[test]
    fn log_paths_stay_inside() {
        assert!(check_log_path("c/0.log").is_ok());
        assert!(check_log_path("../x.log").is_err());
        assert!(check_log_path("c/../../x.log").is_err());
        assert!(check_log_path("/etc/passwd").is_err());
    }

    #[test]
    fn refusals_name_the_field() {
        let pod = cri::PodSandboxConfig::default();
        let mut config = cri::ContainerConfig::default();
        let root = Path::new("/nonexistent");
        assert!(from_cri(&pod, &config, root).unwrap().seccomp.is_some());
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(from_cri(&pod, &config, root)
            .unwrap_err()
            .contains("privileged"));
        let sc = |c: &mut cri::ContainerConfig| {
            c.linux
                .as_mut()
                .unwrap()
                .security_context
                .as_mut()
                .unwrap()
                .clone()
        };
        let set = |c: &mut cri::ContainerConfig, s: cri::LinuxContainerSecurityContext| {
            c.linux.as_mut().unwrap().security_context = Some(s);
        };
        let mut s = sc(&mut config);
        s.privileged = false;
        s.run_as_group = Some(cri::Int64Value { value: 5 });
        set(&mut config, s.clone());
        assert!(from_cri(&pod, &config, root)
            .unwrap_err()
            .contains("run_as_group"));
        s.run_as_group = None;
        s.seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: "/etc/passwd".into(),
        });
        set(&mut config, s);
        assert!(from_cri(&pod, &config, root)
            .unwrap_err()
            .contains("seccomp"));
    }
}
