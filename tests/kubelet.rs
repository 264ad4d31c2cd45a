//! The stock kubelet (v1.28.4, ../shared/tools/kubelet) runs a component as
//! a static pod on vimanad: it gets past Version and Status although it
//! sends its socket path as `:authority`, the pod serves HTTP/3, a killed
//! component is restarted the kubelet's way (a new container, the previous
//! one listable with its log, restartCount 1), `kill -9` of vimanad changes
//! nothing for the pod, and deleting the manifest stops and removes it.

mod common;

use std::time::Duration;

use common::kubelet::Kubelet;
use common::*;
use k8s_cri::v1 as cri;
use serde_json::{json, Value};

const UNARY: &str = "/vimana.example.v1.Echo/Unary";

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels:
    vimana.host/domain: example.com
    vimana.host/service: {SERVICE}
    vimana.host/version: 1.0.0
spec:
  restartPolicy: Always
  containers:
  - name: echo
    image: {IMAGE}
    imagePullPolicy: Never
"
    )
}

/// The kubelet's container status of the pod's one container.
fn container(pod: Option<&Value>) -> Option<&Value> {
    pod?["status"]["containerStatuses"].as_array()?.first()
}

fn running(pod: Option<&Value>) -> bool {
    container(pod).is_some_and(|c| c["state"]["running"].is_object() && c["ready"] == true)
}

/// The CRI container ID behind a kubelet `containerID` (`vimanad://ID`).
fn cri_id(status: &Value) -> String {
    let id = status["containerID"].as_str().unwrap();
    id.strip_prefix("vimanad://")
        .unwrap_or_else(|| panic!("{id}"))
        .to_owned()
}

/// One unary call over HTTP/3 (aioquic): the pod that served it.
fn served_by(node: &Node, message: &str) -> String {
    let echo = hex_of(&vimana_example::pb::EchoRequest {
        message: message.into(),
        ..Default::default()
    });
    let calls = json!([{ "path": UNARY, "messages_hex": [echo] }]);
    let r = &aioquic(node, "example.com", calls, false)[0];
    assert_eq!(r["grpc_status"], 0, "{r}");
    let reply = replies(r);
    assert_eq!(reply[0].message, message);
    reply[0].served_by.clone()
}

#[tokio::test]
async fn the_stock_kubelet_runs_restarts_and_removes_a_static_pod() {
    let mut node = Node::start().await;
    let Some(kubelet) = Kubelet::start(&node.socket()) else {
        return;
    };
    kubelet.add_manifest("echo", &manifest("echo"));
    let pod = kubelet
        .wait_pod("echo", Duration::from_secs(60), "running", running)
        .await
        .unwrap();
    let first = container(Some(&pod)).unwrap().clone();
    assert_eq!(first["restartCount"], 0, "{first}");
    let first_id = cri_id(&first);

    // The pod vimanad runs is the kubelet's, and it serves.
    let sandboxes = node
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    let sandbox = sandboxes[0].id.clone();
    assert_eq!(first_id, sandbox, "the first container's ID is the pod's");
    assert_eq!(
        sandboxes[0].metadata.as_ref().unwrap().uid,
        pod["metadata"]["uid"].as_str().unwrap()
    );
    assert_eq!(served_by(&node, "first"), sandbox);

    // kill -9 of the component: the kubelet makes a new container (attempt
    // 1, its own ID) in the same sandbox.
    let pid = node.pid(&first_id).await;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let pod = kubelet
        .wait_pod("echo", Duration::from_secs(60), "restarted", |p| {
            running(p) && container(p).is_some_and(|c| c["restartCount"] == 1)
        })
        .await
        .unwrap();
    let second = container(Some(&pod)).unwrap().clone();
    let second_id = cri_id(&second);
    assert_eq!(second_id, format!("{sandbox}.1"));
    assert_eq!(
        second["lastState"]["terminated"]["exitCode"], 137,
        "{second}"
    );
    assert_eq!(served_by(&node, "second"), sandbox);
    let second_pid = node.pid(&second_id).await;

    // The previous container stays listable over CRI, exited, with its log.
    let old = node
        .container_status(&first_id)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(old.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(old.exit_code, 137);
    assert!(old.finished_at > 0);
    assert!(
        old.log_path.ends_with("echo/0.log"),
        "the kubelet's log path of attempt 0: {}",
        old.log_path
    );
    assert!(std::path::Path::new(&old.log_path).exists());
    let new = node
        .container_status(&second_id)
        .await
        .unwrap()
        .status
        .unwrap();
    assert!(new.log_path.ends_with("echo/1.log"), "{}", new.log_path);
    assert_eq!(new.metadata.unwrap().attempt, 1);
    assert_eq!(new.image.unwrap().image, IMAGE, "the image's name");

    // kill -9 of vimanad while the kubelet runs changes nothing for the
    // pod: the component keeps running, and once vimanad is back the
    // kubelet sees the same container and HTTP/3 reaches it again.
    node.kill9();
    assert!(is_alive(second_pid));
    node.restart().await;
    assert_eq!(served_by(&node, "runtime back"), sandbox);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pod = kubelet
        .wait_pod("echo", Duration::from_secs(30), "unchanged", running)
        .await
        .unwrap();
    let after = container(Some(&pod)).unwrap();
    assert_eq!(after["restartCount"], 1, "{after}");
    assert_eq!(cri_id(after), second_id);
    assert_eq!(node.pid(&second_id).await, second_pid);

    // Deleting the manifest stops the pod and (the kubelet's garbage
    // collection runs once a minute) removes it.
    kubelet.remove_manifest("echo");
    kubelet
        .wait_pod("echo", Duration::from_secs(60), "deleted", |p| p.is_none())
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while is_alive(second_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the kubelet never stopped the pod\n{}",
            kubelet.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    loop {
        let left = node
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kubelet never removed the pod: {left:?}\n{}",
            kubelet.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let containers = node
        .runtime
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "{containers:?}");
}
