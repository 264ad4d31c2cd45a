//! The hostile component's harness for the sandbox tests: a node with the
//! hostile image (example/src/bin/hostile.rs, packed as
//! example.com/vimana-hostile) imported, its pods, and the probe lines it
//! leaves in its CRI log.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::common::*;
use k8s_cri::v1 as cri;

pub const HOSTILE: &str = "example.com/vimana-hostile:1.0.0";
pub const A: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
pub const UNARY: &str = "/vimana.example.v1.Echo/Unary";

pub fn hostile_tar() -> PathBuf {
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
pub async fn node_with(extra: &[&str]) -> Node {
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

pub struct Pod {
    pub id: String,
    pub config: cri::PodSandboxConfig,
}

pub async fn run_pod(
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

pub fn hostile_config(
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

pub async fn create(
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
pub async fn hostile_pod(
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
pub async fn probes(node: &mut Node, id: &str, last: &str) -> HashMap<String, serde_json::Value> {
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
            if std::env::var_os("SANDBOX_DUMP").is_some() {
                eprintln!("{text}");
            }
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {last:?} probe in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn assert_refused(found: &HashMap<String, serde_json::Value>, names: &[&str]) {
    for name in names {
        let p = found
            .get(*name)
            .unwrap_or_else(|| panic!("probe {name} missing: {found:?}"));
        assert_eq!(p["outcome"], "refused", "{name} must be refused: {p}");
    }
}

pub fn assert_allowed(found: &HashMap<String, serde_json::Value>, names: &[&str]) {
    for name in names {
        let p = found
            .get(*name)
            .unwrap_or_else(|| panic!("probe {name} missing: {found:?}"));
        assert_eq!(p["outcome"], "allowed", "{name} must work: {p}");
    }
}

pub fn security(
    f: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> Option<cri::LinuxContainerSecurityContext> {
    let mut s = cri::LinuxContainerSecurityContext::default();
    f(&mut s);
    Some(s)
}

pub fn profile(
    kind: cri::security_profile::ProfileType,
    reference: &str,
) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: reference.into(),
    })
}
