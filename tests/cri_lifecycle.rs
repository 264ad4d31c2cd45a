//! The whole pod lifecycle over the real CRI socket: several pods of two
//! components, every idempotent repeat, every invalid transition, the List
//! filters, and the component really serving gRPC once StartContainer returns.

mod common;

use common::*;
use k8s_cri::v1 as cri;
use tonic::Code;
use vimana_example::pb;

const A: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
const B: (&str, &str, &str) = ("example.org", SERVICE, "2.1.0");

#[tokio::test]
async fn pods_of_two_components_through_the_whole_lifecycle() {
    let mut node = Node::start().await;

    // RunPodSandbox, and its retry.
    let a0 = node.run_pod("a0", A).await;
    assert_eq!(a0, "example.com:vimana.example.v1.Echo@1.0.0#0");
    assert_eq!(
        node.run_pod("a0", A).await,
        a0,
        "a retry returns the same pod"
    );
    let mut changed = run_pod_request("a0", A);
    changed.config.as_mut().unwrap().hostname = "other".into();
    let err = node.runtime.run_pod_sandbox(changed).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    let a1 = node.run_pod("a1", A).await;
    let b0 = node.run_pod("b0", B).await;
    assert_eq!(a1, "example.com:vimana.example.v1.Echo@1.0.0#1");
    assert_eq!(b0, "example.org:vimana.example.v1.Echo@2.1.0#2");
    assert_eq!(
        node.pod_status(&a0).await.unwrap().status.unwrap().state,
        cri::PodSandboxState::SandboxReady as i32
    );

    // StartContainer before CreateContainer: there is no container.
    assert_eq!(
        node.start_container(&a0).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        node.container_status(&a0).await.unwrap_err().code(),
        Code::NotFound
    );

    // CreateContainer, and its retries.
    for pod in [&a0, &a1, &b0] {
        assert_eq!(
            &node.create(pod, "component", &[]).await.unwrap(),
            pod,
            "container ID = pod ID"
        );
        assert_eq!(
            &node.create(pod, "component", &[]).await.unwrap(),
            pod,
            "retry"
        );
    }
    let err = node
        .create(&a0, "component", &[("X", "1")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    assert_eq!(node.state(&a0).await, cri::ContainerState::ContainerCreated);

    // Invalid transitions change nothing: a higher attempt beside a
    // container that has not exited (one pod runs one container).
    let sandbox = node.sandbox_config(&a0).await;
    let mut config = container_config("component", &[]);
    config.metadata.as_mut().unwrap().attempt = 1;
    let err = node
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: a0.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    assert_eq!(node.state(&a0).await, cri::ContainerState::ContainerCreated);

    // StartContainer, and its retry.
    for pod in [&a0, &a1, &b0] {
        node.start_container(pod).await.unwrap();
        node.start_container(pod).await.unwrap();
        assert_eq!(node.state(pod).await, cri::ContainerState::ContainerRunning);
    }

    // What ContainerStatus reports.
    let status = node.container_status(&a0).await.unwrap().status.unwrap();
    assert_eq!(status.id, a0);
    assert_eq!(status.metadata.as_ref().unwrap().name, "component");
    assert!(
        status.created_at > 0 && status.started_at >= status.created_at,
        "{status:?}"
    );
    assert_eq!(status.finished_at, 0);
    assert_eq!(status.image.as_ref().unwrap().image, IMAGE);
    assert!(
        status.image_ref.starts_with("sha256:"),
        "{}",
        status.image_ref
    );
    assert_eq!(status.labels["container"], "component");
    assert_eq!(status.annotations["kind"], "example");
    assert_eq!(
        status.log_path,
        node.log_dir()
            .join("a0/component/0.log")
            .display()
            .to_string()
    );
    let pod_status = node.pod_status(&a0).await.unwrap().status.unwrap();
    assert_eq!(pod_status.network.unwrap().ip, "127.0.0.1");
    assert_eq!(pod_status.labels["vimana.host/domain"], "example.com");
    assert_eq!(pod_status.annotations["note"], "pod a0");
    assert_eq!(pod_status.runtime_handler, "vimana");

    // Each component serves gRPC on its socket, as its own pod.
    for pod in [&a0, &a1, &b0] {
        let socket = node.component_socket(pod).await;
        let mut client = pb::echo_client::EchoClient::new(uds_channel(socket).await);
        let reply = client
            .unary(pb::EchoRequest {
                message: "hi".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.message, "hi");
        assert_eq!(&reply.served_by, pod);
    }

    // StopContainer (graceful: the component exits 0 on SIGTERM), and retry.
    let pid = node.pid(&a0).await;
    node.stop_container(&a0, 10).await.unwrap();
    node.stop_container(&a0, 10).await.unwrap();
    assert!(!is_alive(pid), "the component process is gone");
    let status = node.container_status(&a0).await.unwrap().status.unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 0);
    assert_eq!(status.reason, "Completed");
    assert!(status.finished_at >= status.started_at);

    // Stopped may start again.
    node.start_container(&a0).await.unwrap();
    assert_eq!(node.state(&a0).await, cri::ContainerState::ContainerRunning);
    node.stop_container(&a0, 0).await.unwrap();
    let status = node.container_status(&a0).await.unwrap().status.unwrap();
    assert_eq!(status.exit_code, 137, "timeout 0 means SIGKILL: {status:?}");

    // RemoveContainer, retry; Removed may be created again.
    node.remove_container(&a0).await.unwrap();
    node.remove_container(&a0).await.unwrap();
    assert_eq!(
        node.container_status(&a0).await.unwrap_err().code(),
        Code::NotFound
    );
    // The new container has its own ID (IDs are never reused: a late
    // RemoveContainer of the old one must not hit it).
    let again = node.create(&a0, "component", &[]).await.unwrap();
    assert_eq!(again, format!("{a0}.1"));
    node.start_container(&again).await.unwrap();

    // StopPodSandbox from Running kills the container; then the kubelet's
    // usual order: RemoveContainer, RemovePodSandbox.
    let pid = node.pid(&again).await;
    node.stop_pod(&a0).await.unwrap();
    node.stop_pod(&a0).await.unwrap();
    assert!(!is_alive(pid));
    let pod_status = node.pod_status(&a0).await.unwrap().status.unwrap();
    assert_eq!(
        pod_status.state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(
        node.state(&again).await,
        cri::ContainerState::ContainerExited
    );
    assert_eq!(
        node.create(&a0, "component", &[]).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        node.start_container(&again).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    node.remove_container(&again).await.unwrap();
    let err = node.create(&a0, "again", &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    node.remove_pod(&a0).await.unwrap();
    node.remove_pod(&a0).await.unwrap();
    assert_eq!(
        node.pod_status(&a0).await.unwrap_err().code(),
        Code::NotFound
    );

    // StopPodSandbox straight from Initiated, and from Created.
    let a2 = node.run_pod("a2", A).await;
    node.stop_pod(&a2).await.unwrap();
    node.remove_pod(&a2).await.unwrap();
    let a3 = node.run_pod("a3", A).await;
    node.create(&a3, "component", &[]).await.unwrap();
    node.stop_pod(&a3).await.unwrap();
    node.remove_pod(&a3).await.unwrap();

    // Removal is forced (CRI): RemoveContainer of a running container, and
    // RemovePodSandbox of a running pod, stop and remove it.
    let a4 = node.running_pod("a4", A).await;
    let pid = node.pid(&a4).await;
    node.remove_container(&a4).await.unwrap();
    assert!(!is_alive(pid));
    assert_eq!(
        node.container_status(&a4).await.unwrap_err().code(),
        Code::NotFound
    );
    node.remove_pod(&a4).await.unwrap();
    let a5 = node.running_pod("a5", A).await;
    let pid = node.pid(&a5).await;
    node.remove_pod(&a5).await.unwrap();
    assert!(!is_alive(pid));
    assert_eq!(
        node.pod_status(&a5).await.unwrap_err().code(),
        Code::NotFound
    );

    // The others kept serving throughout; stop them the kubelet's way.
    for pod in [&a1, &b0] {
        assert_eq!(node.state(pod).await, cri::ContainerState::ContainerRunning);
        node.stop_container(pod, 5).await.unwrap();
        node.stop_pod(pod).await.unwrap();
        node.remove_container(pod).await.unwrap();
        node.remove_pod(pod).await.unwrap();
    }
    let all = node
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap();
    assert!(all.into_inner().items.is_empty());
}

#[tokio::test]
async fn list_calls_honour_their_filters() {
    let mut node = Node::start().await;
    let a0 = node.running_pod("a0", A).await;
    let a1 = node.run_pod("a1", A).await;
    node.create(&a1, "component", &[]).await.unwrap();
    let b0 = node.running_pod("b0", B).await;
    node.stop_container(&b0, 5).await.unwrap();
    node.stop_pod(&b0).await.unwrap();

    let pods = |filter: cri::PodSandboxFilter| {
        let mut rt = node.runtime.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_pod_sandbox(cri::ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        pods(Default::default()).await,
        vec![a0.clone(), a1.clone(), b0.clone()]
    );
    assert_eq!(
        pods(cri::PodSandboxFilter {
            id: a1.clone(),
            ..Default::default()
        })
        .await,
        vec![a1.clone()]
    );
    let ready = cri::PodSandboxStateValue {
        state: cri::PodSandboxState::SandboxReady as i32,
    };
    assert_eq!(
        pods(cri::PodSandboxFilter {
            state: Some(ready),
            ..Default::default()
        })
        .await,
        vec![a0.clone(), a1.clone()]
    );
    let notready = cri::PodSandboxStateValue {
        state: cri::PodSandboxState::SandboxNotready as i32,
    };
    assert_eq!(
        pods(cri::PodSandboxFilter {
            state: Some(notready),
            ..Default::default()
        })
        .await,
        vec![b0.clone()]
    );
    let selector = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        pods(cri::PodSandboxFilter {
            label_selector: selector(&[("vimana.host/domain", "example.com")]),
            ..Default::default()
        })
        .await,
        vec![a0.clone(), a1.clone()]
    );
    assert_eq!(
        pods(cri::PodSandboxFilter {
            label_selector: selector(&[("vimana.host/domain", "example.com"), ("app", "a1")]),
            ..Default::default()
        })
        .await,
        vec![a1.clone()]
    );
    assert!(pods(cri::PodSandboxFilter {
        id: "nope".into(),
        ..Default::default()
    })
    .await
    .is_empty());

    let containers = |filter: cri::ContainerFilter| {
        let mut rt = node.runtime.clone();
        async move {
            let mut ids: Vec<(String, i32)> = rt
                .list_containers(cri::ListContainersRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .containers
                .into_iter()
                .map(|c| (c.id, c.state))
                .collect();
            ids.sort();
            ids
        }
    };
    use cri::ContainerState::*;
    let all = containers(Default::default()).await;
    assert_eq!(
        all,
        vec![
            (a0.clone(), ContainerRunning as i32),
            (a1.clone(), ContainerCreated as i32),
            (b0.clone(), ContainerExited as i32)
        ]
    );
    let state = |s: cri::ContainerState| Some(cri::ContainerStateValue { state: s as i32 });
    assert_eq!(
        containers(cri::ContainerFilter {
            state: state(ContainerRunning),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        containers(cri::ContainerFilter {
            state: state(ContainerExited),
            ..Default::default()
        })
        .await[0]
            .0,
        b0
    );
    assert_eq!(
        containers(cri::ContainerFilter {
            pod_sandbox_id: a1.clone(),
            ..Default::default()
        })
        .await[0]
            .0,
        a1
    );
    assert_eq!(
        containers(cri::ContainerFilter {
            id: a0.clone(),
            ..Default::default()
        })
        .await[0]
            .0,
        a0
    );
    assert_eq!(
        containers(cri::ContainerFilter {
            label_selector: selector(&[("container", "component")]),
            ..Default::default()
        })
        .await
        .len(),
        3
    );
    assert!(containers(cri::ContainerFilter {
        label_selector: selector(&[("container", "x")]),
        ..Default::default()
    })
    .await
    .is_empty());
    assert!(containers(cri::ContainerFilter {
        pod_sandbox_id: "x".into(),
        ..Default::default()
    })
    .await
    .is_empty());
}

#[tokio::test]
async fn the_component_serves_all_four_call_kinds_once_started() {
    let mut node = Node::start().await;
    let pod = node.running_pod("a0", A).await;
    // No sleep, no retry: StartContainer returned, so it serves now.
    let socket = node.component_socket(&pod).await;
    let mut client = pb::echo_client::EchoClient::new(uds_channel(socket.clone()).await);

    let reply = client
        .unary(pb::EchoRequest {
            message: "one".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "one");

    let mut stream = client
        .server_stream(pb::StreamRequest {
            message: "s".into(),
            count: 3,
            interval_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        seen.push(reply.sequence);
    }
    assert_eq!(seen, vec![0, 1, 2]);

    let requests = (0..4).map(|i| pb::EchoRequest {
        message: i.to_string(),
        ..Default::default()
    });
    let reply = client
        .client_stream(futures::stream::iter(requests.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.message.contains("0123"), "{reply:?}");

    let mut replies = client
        .bidi(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(reply) = replies.message().await.unwrap() {
        assert_eq!(reply.message, n.to_string());
        n += 1;
    }
    assert_eq!(n, 4);

    let mut health = tonic_health::pb::health_client::HealthClient::new(uds_channel(socket).await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test]
async fn a_crashing_component_is_exited_with_its_code_at_once() {
    let mut node = Node::start().await;
    let pod = node.running_pod("a0", A).await;
    let pid = node.pid(&pod).await;
    let socket = node.component_socket(&pod).await;
    let mut client = pb::echo_client::EchoClient::new(uds_channel(socket).await);
    let err = client
        .unary(pb::EchoRequest {
            crash: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    let status = node
        .wait_state(&pod, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(status.exit_code, vimana_example::CRASH_EXIT_CODE);
    assert_eq!(status.reason, "Error");
    assert!(status.finished_at > status.started_at);
    assert!(!is_alive(pid));
    // A crashed container is stopped: it may be started again.
    node.start_container(&pod).await.unwrap();
    assert_eq!(
        node.state(&pod).await,
        cri::ContainerState::ContainerRunning
    );

    // Killed from outside by a signal: 128 + 9.
    let pid = node.pid(&pod).await;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let status = node
        .wait_state(&pod, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(status.exit_code, 137);
}

/// The kubelet's restart: after the container exits, CreateContainer with
/// a higher attempt makes a new container with its own ID; the exited one
/// stays listable with its exit code, log and finish time until
/// RemoveContainer; only the newest may start; routing follows it.
#[tokio::test]
async fn restarts_make_a_new_container_and_keep_the_old_one() {
    let mut node = Node::start().await;
    let pod = node.running_pod("r", A).await;
    let first = pod.clone();
    let pid = node.pid(&first).await;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let exited = node
        .wait_state(&first, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(exited.exit_code, 137);

    // Not while the old one could run again from the same attempt with
    // another config; yes with a higher attempt.
    let second = node.create_attempt(&pod, 1).await.unwrap();
    assert_eq!(second, format!("{pod}.1"));
    assert_eq!(node.create_attempt(&pod, 1).await.unwrap(), second, "retry");
    assert_eq!(
        node.create_attempt(&pod, 2).await.unwrap_err().code(),
        Code::AlreadyExists,
        "one container at a time beside one that has not exited"
    );
    let old = node.container_status(&first).await.unwrap().status.unwrap();
    assert_eq!(old.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(old.exit_code, 137);
    assert!(old.finished_at >= old.started_at && old.finished_at > 0);
    assert!(
        old.log_path.ends_with("r/component/0.log"),
        "{}",
        old.log_path
    );
    assert!(std::path::Path::new(&old.log_path).exists());

    let listed = |node: &mut Node| {
        let mut rt = node.runtime.clone();
        let pod = pod.clone();
        async move {
            let mut ids: Vec<(String, i32)> = rt
                .list_containers(cri::ListContainersRequest {
                    filter: Some(cri::ContainerFilter {
                        pod_sandbox_id: pod,
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner()
                .containers
                .into_iter()
                .map(|c| (c.id, c.state))
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        listed(&mut node).await,
        vec![
            (first.clone(), cri::ContainerState::ContainerExited as i32),
            (second.clone(), cri::ContainerState::ContainerCreated as i32),
        ]
    );
    let statuses = node.pod_status(&pod).await.unwrap().containers_statuses;
    assert_eq!(statuses.len(), 2);

    // The old one cannot start again; the new one starts and is routed.
    assert_eq!(
        node.start_container(&first).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    node.start_container(&second).await.unwrap();
    let socket = node.component_socket(&pod).await;
    let mut client = pb::echo_client::EchoClient::new(uds_channel(socket).await);
    let reply = client
        .unary(pb::EchoRequest {
            message: "again".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.served_by, pod);
    let r = &aioquic(
        &node,
        "example.com",
        serde_json::json!([{ "path": "/vimana.example.v1.Echo/Unary",
            "messages_hex": [hex_of(&pb::EchoRequest { message: "h3".into(), ..Default::default() })] }]),
        false,
    )[0];
    assert_eq!(r["grpc_status"], 0, "{r}");
    assert_eq!(replies(r)[0].served_by, pod);

    // The kubelet's GC removes the old one later; the new one keeps
    // running; stopping the old one does nothing.
    node.stop_container(&first, 0).await.unwrap();
    assert_eq!(
        node.state(&second).await,
        cri::ContainerState::ContainerRunning
    );
    node.remove_container(&first).await.unwrap();
    assert_eq!(
        node.container_status(&first).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        listed(&mut node).await,
        vec![(second.clone(), cri::ContainerState::ContainerRunning as i32)]
    );

    // And again: a third attempt after a clean stop.
    node.stop_container(&second, 5).await.unwrap();
    let third = node.create_attempt(&pod, 2).await.unwrap();
    assert_eq!(third, format!("{pod}.2"));
    node.start_container(&third).await.unwrap();
    node.remove_pod(&pod).await.unwrap();
    assert!(listed(&mut node).await.is_empty());
}

/// GetContainerEvents streams every container's lifecycle with its pod's
/// status, for the kubelet's evented PLEG.
#[tokio::test]
async fn container_events_follow_the_lifecycle() {
    let mut node = Node::start().await;
    let mut events = node
        .runtime
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let pod = node.running_pod("e", A).await;
    node.stop_container(&pod, 5).await.unwrap();
    let second = node.create_attempt(&pod, 1).await.unwrap();
    node.remove_pod(&pod).await.unwrap();
    use cri::ContainerEventType::*;
    let expected = [
        (pod.clone(), ContainerCreatedEvent),
        (pod.clone(), ContainerStartedEvent),
        (pod.clone(), ContainerStoppedEvent),
        (second.clone(), ContainerCreatedEvent),
        (pod.clone(), ContainerDeletedEvent),
        (second.clone(), ContainerDeletedEvent),
    ];
    for (id, kind) in expected {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.message())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        assert_eq!(
            (event.container_id.as_str(), event.container_event_type),
            (id.as_str(), kind as i32),
            "{event:?}"
        );
        let status = event.pod_sandbox_status.unwrap();
        assert_eq!(status.id, pod);
        if kind == ContainerStartedEvent {
            let c = &event.containers_statuses[0];
            assert_eq!(c.state, cri::ContainerState::ContainerRunning as i32);
        }
        if kind == ContainerStoppedEvent {
            let c = &event.containers_statuses[0];
            assert_eq!(c.state, cri::ContainerState::ContainerExited as i32);
        }
    }
}

/// `vimanad cri inspect ID | true`: a closed pipe ends it quietly.
#[tokio::test]
async fn cli_output_to_a_closed_pipe_does_not_panic() {
    let mut node = Node::start().await;
    let pod = node.running_pod("p", A).await;
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} cri --cri-socket {} inspect '{pod}' | (exec 0<&-; sleep 0.5)",
            vimanad(),
            node.socket().display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}

/// Two partial UpdateContainerResources: the second keeps what the first
/// set, in the status and in the cgroup alike.
#[tokio::test]
async fn partial_resource_updates_merge_in_status_and_cgroup() {
    let mut node = Node::start().await;
    let pod = node.running_pod("u", A).await;
    let update = |linux: cri::LinuxContainerResources| {
        let mut rt = node.runtime.clone();
        let pod = pod.clone();
        async move {
            rt.update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: pod,
                linux: Some(linux),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    };
    update(cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    })
    .await;
    update(cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 20_000,
        ..Default::default()
    })
    .await;
    let status = node.container_status(&pod).await.unwrap().status.unwrap();
    let held = status.resources.unwrap().linux.unwrap();
    assert_eq!(held.memory_limit_in_bytes, 64 << 20);
    assert_eq!((held.cpu_period, held.cpu_quota), (100_000, 20_000));
    let group = format!(
        "/{}/{}",
        node.cgroup_parent,
        pod.rsplit('#').next().unwrap()
    );
    let read = |path: String| std::fs::read_to_string(path).unwrap().trim().to_owned();
    if std::path::Path::new("/sys/fs/cgroup/memory").exists() {
        assert_eq!(
            read(format!(
                "/sys/fs/cgroup/memory{group}/memory.limit_in_bytes"
            )),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read(format!("/sys/fs/cgroup/cpu{group}/cpu.cfs_quota_us")),
            "20000"
        );
    } else {
        assert_eq!(
            read(format!("/sys/fs/cgroup{group}/memory.max")),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read(format!("/sys/fs/cgroup{group}/cpu.max")),
            "20000 100000"
        );
    }
}
