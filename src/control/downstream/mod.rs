//! The downstream CRI runtime: pods that are not components go to
//! containerd (`serve --downstream-cri`), through one router in front of
//! vimanad's own CRI services.
//!
//! Owns the routing rules (which runtime a new pod, an ID, an image call
//! belongs to), the downstream client and the merging of both sides'
//! answers. It calls vimanad's side only through its CRI services
//! (`control::cri::Cri`), never the runtime underneath, and never touches
//! anything of the downstream's but through its CRI socket: vimanad
//! starting, stopping or recovering leaves containerd's pods alone.
//! Without a downstream, the router hands every call to vimanad unchanged.

mod client;
mod images;
mod lists;
mod owner;
mod router;
mod stale;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;

use super::cri::Cri;
pub use owner::{owner_of, side_of_new_pod, Side};

/// `serve --downstream-cri` and its companions.
#[derive(Debug, Clone)]
pub struct Settings {
    /// As given: `unix:///run/containerd/containerd.sock`.
    pub uri: String,
    /// The socket path in it.
    pub socket: PathBuf,
    /// Deadline of read calls (Status, List*, *Status, stats).
    pub timeout: Duration,
    /// Pods on handler `""` carrying the `vimana.host/*` labels are
    /// components (`--default-handler-components`).
    pub components_on_default: bool,
}

/// The socket path of a `--downstream-cri` value: `unix:///ABS/PATH`, or an
/// absolute path.
pub fn parse_uri(uri: &str) -> Result<PathBuf, String> {
    let path = uri.strip_prefix("unix://").unwrap_or(uri);
    if !path.starts_with('/') {
        return Err(format!(
            "{uri:?}: expected unix:///ABSOLUTE/PATH (a CRI runtime's Unix socket)"
        ));
    }
    Ok(PathBuf::from(path))
}

/// The CRI services the kubelet talks to: vimanad's own, and the
/// downstream's when one is configured.
#[derive(Clone)]
pub struct Router {
    vimana: Cri,
    /// vimanad's runtime handler.
    handler: String,
    down: Option<Arc<Downstream>>,
}

/// The downstream and the last good answers of its lists.
struct Downstream {
    client: client::Client,
    components_on_default: bool,
    pods: stale::LastGood<Vec<cri::PodSandbox>>,
    containers: stale::LastGood<Vec<cri::Container>>,
    container_stats: stale::LastGood<Vec<cri::ContainerStats>>,
    pod_stats: stale::LastGood<Vec<cri::PodSandboxStats>>,
    images: stale::LastGood<Vec<cri::Image>>,
    fs: stale::LastGood<cri::ImageFsInfoResponse>,
}

impl Router {
    /// Must run inside the tokio runtime: it probes the downstream in the
    /// background (the client's channel itself is lazy).
    pub fn new(vimana: Cri, handler: &str, downstream: Option<&Settings>) -> Self {
        let down = downstream.map(|settings| {
            tracing::info!(
                downstream = %settings.uri,
                timeout = ?settings.timeout,
                components_on_default = settings.components_on_default,
                "pods of other runtime handlers go to the downstream CRI runtime"
            );
            Arc::new(Downstream {
                client: client::Client::new(settings),
                components_on_default: settings.components_on_default,
                pods: stale::LastGood::new(),
                containers: stale::LastGood::new(),
                container_stats: stale::LastGood::new(),
                pod_stats: stale::LastGood::new(),
                images: stale::LastGood::new(),
                fs: stale::LastGood::new(),
            })
        });
        let router = Self {
            vimana,
            handler: handler.to_owned(),
            down,
        };
        if router.down.is_some() {
            let probe = router.clone();
            tokio::spawn(async move { probe.probe().await });
        }
        router
    }

    /// Logs the downstream's name and version, or that it cannot be
    /// reached yet (vimanad serves its own pods regardless).
    async fn probe(&self) {
        let Some(d) = &self.down else { return };
        let mut client = d.client.runtime();
        let call = client.version(cri::VersionRequest::default());
        match d
            .client
            .call(
                "Version",
                d.client
                    .deadline(&tonic::Request::new(()), client::Kind::Read),
                call,
            )
            .await
        {
            Ok(v) => {
                d.client.set_name(&v.runtime_name);
                tracing::info!(
                    downstream = %d.client.uri(),
                    runtime = %v.runtime_name,
                    version = %v.runtime_version,
                    "downstream CRI runtime reached"
                )
            }
            Err(e) => tracing::warn!(
                downstream = %d.client.uri(),
                error = %e.message(),
                "downstream CRI runtime not reachable yet; vimanad's pods are served regardless"
            ),
        }
    }

    /// The downstream, when it owns `id`.
    fn owner(&self, id: &str) -> Option<&Downstream> {
        match (&self.down, owner_of(id)) {
            (Some(d), Side::Downstream) => Some(d),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downstream_uris_parse() {
        assert_eq!(
            parse_uri("unix:///run/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(parse_uri("/a.sock").unwrap(), PathBuf::from("/a.sock"));
        assert!(parse_uri("tcp://1.2.3.4:1").is_err());
        assert!(parse_uri("unix://relative.sock").is_err());
    }
}
