//! Bad input from the kubelet gets a clear error and changes nothing: no
//! stray process, no half-made pod.

mod common;

use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;
use tonic::Code;

const A: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");

#[tokio::test]
async fn unknown_ids() {
    let mut node = Node::start().await;
    for id in ["example.com:x.Y@1.0.0#99", "garbage", ""] {
        assert_eq!(
            node.pod_status(id).await.unwrap_err().code(),
            Code::NotFound,
            "{id}"
        );
        assert_eq!(
            node.container_status(id).await.unwrap_err().code(),
            Code::NotFound,
            "{id}"
        );
        assert_eq!(
            node.start_container(id).await.unwrap_err().code(),
            Code::NotFound,
            "{id}"
        );
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: id.into(),
            config: Some(container_config("c", &[])),
            sandbox_config: None,
        };
        assert_eq!(
            node.runtime.create_container(req).await.unwrap_err().code(),
            Code::NotFound
        );
        // Stop and remove of what does not exist succeed (kubelet retries).
        node.stop_container(id, 1).await.unwrap();
        node.remove_container(id).await.unwrap();
        node.stop_pod(id).await.unwrap();
        node.remove_pod(id).await.unwrap();
    }
}

#[tokio::test]
async fn invalid_pods_are_refused_naming_the_label() {
    let mut node = Node::start().await;
    type Mutation = Box<dyn Fn(&mut cri::RunPodSandboxRequest)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|r| {
                r.config
                    .as_mut()
                    .unwrap()
                    .labels
                    .remove("vimana.host/domain");
            }),
            "vimana.host/domain",
        ),
        (
            Box::new(|r| {
                r.config
                    .as_mut()
                    .unwrap()
                    .labels
                    .remove("vimana.host/version");
            }),
            "vimana.host/version",
        ),
        (
            Box::new(|r| {
                r.config
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("vimana.host/domain".into(), "Bad_Domain".into());
            }),
            "vimana.host/domain",
        ),
        (
            Box::new(|r| {
                r.config
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("vimana.host/service".into(), "no/slash".into());
            }),
            "vimana.host/service",
        ),
        (
            Box::new(|r| {
                r.config
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("vimana.host/version".into(), "1.x".into());
            }),
            "vimana.host/version",
        ),
        (
            Box::new(|r| {
                r.config
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("vimana.host/other".into(), "1".into());
            }),
            "vimana.host/other",
        ),
        (
            Box::new(|r| r.runtime_handler = "runc".into()),
            "runtime handler",
        ),
        (
            Box::new(|r| r.config.as_mut().unwrap().metadata = None),
            "metadata",
        ),
        (Box::new(|r| r.config = None), "config"),
    ];
    for (mutate, needle) in cases {
        let mut req = run_pod_request("p", A);
        mutate(&mut req);
        let err = node.runtime.run_pod_sandbox(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{needle}: {err}");
        assert!(
            err.message().contains(needle),
            "{needle}: {}",
            err.message()
        );
    }
    let pods = node
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap();
    assert!(pods.into_inner().items.is_empty(), "nothing was made");
}

#[tokio::test]
async fn invalid_containers_are_refused() {
    let mut node = Node::start().await;
    let pod = node.run_pod("p", A).await;
    let sandbox = node.sandbox_config(&pod).await;
    let create = |config: cri::ContainerConfig| cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(config),
        sandbox_config: Some(sandbox.clone()),
    };
    let mut contradicting = container_config("c", &[]);
    contradicting
        .labels
        .insert("vimana.host/version".into(), "9.9.9".into());
    let err = node
        .runtime
        .create_container(create(contradicting))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("vimana.host/version"), "{err}");

    let mut missing = container_config("c", &[]);
    missing.image.as_mut().unwrap().image = "example.com/not-there:1".into();
    let err = node
        .runtime
        .create_container(create(missing))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("not-there"), "{err}");

    let status = node.pod_status(&pod).await.unwrap();
    assert!(
        status.containers_statuses.is_empty(),
        "no half-made container"
    );
    node.create(&pod, "c", &[]).await.unwrap();
}

/// After a failed start: the pod is consistent, EXITED with the reason,
/// nothing of the process is left, and the container may be retried.
async fn assert_failed_start(node: &mut Node, pod: &str, needle: &str) {
    let status = node.container_status(pod).await.unwrap();
    let s = status.status.unwrap();
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerExited as i32,
        "{s:?}"
    );
    assert_eq!(s.reason, "StartError");
    assert!(
        s.message.contains(needle),
        "{needle} not in {:?}",
        s.message
    );
    assert!(status
        .info
        .get("pid")
        .is_none_or(|pid| !is_alive(pid.parse().unwrap())));
    assert_eq!(
        node.pod_status(pod).await.unwrap().status.unwrap().state,
        cri::PodSandboxState::SandboxReady as i32
    );
    node.remove_container(pod).await.unwrap();
    node.stop_pod(pod).await.unwrap();
    node.remove_pod(pod).await.unwrap();
}

#[tokio::test]
async fn an_entrypoint_that_does_not_exist() {
    let mut node = Node::start().await;
    let pod = node.run_pod("p", A).await;
    let sandbox = node.sandbox_config(&pod).await;
    let mut config = container_config("c", &[]);
    config.command = vec!["/no/such/binary".into()];
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(config),
        sandbox_config: Some(sandbox),
    };
    node.runtime.create_container(req).await.unwrap();
    let err = node.start_container(&pod).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("/no/such/binary"), "{err}");
    assert_failed_start(&mut node, &pod, "/no/such/binary").await;
}

#[tokio::test]
async fn a_component_that_exits_at_once() {
    let mut node = Node::start().await;
    let pod = node.run_pod("p", A).await;
    node.create(&pod, "c", &[("EXAMPLE_EXIT_AT_START", "7")])
        .await
        .unwrap();
    let err = node.start_container(&pod).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("code 7"), "{err}");
    assert!(
        err.message().contains("last output"),
        "the error shows the component's last words: {err}"
    );
    let status = node.container_status(&pod).await.unwrap().status.unwrap();
    assert_eq!(status.exit_code, 7);
    assert_failed_start(&mut node, &pod, "code 7").await;
}

#[tokio::test]
async fn a_component_that_never_becomes_ready() {
    let mut node = Node::start_with(&["--start-timeout", "1s"]).await;
    let pod = node.run_pod("p", A).await;
    node.create(&pod, "c", &[("EXAMPLE_NOT_SERVING", "1")])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = node.start_container(&pod).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(err.message().contains("NOT_SERVING"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_failed_start(&mut node, &pod, "not ready").await;
}

#[tokio::test]
async fn a_component_without_health_service_is_ready_when_it_accepts() {
    let mut node = Node::start().await;
    let pod = node.run_pod("p", A).await;
    node.create(&pod, "c", &[("EXAMPLE_NO_HEALTH", "1")])
        .await
        .unwrap();
    node.start_container(&pod).await.unwrap();
    assert_eq!(
        node.state(&pod).await,
        cri::ContainerState::ContainerRunning
    );
}

#[tokio::test]
async fn a_socket_path_already_in_use() {
    let mut node = Node::start().await;
    let pod = node.run_pod("p", A).await;
    node.create(&pod, "c", &[]).await.unwrap();
    let socket = node.component_socket(&pod).await;
    let _squatter = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let err = node.start_container(&pod).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("in use"), "{err}");
    drop(_squatter);
    let _ = std::fs::remove_file(&socket);
    // The failure left a stopped container that starts once the path is free.
    node.start_container(&pod).await.unwrap();
    assert_eq!(
        node.state(&pod).await,
        cri::ContainerState::ContainerRunning
    );
}

#[tokio::test]
async fn concurrent_calls_on_one_pod() {
    let mut node = Node::start().await;
    let pod = node.run_pod("p", A).await;
    node.create(&pod, "c", &[]).await.unwrap();
    let mut a = node.runtime.clone();
    let mut b = node.runtime.clone();
    let req = || cri::StartContainerRequest {
        container_id: pod.clone(),
    };
    let (ra, rb) = tokio::join!(a.start_container(req()), b.start_container(req()));
    ra.unwrap();
    rb.unwrap();
    let pid = node.pid(&pod).await;
    let shims = count_processes_mentioning(node.root.path());
    assert_eq!(shims, 1, "one shim, one container");

    let stop = || cri::StopContainerRequest {
        container_id: pod.clone(),
        timeout: 5,
    };
    let remove = || cri::RemoveContainerRequest {
        container_id: pod.clone(),
    };
    let (rs, rr) = tokio::join!(a.stop_container(stop()), b.remove_container(remove()));
    rs.unwrap();
    // The remove either ran first (refused: running) or after the stop.
    if let Err(e) = rr {
        assert_eq!(e.code(), Code::FailedPrecondition);
    }
    assert!(!is_alive(pid));
}

fn count_processes_mentioning(path: &std::path::Path) -> usize {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<i32>().is_ok())
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(&needle) && cmdline.contains("shim")
        })
        .count()
}
