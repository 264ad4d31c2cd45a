//! The sandbox, tried from the attacker's side: a hostile component
//! (example/src/bin/hostile.rs) probes its container for every escape
//! issue 11 lists and reports each in its CRI log; these tests assert what
//! it was refused and what still works, and attack the host side through
//! its socket and log path. (What the runtime refuses to run, and the
//! kubelet's ordinary requests: sandbox_config.rs.)

mod common;
mod hostile;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::*;
use hostile::*;
use k8s_cri::v1 as cri;

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
            "read_masked_paths",
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
    assert_eq!(status["Groups"], "0", "{status}");
    assert_eq!(status["Seccomp"], "2", "{status}");
    assert_eq!(status["NoNewPrivs"], "0", "{status}");

    // pids.max stopped the fork bomb below the limit.
    let masked = found["read_masked_paths"]["detail"].as_str().unwrap();
    assert!(!masked.starts_with("present []"), "{masked}");
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
    // And it still serves: the probes cost it nothing it needs.
    assert_eq!(node.state(&id).await, cri::ContainerState::ContainerRunning);
    let socket = node.component_socket(&id).await;
    let mut client = vimana_example::echo_client_unix(&socket).await.unwrap();
    let reply = client
        .unary(vimana_example::pb::EchoRequest {
            message: "direct".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "direct");
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
        // Exactly its own group: none of the runtime's leak in.
        assert_eq!(status["Groups"], "1000", "{status}");
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

/// Beyond runc's default: a pod that asks for a user namespace (CRI
/// UserNamespace mode POD, `hostUsers: false`, with the kubelet's maps) is
/// root only inside it: on the node it is the mapped uid, and still serves.
#[tokio::test]
async fn a_user_namespace_pod_is_root_only_inside() {
    let mut node = node_with(&[]).await;
    let map = |host_id| cri::IdMapping {
        host_id,
        container_id: 0,
        length: 65536,
    };
    let userns = security(|s| {
        s.namespace_options = Some(cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: cri::NamespaceMode::Pod as i32,
                uids: vec![map(165536)],
                gids: vec![map(165536)],
            }),
            ..Default::default()
        })
    });
    let id = hostile_pod(&mut node, "userns", &[], userns).await;
    let found = probes(&mut node, &id, "use_dev_null").await;
    let status = &found["status"];
    assert_eq!(status["Uid"], "0 0 0 0", "root inside: {status}");
    assert_eq!(status["CapEff"], "00000000a80425fb", "{status}");
    assert_refused(
        &found,
        &[
            "mount_tmpfs",
            "sethostname",
            "mknod_block_tmp",
            "open_by_handle_at",
            "write_core_pattern",
            "remount_proc_sys_rw",
            "network",
        ],
    );
    assert_allowed(&found, &["read_own_files", "write_writable_layer"]);
    let pid = node.pid(&id).await;
    let host = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = host.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().nth(1), Some("165536"), "{uid}");
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", "165536", "65536"]
    );
    let (code, _, err) = vimanad_call(&node, "example.com", UNARY, &["--text", "userns"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.state(&id).await, cri::ContainerState::ContainerRunning);
    node.remove_running_pod(&id).await;

    // Maps that keep the node's root are refused.
    let pod = run_pod(&mut node, "rootmap", |_| {}).await;
    let rootmap = security(|s| {
        s.namespace_options = Some(cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: cri::NamespaceMode::Pod as i32,
                uids: vec![map(0)],
                gids: vec![map(0)],
            }),
            ..Default::default()
        })
    });
    let err = create(&mut node, &pod, hostile_config(&[], rootmap))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("userns_options"), "{err:?}");
}
