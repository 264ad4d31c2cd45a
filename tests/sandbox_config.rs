//! The sandbox's configuration, from the kubelet's side: fields vimanad
//! cannot honour are refused naming them; what a stock kubelet sends for
//! an ordinary pod runs as asked (Unconfined, hostNetwork, Localhost
//! profiles, the pod's cgroup parent); the runtime's files are closed to
//! the node's other users.

mod common;
mod hostile;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use hostile::*;
use k8s_cri::v1 as cri;

#[tokio::test]
async fn what_cannot_be_honoured_is_refused_naming_the_field() {
    use cri::security_profile::ProfileType;
    let mut node = node_with(&[]).await;
    let pod = run_pod(&mut node, "fields", |_| {}).await;
    let cases: Vec<(&str, Option<cri::LinuxContainerSecurityContext>)> = vec![
        ("privileged", security(|s| s.privileged = true)),
        (
            "run_as_group",
            security(|s| s.run_as_group = Some(cri::Int64Value { value: 5 })),
        ),
        (
            "selinux_options",
            security(|s| {
                s.selinux_options = Some(cri::SeLinuxOption {
                    level: "s0:c1".into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "apparmor",
            security(|s| s.apparmor = profile(ProfileType::Localhost, "x")),
        ),
        (
            "capabilities",
            security(|s| {
                s.capabilities = Some(cri::Capability {
                    add_capabilities: vec!["CAP_TIME_TRAVEL".into()],
                    ..Default::default()
                })
            }),
        ),
        (
            "seccomp",
            security(|s| s.seccomp = profile(ProfileType::Localhost, "/etc/passwd")),
        ),
        (
            "namespace_options.pid",
            security(|s| {
                s.namespace_options = Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                })
            }),
        ),
        (
            "userns_options",
            security(|s| {
                s.namespace_options = Some(cri::NamespaceOption {
                    userns_options: Some(cri::UserNamespace {
                        mode: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
        ),
    ];
    for (field, security) in cases {
        let err = create(&mut node, &pod, hostile_config(&[], security))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {err:?}");
    }
    for (field, tweak) in [
        (
            "privileged",
            Box::new(|c: &mut cri::PodSandboxConfig| {
                c.linux = Some(cri::LinuxPodSandboxConfig {
                    security_context: Some(cri::LinuxSandboxSecurityContext {
                        privileged: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }) as Box<dyn Fn(&mut cri::PodSandboxConfig)>,
        ),
        (
            "sysctls",
            Box::new(|c: &mut cri::PodSandboxConfig| {
                c.linux = Some(cri::LinuxPodSandboxConfig {
                    sysctls: [("net.ipv4.ip_forward".to_owned(), "1".to_owned())].into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "cgroup_parent",
            Box::new(|c: &mut cri::PodSandboxConfig| {
                c.linux = Some(cri::LinuxPodSandboxConfig {
                    cgroup_parent: "/kubepods/../../x".into(),
                    ..Default::default()
                })
            }),
        ),
    ] {
        let mut req = run_pod_request(&format!("bad-{field}"), A);
        tweak(req.config.as_mut().unwrap());
        let err = node.runtime.run_pod_sandbox(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {err:?}");
    }
}

/// What a stock kubelet sends for an ordinary pod (seccomp Unconfined, the
/// default masked and read-only paths, POD namespaces) runs, unconfined as
/// asked; hostNetwork shares the node's network; a Localhost profile and
/// the pod's cgroup parent apply.
#[tokio::test]
async fn kubelet_defaults_host_network_localhost_profiles_and_cgroup_parent() {
    use cri::security_profile::ProfileType;
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("no-chown.json"),
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chown","fchownat","lchown","fchown"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .unwrap();
    let root = profiles.path().display().to_string();
    let mut node = node_with(&["--seccomp-profile-root", &root]).await;
    let kubelet = |network: cri::NamespaceMode, seccomp: Option<cri::SecurityProfile>| {
        security(move |s| {
            s.namespace_options = Some(cri::NamespaceOption {
                network: network as i32,
                pid: cri::NamespaceMode::Container as i32,
                ipc: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            });
            s.seccomp = seccomp;
            s.masked_paths = [
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
            ]
            .map(String::from)
            .to_vec();
            s.readonly_paths = [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]
            .map(String::from)
            .to_vec();
        })
    };
    let parent = format!("{}-kubepods/besteffort/poduid1", node.cgroup_parent);
    let pod = run_pod(&mut node, "kubelet", |c| {
        c.linux = Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{parent}"),
            ..Default::default()
        })
    })
    .await;
    let config = hostile_config(
        &[],
        kubelet(
            cri::NamespaceMode::Pod,
            profile(ProfileType::Unconfined, ""),
        ),
    );
    create(&mut node, &pod, config).await.unwrap();
    node.start_container(&pod.id).await.unwrap();
    let found = probes(&mut node, &pod.id, "use_dev_null").await;
    assert_eq!(found["status"]["Seccomp"], "0", "Unconfined as asked");
    assert_refused(
        &found,
        &[
            "mount_tmpfs",
            "write_core_pattern",
            "read_masked_paths",
            "network",
        ],
    );
    let pid = node.pid(&pod.id).await;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let ordinal = pod.id.rsplit('#').next().unwrap();
    assert!(
        cgroups.contains(&format!("/{parent}/{ordinal}")),
        "{cgroups}"
    );
    if Path::new("/sys/fs/cgroup/pids").exists() {
        let max =
            std::fs::read_to_string(format!("/sys/fs/cgroup/pids/{parent}/{ordinal}/pids.max"))
                .unwrap();
        assert_eq!(max.trim(), "1024");
        let devices = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/devices/{parent}/{ordinal}/devices.list"
        ))
        .unwrap();
        assert!(
            !devices.contains("a *:* rwm") && devices.contains("c 1:3 rwm"),
            "{devices}"
        );
    }
    node.remove_running_pod(&pod.id).await;
    for controller in ["cpu", "cpuset", "memory", "pids", "devices"] {
        for dir in ["besteffort/poduid1", "besteffort", ""] {
            let base = format!(
                "/sys/fs/cgroup/{controller}/{}-kubepods/{dir}",
                node.cgroup_parent
            );
            let _ = std::fs::remove_dir(base);
        }
    }

    // hostNetwork, and a Localhost profile that answers chown with EACCES
    // (root holds CAP_CHOWN, so only the profile can refuse it).
    let pod = run_pod(&mut node, "hostnet", |_| {}).await;
    let config = hostile_config(
        &[],
        kubelet(
            cri::NamespaceMode::Node,
            profile(ProfileType::Localhost, "no-chown.json"),
        ),
    );
    create(&mut node, &pod, config).await.unwrap();
    node.start_container(&pod.id).await.unwrap();
    let found = probes(&mut node, &pod.id, "use_dev_null").await;
    assert_eq!(found["status"]["Seccomp"], "2");
    assert_eq!(found["chown"]["outcome"], "refused");
    assert!(
        found["chown"]["detail"]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "{}",
        found["chown"]
    );
    let pid = node.pid(&pod.id).await;
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        std::fs::read_link("/proc/self/ns/net").unwrap()
    );
    node.remove_running_pod(&pod.id).await;
}

#[tokio::test]
async fn the_runtimes_files_are_closed_to_other_users() {
    let mut node = node_with(&[]).await;
    let id = node.running_pod("files", A).await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let state = node.state_dir();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("state.redb")), 0o600);
    assert_eq!(mode(&node.run_dir().join("pods")), 0o700);
    let ordinal = id.rsplit('#').next().unwrap();
    assert_eq!(
        mode(&state.join(format!("containers/{ordinal}/spec.json"))),
        0o600
    );
    let log = node
        .container_status(&id)
        .await
        .unwrap()
        .status
        .unwrap()
        .log_path;
    assert_eq!(
        mode(Path::new(&log)) & 0o007,
        0,
        "log {log} is not world-readable"
    );
    // As another user of the node: the spec (environment), the database and
    // the image roots (setuid files) are out of reach.
    use std::os::unix::process::CommandExt;
    // The test's own root is 0700: open it, so only vimanad's modes guard.
    std::fs::set_permissions(node.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ls = |target: &Path| {
        std::process::Command::new("/bin/ls")
            .arg("-la")
            .arg(target)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    assert!(
        ls(node.root.path()).status.success(),
        "the control: uid 65534 lists the test root"
    );
    let spec = state.join(format!("containers/{ordinal}/spec.json"));
    for target in [
        &spec,
        &state.join("state.redb"),
        &state.join("images/rootfs"),
    ] {
        let out = ls(target);
        assert!(
            !out.status.success(),
            "uid 65534 reached {}",
            target.display()
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    node.remove_running_pod(&id).await;
}
