//! The read-only calls: statuses and lists, answered from the store without
//! waiting on any pod's operation lock.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use crate::control::lifecycle::Lifecycle;
use crate::control::runtime::{parse_pod_id, Runtime};
use crate::control::state::{now_nanos, Container, ContainerId, ContainerPhase, Pod};
use crate::control::Error;

impl Runtime {
    pub fn pod_sandbox_status(&self, pod_id: &str) -> Result<cri::PodSandboxStatusResponse, Error> {
        let not_found = || Error::NotFound(format!("pod sandbox {pod_id:?} not found"));
        let id = parse_pod_id(pod_id).ok_or_else(not_found)?;
        let store = self.store();
        let pod = store.pods.get(&id).ok_or_else(not_found)?;
        let status = self.sandbox_status(pod);
        let mut info = HashMap::new();
        info.insert("lifecycle".to_owned(), pod.lifecycle.to_string());
        info.insert(
            "socket".to_owned(),
            crate::control::container::socket_path(&pod.socket_dir)
                .display()
                .to_string(),
        );
        Ok(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: pod
                .containers
                .iter()
                .map(|c| container_status(pod, c))
                .collect(),
            timestamp: now_nanos(),
        })
    }

    /// A pod's sandbox status (also carried by container events).
    pub(super) fn sandbox_status(&self, pod: &Pod) -> cri::PodSandboxStatus {
        cri::PodSandboxStatus {
            id: pod.id.to_string(),
            metadata: Some(pod.metadata()),
            state: sandbox_state(pod) as i32,
            created_at: pod.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: self.config.pod_ip.clone(),
                additional_ips: Vec::new(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(cri::NamespaceOption {
                        // The mode the pod asked for (the kubelet starts a
                        // new sandbox when it differs from the pod's
                        // hostNetwork); the data plane reaches components
                        // through their socket either way.
                        network: network_mode(&pod.config) as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                }),
            }),
            labels: pod.config.labels.clone(),
            annotations: pod.config.annotations.clone(),
            runtime_handler: pod.runtime_handler.clone(),
        }
    }

    pub fn list_pod_sandbox(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let filter = filter.unwrap_or_default();
        let store = self.store();
        store
            .pods
            .values()
            .filter(|pod| filter.id.is_empty() || pod.id.to_string() == filter.id)
            .filter(|pod| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == sandbox_state(pod) as i32)
            })
            .filter(|pod| selects(&filter.label_selector, &pod.config.labels))
            .map(|pod| cri::PodSandbox {
                id: pod.id.to_string(),
                metadata: Some(pod.metadata()),
                state: sandbox_state(pod) as i32,
                created_at: pod.created_at,
                labels: pod.config.labels.clone(),
                annotations: pod.config.annotations.clone(),
                runtime_handler: pod.runtime_handler.clone(),
            })
            .collect()
    }

    pub fn container_status(
        &self,
        container_id: &str,
    ) -> Result<cri::ContainerStatusResponse, Error> {
        let not_found = || Error::NotFound(format!("container {container_id:?} not found"));
        let id = ContainerId::parse(container_id).ok_or_else(not_found)?;
        let store = self.store();
        let (pod, container) = store.container(&id).ok_or_else(not_found)?;
        let mut info = HashMap::new();
        info.insert("lifecycle".to_owned(), pod.lifecycle.to_string());
        if let Some(p) = &container.process {
            info.insert("pid".to_owned(), p.pid.to_string());
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(container_status(pod, container)),
            info,
        })
    }

    pub fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        let filter = filter.unwrap_or_default();
        let store = self.store();
        store
            .pods
            .values()
            .flat_map(|pod| pod.containers.iter().map(move |c| (pod, c)))
            .filter(|(pod, c)| filter.id.is_empty() || pod.container_id(c).to_string() == filter.id)
            .filter(|(pod, _)| {
                filter.pod_sandbox_id.is_empty() || pod.id.to_string() == filter.pod_sandbox_id
            })
            .filter(|(_, c)| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == container_state(c) as i32)
            })
            .filter(|(_, c)| selects(&filter.label_selector, &c.config.labels))
            .map(|(pod, c)| cri::Container {
                id: pod.container_id(c).to_string(),
                pod_sandbox_id: pod.id.to_string(),
                metadata: c.config.metadata.clone(),
                image: Some(image_spec(c)),
                image_ref: c.image.id.clone(),
                state: container_state(c) as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image.id.clone(),
            })
            .collect()
    }
}

fn network_mode(config: &cri::PodSandboxConfig) -> cri::NamespaceMode {
    let asked = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map_or(0, |n| n.network);
    match cri::NamespaceMode::try_from(asked) {
        Ok(cri::NamespaceMode::Node) => cri::NamespaceMode::Node,
        _ => cri::NamespaceMode::Pod,
    }
}

fn sandbox_state(pod: &Pod) -> cri::PodSandboxState {
    match pod.lifecycle {
        Lifecycle::Killed => cri::PodSandboxState::SandboxNotready,
        _ => cri::PodSandboxState::SandboxReady,
    }
}

fn container_state(c: &Container) -> cri::ContainerState {
    match c.phase {
        ContainerPhase::Created => cri::ContainerState::ContainerCreated,
        ContainerPhase::Running => cri::ContainerState::ContainerRunning,
        ContainerPhase::Exited => cri::ContainerState::ContainerExited,
    }
}

pub(super) fn container_status(pod: &Pod, c: &Container) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: pod.container_id(c).to_string(),
        metadata: c.config.metadata.clone(),
        state: container_state(c) as i32,
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.image.id.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: crate::control::container::mounts::status(&c.config),
        log_path: c
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: c
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| cri::ContainerResources {
                linux: Some(r),
                windows: None,
            }),
        image_id: c.image.id.clone(),
        user: None,
    }
}

/// The image as the kubelet names it: the name it asked for, or the
/// image's first name when it asked by ID (as it does: it resolves names
/// to IDs before CreateContainer). `image_ref` carries the ID.
fn image_spec(c: &Container) -> cri::ImageSpec {
    let mut spec = c.config.image.clone().unwrap_or_default();
    let by_id = spec.image == c.image.id || spec.image.starts_with("sha256:");
    if by_id {
        if let Some(name) = c.image.repo_tags.first().or(c.image.repo_digests.first()) {
            spec.image = name.clone();
        }
    }
    spec
}

/// Every selector label must be present with the same value.
fn selects(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
