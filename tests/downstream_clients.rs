//! CRI clients nobody here wrote reach the downstream through vimanad
//! whatever `:authority` they send: Python grpcio with its default
//! authority for `unix:` targets lists both sides' pods and gets the
//! status of containerd's pod (forwarded by ID), through the `:authority`
//! rewriter and the router. (crictl is in tests/downstream.rs; the stock
//! kubelet, which sends its socket path, too.)

mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::process::Command;

use common::*;
use containerd::{prerequisites, Containerd};
use k8s_cri::v1 as cri;
use prost::Message;

const A: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");

/// Calls METHOD with the hex-encoded request, over grpcio without
/// `grpc.default_authority`; prints the reply in hex.
const GRPCIO: &str = r#"
import sys, grpc
channel = grpc.insecure_channel("unix://" + sys.argv[1])
call = channel.unary_unary("/runtime.v1.RuntimeService/" + sys.argv[2])
reply = call(bytes.fromhex(sys.argv[3]), timeout=20)
sys.stdout.write(reply.hex())
"#;

/// One grpcio call; `None` when this machine has no grpcio (skipped, or a
/// failure under CI=true).
fn grpcio<R: Message + Default>(
    socket: &std::path::Path,
    method: &str,
    req: &impl Message,
) -> Option<R> {
    let out = Command::new("python3")
        .args(["-c", GRPCIO])
        .arg(socket)
        .arg(method)
        .arg(hex::encode(req.encode_to_vec()))
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("No module named 'grpc'") {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "grpcio is missing (scripts/setup.sh installs it)"
        );
        eprintln!("SKIPPED: python3 has no grpcio (scripts/setup.sh installs it)");
        return None;
    }
    assert!(out.status.success(), "grpcio {method}: {stderr}");
    Some(R::decode(&hex::decode(out.stdout).unwrap()[..]).unwrap())
}

#[tokio::test]
async fn python_grpcio_reaches_containerds_pods_through_vimanad() {
    if !prerequisites(&[]) {
        return;
    }
    let ctrd = Containerd::start();
    let uri = ctrd.uri();
    let mut node = Node::start_with(&["--downstream-cri", &uri]).await;
    let comp = node.run_pod("comp", A).await;
    let theirs = node
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(ctrd.pod_config("plain")),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox of an ordinary pod")
        .into_inner()
        .pod_sandbox_id;
    let socket = node.socket();

    let Some(list) = grpcio::<cri::ListPodSandboxResponse>(
        &socket,
        "ListPodSandbox",
        &cri::ListPodSandboxRequest::default(),
    ) else {
        return;
    };
    let mut ids: Vec<String> = list.items.into_iter().map(|p| p.id).collect();
    ids.sort();
    let mut want = vec![comp.clone(), theirs.clone()];
    want.sort();
    assert_eq!(ids, want, "both sides' pods");

    let status: cri::PodSandboxStatusResponse = grpcio(
        &socket,
        "PodSandboxStatus",
        &cri::PodSandboxStatusRequest {
            pod_sandbox_id: theirs.clone(),
            verbose: false,
        },
    )
    .unwrap();
    let status = status.status.unwrap();
    assert_eq!(status.id, theirs);
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(status.metadata.unwrap().name, "plain");

    for id in [&theirs, &comp] {
        node.stop_pod(id).await.unwrap();
        node.remove_pod(id).await.unwrap();
    }
}
