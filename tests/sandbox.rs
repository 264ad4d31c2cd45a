//! The sandbox, tried from the attacker's side: a hostile component
//! (example/src/bin/hostile.rs, packed as example.com/vimana-hostile)
//! probes its container for every escape issue 11 lists and reports each
//! in its CRI log; these tests assert what it was refused and what still
//! works, and attack the host side through its socket.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1 as cri;

const HOSTILE: &str = "example.com/vimana-hostile:1.0.0";
const A: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
const UNARY: &str = "/vimana.example.v1.Echo/Unary";

fn hostile_tar() -> PathBuf {
    let path = std::env::var_os("VIMANA_HOSTILE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/example/vimana-hostile.oci.tar")
        });
    assert!(
        path.exists(),
        "{} is missing: build it with scripts/build-example-image.sh",
        path.display()
    );
    path
}

/// A node with the hostile image imported beside the example one.
async fn node_with(extra: &[&str]) -> Node {
    let node = Node::start_with(extra).await;
    let out = std::process::Command::new(vimanad())
        .args(["image", "import"])
        .arg(hostile_tar())
        .arg("--state-dir")
        .arg(node.state_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    node
}

struct Pod {
    id: String,
    config: cri::PodSandboxConfig,
}

async fn run_pod(
    node: &mut Node,
    name: &str,
    tweak: impl FnOnce(&mut cri::PodSandboxConfig),
) -> Pod {
    let mut req = run_pod_request(name, A);
    let mut config = node.pod_config(name, A);
    tweak(&mut config);
    req.config = Some(config.clone());
    let id = node
        .runtime
        .run_pod_sandbox(req)
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    Pod { id, config }
}

fn hostile_config(
    envs: &[(&str, &str)],
    security: Option<cri::LinuxContainerSecurityContext>,
) -> cri::ContainerConfig {
    let mut config = container_config("hostile", envs);
    config.image = Some(cri::ImageSpec {
        image: HOSTILE.into(),
        ..Default::default()
    });
    config.linux = Some(cri::LinuxContainerConfig {
        resources: None,
        security_context: security,
    });
    config
}

async fn create(
    node: &mut Node,
    pod: &Pod,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    node.runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

/// RunPodSandbox + CreateContainer + StartContainer of the hostile image.
async fn hostile_pod(
    node: &mut Node,
    name: &str,
    envs: &[(&str, &str)],
    security: Option<cri::LinuxContainerSecurityContext>,
) -> String {
    let pod = run_pod(node, name, |_| {}).await;
    create(node, &pod, hostile_config(envs, security))
        .await
        .unwrap();
    node.start_container(&pod.id).await.unwrap();
    pod.id
}

/// The probe lines the component wrote to its CRI log, once `last` is in.
async fn probes(node: &mut Node, id: &str, last: &str) -> HashMap<String, serde_json::Value> {
    let path = node
        .container_status(id)
        .await
        .unwrap()
        .status
        .unwrap()
        .log_path;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let found: HashMap<String, serde_json::Value> = text
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .filter_map(|m| serde_json::from_str::<serde_json::Value>(m).ok())
            .filter_map(|v| Some((v["probe"].as_str()?.to_owned(), v)))
            .collect();
        if found.contains_key(last) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {last:?} probe in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_refused(found: &HashMap<String, serde_json::Value>, names: &[&str]) {
    for name in names {
        let p = found
            .get(*name)
            .unwrap_or_else(|| panic!("probe {name} missing: {found:?}"));
        assert_eq!(p["outcome"], "refused", "{name} must be refused: {p}");
    }
}

fn assert_allowed(found: &HashMap<String, serde_json::Value>, names: &[&str]) {
    for name in names {
        let p = found
            .get(*name)
            .unwrap_or_else(|| panic!("probe {name} missing: {found:?}"));
        assert_eq!(p["outcome"], "allowed", "{name} must work: {p}");
    }
}

fn security(
    f: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> Option<cri::LinuxContainerSecurityContext> {
    let mut s = cri::LinuxContainerSecurityContext::default();
    f(&mut s);
    Some(s)
}

fn profile(
    kind: cri::security_profile::ProfileType,
    reference: &str,
) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: reference.into(),
    })
}

#[tokio::test]
async fn a_default_pod_is_refused_every_escape() {
    let mut node = node_with(&["--pids-limit", "200"]).await;
    // Another pod, whose socket the hostile one tries to reach.
    let other = node.running_pod("other", A).await;
    let other_socket = node.component_socket(&other).await;
    let cri_socket = node.socket();
    let port = node.listen.port().to_string();
    let connect = format!("{},{}", cri_socket.display(), other_socket.display());
    let id = hostile_pod(
        &mut node,
        "hostile",
        &[
            ("HOSTILE_UDP_PORT", &port),
            ("HOSTILE_CONNECT", &connect),
            ("HOSTILE_FORKBOMB", "1"),
        ],
        None,
    )
    .await;
    let found = probes(&mut node, &id, "fork_bomb").await;
    assert_refused(
        &found,
        &[
            "mount_tmpfs",
            "sethostname",
            "mknod_block_tmp",
            "mknod_block_dev",
            "open_by_handle_at",
            "remount_proc_sys_rw",
            "remount_sys_rw",
            "remount_resolv_conf_rw",
            "remount_root_rw",
            "umount_proc_sys",
            "unshare_user_namespace",
            "unshare_mount_namespace",
            "init_module",
            "mount_cgroupfs",
            "write_core_pattern",
            "write_sysrq_trigger",
            "write_sys_kernel",
            "write_sys_net",
            "read_kcore",
            "leave_cgroup",
            "network",
            &format!("connect {}", cri_socket.display()),
            &format!("connect {}", other_socket.display()),
            "fork_bomb",
        ],
    );
    // What runc's default allows too, and what a component needs.
    assert_allowed(
        &found,
        &[
            "chown",
            "read_own_files",
            "write_writable_layer",
            "use_dev_null",
        ],
    );
    // The runtime default: runc's 14 capabilities, seccomp filter on.
    let status = &found["status"];
    assert_eq!(status["CapEff"], "00000000a80425fb", "{status}");
    assert_eq!(status["CapBnd"], "00000000a80425fb", "{status}");
    assert_eq!(status["CapInh"], "0000000000000000", "{status}");
    assert_eq!(status["Seccomp"], "2", "{status}");
    assert_eq!(status["NoNewPrivs"], "0", "{status}");

    // pids.max stopped the fork bomb below the limit.
    let bomb = found["fork_bomb"]["detail"].as_str().unwrap();
    let forked: u32 = bomb.split(' ').next().unwrap().parse().unwrap();
    assert!(forked < 200, "{bomb}");
    assert!(bomb.contains("Resource temporarily unavailable"), "{bomb}");

    // Its SO_REUSEPORT socket on the data-plane port is in its own network
    // namespace: the node's shards still take every new connection.
    let bind = &found["bind_data_plane_port"]["detail"];
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert!(
        !bind
            .as_str()
            .unwrap()
            .contains(&host_net.display().to_string()),
        "{bind}"
    );
    for i in 0..12 {
        let (code, _, err) =
            vimanad_call(&node, "example.com", UNARY, &["--text", &format!("c{i}")]);
        assert_eq!(code, 0, "call {i} on a new connection: {err}");
    }
    node.remove_running_pod(&id).await;
}

#[tokio::test]
async fn a_restricted_pod_gets_what_it_asked_and_setuid_does_not_escalate() {
    use cri::security_profile::ProfileType;
    let mut node = node_with(&[]).await;
    let restricted = |nnp: bool| {
        security(|s| {
            s.run_as_user = Some(cri::Int64Value { value: 1000 });
            s.run_as_group = Some(cri::Int64Value { value: 1000 });
            s.no_new_privs = nnp;
            s.capabilities = Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            });
            s.seccomp = profile(ProfileType::RuntimeDefault, "");
        })
    };
    let mut euids = Vec::new();
    for (name, nnp) in [("restricted", true), ("escalating", false)] {
        let id = hostile_pod(
            &mut node,
            name,
            &[("HOSTILE_SETUID", "/tmp/suid")],
            restricted(nnp),
        )
        .await;
        let found = probes(&mut node, &id, "use_dev_null").await;
        let status = &found["status"];
        assert_eq!(status["Uid"], "1000 1000 1000 1000", "{status}");
        assert_eq!(status["Gid"], "1000 1000 1000 1000", "{status}");
        for set in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
            assert_eq!(status[set], "0000000000000000", "{set}: {status}");
        }
        assert_eq!(status["Seccomp"], "2", "{status}");
        assert_eq!(
            status["NoNewPrivs"],
            if nnp { "1" } else { "0" },
            "{status}"
        );
        assert_refused(
            &found,
            &[
                "chown",
                "mount_tmpfs",
                "mknod_block_tmp",
                "write_core_pattern",
            ],
        );
        assert_allowed(&found, &["read_own_files", "write_writable_layer"]);

        // A setuid-root file, as an image would carry it, in its layer.
        let pid = node.pid(&id).await;
        let suid = PathBuf::from(format!("/proc/{pid}/root/tmp/suid"));
        let tmp = suid.with_extension("new");
        std::fs::copy(format!("/proc/{pid}/exe"), &tmp).unwrap();
        std::os::unix::fs::chown(&tmp, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::rename(&tmp, &suid).unwrap();
        let found = probes(&mut node, &id, "setuid_exec").await;
        euids.push(
            found["setuid_exec"]["euid"]
                .as_u64()
                .expect("ran the setuid file"),
        );
        node.remove_running_pod(&id).await;
    }
    // no_new_privs holds; without it the same file gives euid 0 (as under
    // runc), so the probe is real.
    assert_eq!(euids, [1000, 0]);
}

#[tokio::test]
async fn a_socket_symlink_fails_readiness_and_the_data_plane_answers_unavailable() {
    let mut node = node_with(&["--start-timeout", "2s"]).await;
    let cri_socket = node.socket().display().to_string();

    // Before it ever serves: readiness must not take the CRI socket's
    // answer for the component's.
    let pod = run_pod(&mut node, "early", |_| {}).await;
    create(
        &mut node,
        &pod,
        hostile_config(
            &[
                ("HOSTILE_SYMLINK", "start"),
                ("HOSTILE_SYMLINK_TO", &cri_socket),
            ],
            None,
        ),
    )
    .await
    .unwrap();
    let err = node.start_container(&pod.id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("symbolic link"), "{err:?}");

    // After serving for a while: new data-plane connections must not
    // follow it either.
    let id = hostile_pod(
        &mut node,
        "later",
        &[
            ("HOSTILE_SYMLINK", "later"),
            ("HOSTILE_SYMLINK_TO", &cri_socket),
        ],
        None,
    )
    .await;
    let (code, _, err) = vimanad_call(&node, "example.com", UNARY, &["--text", "before"]);
    assert_eq!(code, 0, "{err}");
    let pid = node.pid(&id).await;
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let found = probes(&mut node, &id, "symlink_socket").await;
    assert_allowed(&found, &["symlink_socket"]);
    for _ in 0..3 {
        let (code, out, err) = vimanad_call(&node, "example.com", UNARY, &["--text", "after"]);
        assert_eq!(code, 14, "UNAVAILABLE, not the CRI's answer: {out} {err}");
    }
    assert_eq!(node.state(&id).await, cri::ContainerState::ContainerRunning);
}

#[tokio::test]
async fn log_path_escapes_are_refused() {
    let mut node = node_with(&[]).await;
    let pod = run_pod(&mut node, "logs", |_| {}).await;
    let outside = node.root.path().join("escaped.log");
    for bad in ["../../escaped.log", "a/../../../escaped.log"] {
        let mut config = hostile_config(&[], None);
        config.log_path = bad.into();
        let err = create(&mut node, &pod, config).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err:?}");
        assert!(err.message().contains("log_path"), "{err:?}");
    }
    let mut config = hostile_config(&[], None);
    config.log_path = outside.display().to_string();
    let err = create(&mut node, &pod, config).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(!outside.exists());
    // Nothing was created.
    assert_eq!(
        node.container_status(&pod.id).await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // A symlink where the log goes is not followed by the root shim.
    let config = hostile_config(&[], None);
    let log = PathBuf::from(&pod.config.log_directory).join(&config.log_path);
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside, &log).unwrap();
    create(&mut node, &pod, config).await.unwrap();
    let err = node.start_container(&pod.id).await.unwrap_err();
    assert!(err.message().contains("log"), "{err:?}");
    assert!(!outside.exists(), "the shim wrote through the symlink");
}

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
        &["mount_tmpfs", "write_core_pattern", "read_kcore", "network"],
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
    node.remove_running_pod(&id).await;
}
