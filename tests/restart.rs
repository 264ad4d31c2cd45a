//! Nothing lost: the runtime restarts (after `kill -9` or SIGTERM) and
//! knows every pod it had, with its components still the same processes,
//! serving HTTP/3 again.

mod common;

use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;
use serde_json::json;
use vimana_example::pb;

const V1: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
const UNARY: &str = "/vimana.example.v1.Echo/Unary";

/// Everything the kubelet can ask about, as JSON (timestamps of the answer
/// itself left out).
async fn everything(node: &mut Node) -> serde_json::Value {
    let mut pods = node
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    pods.sort_by(|a, b| a.id.cmp(&b.id));
    let mut containers = node
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    containers.sort_by(|a, b| a.id.cmp(&b.id));
    let mut statuses = Vec::new();
    for pod in &pods {
        let mut status = node.pod_status(&pod.id).await.unwrap();
        status.timestamp = 0;
        let container = node.container_status(&pod.id).await.ok().map(|c| c.status);
        statuses.push(json!({ "pod": status, "container": container }));
    }
    json!({ "pods": pods, "containers": containers, "statuses": statuses })
}

/// A node with pods in several states: running (two), stopped, created,
/// initiated.
async fn busy_node() -> (Node, Vec<String>) {
    let mut node = Node::start().await;
    let running = node.running_pod("running", V1).await;
    let other = node
        .running_pod("other", ("example.org", SERVICE, "2.0.0"))
        .await;
    let stopped = node.running_pod("stopped", V1).await;
    node.stop_container(&stopped, 5).await.unwrap();
    let created = node.run_pod("created", V1).await;
    node.create(&created, "c", &[]).await.unwrap();
    let initiated = node.run_pod("initiated", V1).await;
    (node, vec![running, other, stopped, created, initiated])
}

#[tokio::test]
async fn kill_9_in_the_middle_of_traffic_loses_nothing() {
    let (mut node, ids) = busy_node().await;
    let before = everything(&mut node).await;
    let pids = [node.pid(&ids[0]).await, node.pid(&ids[1]).await];

    // Calls in flight (slow ones) and a CRI call racing the kill.
    let listen = node.listen;
    let traffic = std::thread::spawn(move || {
        let slow = hex::encode(prost::Message::encode_to_vec(&pb::EchoRequest {
            sleep_ms: 400,
            ..Default::default()
        }));
        let _ = std::process::Command::new(vimanad())
            .args([
                "call",
                "--connect",
                &listen.to_string(),
                "https://example.com/vimana.example.v1.Echo/Unary",
            ])
            .args(["--data-hex", &slow, "--timeout", "3s"])
            .output();
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut racing = node.runtime.clone();
    let racer = tokio::spawn(async move {
        racing
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
    });
    node.kill9();
    let _ = racer.await;
    traffic.join().unwrap();
    for pid in pids {
        assert!(is_alive(pid), "components outlive the runtime");
    }

    node.restart().await;
    let after = everything(&mut node).await;
    assert_eq!(before, after, "the kubelet sees exactly what it saw");
    assert_eq!(
        [node.pid(&ids[0]).await, node.pid(&ids[1]).await],
        pids,
        "the same processes, re-adopted"
    );

    let r = &aioquic(
        &node,
        "example.com",
        json!([{ "path": UNARY, "messages_hex": [hex_of(&pb::EchoRequest { message: "again".into(), ..Default::default() })] }]),
        false,
    )[0];
    assert_eq!(replies(r)[0].served_by, ids[0], "{r}");
    let (code, out, err) = vimanad_call(
        &node,
        "example.org",
        UNARY,
        &["--text", "hi", "--output", "text"],
    );
    assert_eq!((code, out.trim()), (0, "hi"), "{err}");

    // The re-adopted container stops, exits and is recorded like any other.
    node.stop_container(&ids[0], 5).await.unwrap();
    assert!(!is_alive(pids[0]));
    let status = node
        .container_status(&ids[0])
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 0);
    // New pods do not reuse an ID.
    let fresh = node.run_pod("fresh", V1).await;
    assert!(fresh.ends_with("#5"), "{fresh}");
}

#[tokio::test]
async fn a_graceful_restart_loses_nothing() {
    let (mut node, ids) = busy_node().await;
    let before = everything(&mut node).await;
    let pid = node.pid(&ids[0]).await;
    assert!(node.stop_gracefully().success());
    assert!(!node.socket().exists(), "the CRI socket is removed");
    assert!(
        is_alive(pid),
        "containers belong to the kubelet: they keep running"
    );
    node.restart().await;
    assert_eq!(before, everything(&mut node).await);
    let (code, _, err) = vimanad_call(&node, "example.com", UNARY, &["--text", "x"]);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn a_container_that_died_while_the_runtime_was_down() {
    let mut node = Node::start().await;
    let pod = node.running_pod("p", V1).await;
    let pid = node.pid(&pod).await;
    node.kill9();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    while is_alive(pid) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.restart().await;
    let status = node.container_status(&pod).await.unwrap().status.unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 137);
    let (code, _, _) = vimanad_call(&node, "example.com", UNARY, &["--text", "x"]);
    assert_eq!(code, 14, "not routable");
    // The kubelet's next step works: start it again.
    node.start_container(&pod).await.unwrap();
    let (code, _, err) = vimanad_call(&node, "example.com", UNARY, &["--text", "x"]);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn a_crash_between_two_calls_of_a_lifecycle() {
    let mut node = Node::start().await;
    let pod = node.run_pod("p", V1).await;
    node.kill9();
    node.restart().await;
    // The kubelet retries RunPodSandbox: same pod.
    assert_eq!(node.run_pod("p", V1).await, pod);
    node.create(&pod, "c", &[]).await.unwrap();
    node.kill9();
    node.restart().await;
    // ... and CreateContainer: the same container, then it goes on.
    node.create(&pod, "c", &[]).await.unwrap();
    node.start_container(&pod).await.unwrap();
    assert_eq!(
        node.state(&pod).await,
        cri::ContainerState::ContainerRunning
    );
    node.kill9();
    node.restart().await;
    node.start_container(&pod).await.unwrap();
    node.stop_container(&pod, 5).await.unwrap();
    node.stop_pod(&pod).await.unwrap();
    node.remove_container(&pod).await.unwrap();
    node.remove_pod(&pod).await.unwrap();
    node.kill9();
    node.restart().await;
    let pods = node
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "removal is durable too");
}

#[tokio::test]
async fn sigterm_lets_calls_in_flight_finish() {
    let mut node = Node::start().await;
    node.running_pod("p", V1).await;
    let listen = node.listen;
    let call = std::thread::spawn(move || {
        let slow = hex::encode(prost::Message::encode_to_vec(&pb::EchoRequest {
            message: "finished".into(),
            sleep_ms: 1000,
            ..Default::default()
        }));
        std::process::Command::new(vimanad())
            .args([
                "call",
                "--connect",
                &listen.to_string(),
                "https://example.com/vimana.example.v1.Echo/Unary",
            ])
            .args(["--data-hex", &slow, "--output", "text", "--timeout", "10s"])
            .output()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(node.stop_gracefully().success());
    let out = call.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "finished");
    assert!(node.log().contains("shard stopped"));
}

#[tokio::test]
async fn an_unwritable_state_database_fails_the_call_and_the_retry_succeeds() {
    let mut node = Node::start().await;
    let pod = node.run_pod("p", V1).await;
    // Make the database file unwritable even for root.
    let db = node.state_dir().join("state.redb");
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&db)
            .status()
    };
    match chattr("+i") {
        Ok(s) if s.success() => {}
        _ => {
            eprintln!("chattr +i is not available on this filesystem: skipping");
            return;
        }
    }
    let err = node.create(&pod, "c", &[]).await.unwrap_err();
    let _ = chattr("-i");
    assert_eq!(err.code(), tonic::Code::Internal, "{err}");
    assert!(err.message().contains("state database"), "{err}");
    // The kubelet retries once the disk is writable again: it succeeds,
    // and the state survives a crash.
    node.create(&pod, "c", &[]).await.unwrap();
    node.kill9();
    node.restart().await;
    assert_eq!(
        node.state(&pod).await,
        cri::ContainerState::ContainerCreated
    );
}

/// A pod the kubelet restarted (an exited container and the running one)
/// comes back whole after `kill -9` of the runtime: both listed, the new
/// one re-adopted and routed, the next attempt still gets a fresh ID.
#[tokio::test]
async fn a_restarted_pod_keeps_all_its_containers() {
    let mut node = Node::start().await;
    let pod = node.running_pod("r", V1).await;
    let pid = node.pid(&pod).await;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    node.wait_state(&pod, cri::ContainerState::ContainerExited)
        .await;
    let second = node.create_attempt(&pod, 1).await.unwrap();
    node.start_container(&second).await.unwrap();
    let second_pid = node.pid(&second).await;
    let before = everything(&mut node).await;

    node.kill9();
    node.restart().await;
    assert_eq!(everything(&mut node).await, before);
    assert_eq!(node.pid(&second).await, second_pid, "the same process");
    let old = node.container_status(&pod).await.unwrap().status.unwrap();
    assert_eq!(old.exit_code, 137);
    let echo = hex::encode(prost::Message::encode_to_vec(&pb::EchoRequest {
        message: "back".into(),
        ..Default::default()
    }));
    let r = &aioquic(
        &node,
        "example.com",
        json!([{ "path": UNARY, "messages_hex": [echo] }]),
        false,
    )[0];
    assert_eq!(r["grpc_status"], 0, "{r}");
    assert_eq!(replies(r)[0].served_by, pod);

    node.stop_container(&second, 5).await.unwrap();
    assert_eq!(
        node.create_attempt(&pod, 2).await.unwrap(),
        format!("{pod}.2")
    );
}
