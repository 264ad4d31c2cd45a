//! `RuntimeService` of the router: each call to the owner of its ID; new
//! pods by runtime handler; Version, Status and RuntimeConfig answered for
//! vimanad with the downstream's view added. Merged lists are in
//! `lists.rs`.

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Code, Request, Response, Status};

use super::client::Kind;
use super::{Router, Side};

type Reply<T> = Result<Response<T>, Status>;

/// Forwards `$req` to the downstream `$d` as `$method`, with a `$kind`
/// deadline.
macro_rules! forward {
    ($d:expr, $req:expr, $kind:expr, $method:ident, $what:literal) => {{
        let d = $d;
        let deadline = d.client.deadline(&$req, $kind);
        let mut client = d.client.runtime();
        d.client
            .call($what, deadline, client.$method($req.into_inner()))
            .await
            .map(Response::new)
    }};
}

#[tonic::async_trait]
impl RuntimeService for Router {
    async fn version(&self, req: Request<cri::VersionRequest>) -> Reply<cri::VersionResponse> {
        self.vimana.version(req).await
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Reply<cri::RunPodSandboxResponse> {
        let Some(d) = &self.down else {
            return self.vimana.run_pod_sandbox(req).await;
        };
        let mut req = req;
        let r = req.get_ref();
        let empty = Default::default();
        let labels = r.config.as_ref().map_or(&empty, |c| &c.labels);
        match super::side_of_new_pod(
            &r.runtime_handler,
            labels,
            &self.handler,
            d.components_on_default,
        ) {
            Side::Vimana => {
                // A component on `""` (--default-handler-components) runs
                // under vimanad's own handler.
                req.get_mut().runtime_handler = self.handler.clone();
                self.vimana.run_pod_sandbox(req).await
            }
            Side::Downstream => forward!(d, req, Kind::Mutate, run_pod_sandbox, "RunPodSandbox"),
        }
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Reply<cri::StopPodSandboxResponse> {
        match self.owner(&req.get_ref().pod_sandbox_id) {
            None => self.vimana.stop_pod_sandbox(req).await,
            Some(d) => idempotent(forward!(
                d,
                req,
                Kind::Mutate,
                stop_pod_sandbox,
                "StopPodSandbox"
            )),
        }
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Reply<cri::RemovePodSandboxResponse> {
        match self.owner(&req.get_ref().pod_sandbox_id) {
            None => self.vimana.remove_pod_sandbox(req).await,
            Some(d) => idempotent(forward!(
                d,
                req,
                Kind::Mutate,
                remove_pod_sandbox,
                "RemovePodSandbox"
            )),
        }
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Reply<cri::PodSandboxStatusResponse> {
        match self.owner(&req.get_ref().pod_sandbox_id) {
            None => self.vimana.pod_sandbox_status(req).await,
            Some(d) => forward!(d, req, Kind::Read, pod_sandbox_status, "PodSandboxStatus"),
        }
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Reply<cri::ListPodSandboxResponse> {
        self.merged_pods(req).await
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Reply<cri::CreateContainerResponse> {
        match self.owner(&req.get_ref().pod_sandbox_id) {
            None => self.vimana.create_container(req).await,
            Some(d) => forward!(d, req, Kind::Mutate, create_container, "CreateContainer"),
        }
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Reply<cri::StartContainerResponse> {
        match self.owner(&req.get_ref().container_id) {
            None => self.vimana.start_container(req).await,
            Some(d) => forward!(d, req, Kind::Mutate, start_container, "StartContainer"),
        }
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Reply<cri::StopContainerResponse> {
        match self.owner(&req.get_ref().container_id) {
            None => self.vimana.stop_container(req).await,
            Some(d) => idempotent(forward!(
                d,
                req,
                Kind::Mutate,
                stop_container,
                "StopContainer"
            )),
        }
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Reply<cri::RemoveContainerResponse> {
        match self.owner(&req.get_ref().container_id) {
            None => self.vimana.remove_container(req).await,
            Some(d) => idempotent(forward!(
                d,
                req,
                Kind::Mutate,
                remove_container,
                "RemoveContainer"
            )),
        }
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Reply<cri::ListContainersResponse> {
        self.merged_containers(req).await
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Reply<cri::ContainerStatusResponse> {
        match self.owner(&req.get_ref().container_id) {
            None => self.vimana.container_status(req).await,
            Some(d) => forward!(d, req, Kind::Read, container_status, "ContainerStatus"),
        }
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Reply<cri::UpdateContainerResourcesResponse> {
        match self.owner(&req.get_ref().container_id) {
            None => self.vimana.update_container_resources(req).await,
            Some(d) => forward!(
                d,
                req,
                Kind::Mutate,
                update_container_resources,
                "UpdateContainerResources"
            ),
        }
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Reply<cri::ReopenContainerLogResponse> {
        match self.owner(&req.get_ref().container_id) {
            None => self.vimana.reopen_container_log(req).await,
            Some(d) => forward!(
                d,
                req,
                Kind::Mutate,
                reopen_container_log,
                "ReopenContainerLog"
            ),
        }
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Reply<cri::ExecSyncResponse> {
        match self.owner(&req.get_ref().container_id) {
            None => self.vimana.exec_sync(req).await,
            Some(d) => forward!(d, req, Kind::Mutate, exec_sync, "ExecSync"),
        }
    }

    /// The downstream's streaming URL, unchanged: the kubelet (or crictl)
    /// connects to containerd's streaming server itself.
    async fn exec(&self, req: Request<cri::ExecRequest>) -> Reply<cri::ExecResponse> {
        match self.owner(&req.get_ref().container_id) {
            None => self.vimana.exec(req).await,
            Some(d) => forward!(d, req, Kind::Read, exec, "Exec"),
        }
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> Reply<cri::AttachResponse> {
        match self.owner(&req.get_ref().container_id) {
            None => self.vimana.attach(req).await,
            Some(d) => forward!(d, req, Kind::Read, attach, "Attach"),
        }
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Reply<cri::PortForwardResponse> {
        match self.owner(&req.get_ref().pod_sandbox_id) {
            None => self.vimana.port_forward(req).await,
            Some(d) => forward!(d, req, Kind::Read, port_forward, "PortForward"),
        }
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Reply<cri::ContainerStatsResponse> {
        match self.owner(&req.get_ref().container_id) {
            None => self.vimana.container_stats(req).await,
            Some(d) => forward!(d, req, Kind::Read, container_stats, "ContainerStats"),
        }
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Reply<cri::ListContainerStatsResponse> {
        self.merged_container_stats(req).await
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Reply<cri::PodSandboxStatsResponse> {
        match self.owner(&req.get_ref().pod_sandbox_id) {
            None => self.vimana.pod_sandbox_stats(req).await,
            Some(d) => forward!(d, req, Kind::Read, pod_sandbox_stats, "PodSandboxStats"),
        }
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Reply<cri::ListPodSandboxStatsResponse> {
        self.merged_pod_stats(req).await
    }

    /// Both sides: the pod CIDR is the downstream's CNI's business, and
    /// the kubelet retries a failure.
    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Reply<cri::UpdateRuntimeConfigResponse> {
        let Some(d) = &self.down else {
            return self.vimana.update_runtime_config(req).await;
        };
        let inner = req.get_ref().clone();
        let mine = self.vimana.update_runtime_config(req).await?;
        let mut client = d.client.runtime();
        let deadline = d.client.deadline(&Request::new(()), Kind::Read);
        d.client
            .call(
                "UpdateRuntimeConfig",
                deadline,
                client.update_runtime_config(inner),
            )
            .await?;
        Ok(mine)
    }

    /// vimanad's RuntimeReady and NetworkReady decide (its pods keep
    /// working while the downstream is down); the downstream's conditions
    /// follow as `Downstream<Type>` with its reasons, or one
    /// `DownstreamRuntimeReady` false naming why it cannot be reached.
    async fn status(&self, req: Request<cri::StatusRequest>) -> Reply<cri::StatusResponse> {
        let Some(d) = &self.down else {
            return self.vimana.status(req).await;
        };
        let verbose = req.get_ref().verbose;
        let mut client = d.client.runtime();
        let deadline = d.client.deadline(&req, Kind::Read);
        let down = d.client.call(
            "Status",
            deadline,
            client.status(cri::StatusRequest { verbose }),
        );
        let (mine, down) = tokio::join!(self.vimana.status(req), down);
        let mut mine = mine?.into_inner();
        merge_status(&mut mine, down);
        Ok(Response::new(mine))
    }

    async fn checkpoint_container(
        &self,
        req: Request<cri::CheckpointContainerRequest>,
    ) -> Reply<cri::CheckpointContainerResponse> {
        match self.owner(&req.get_ref().container_id) {
            None => self.vimana.checkpoint_container(req).await,
            Some(d) => forward!(
                d,
                req,
                Kind::Mutate,
                checkpoint_container,
                "CheckpointContainer"
            ),
        }
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;

    /// Both sides' events in one stream, only when both serve them: a
    /// failure makes the kubelet fall back to relisting, which sees both.
    async fn get_container_events(
        &self,
        req: Request<cri::GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        let mine = self.vimana.get_container_events(req).await?.into_inner();
        let Some(d) = &self.down else {
            return Ok(Response::new(mine));
        };
        let mut client = d.client.runtime();
        let deadline = d.client.deadline(&Request::new(()), Kind::Read);
        let theirs = d
            .client
            .call(
                "GetContainerEvents",
                deadline,
                client.get_container_events(cri::GetEventsRequest {}),
            )
            .await?;
        let both = futures::stream::select(mine, theirs);
        Ok(Response::new(Box::pin(both)))
    }

    async fn list_metric_descriptors(
        &self,
        req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Reply<cri::ListMetricDescriptorsResponse> {
        self.merged_metric_descriptors(req).await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Reply<cri::ListPodSandboxMetricsResponse> {
        self.merged_pod_metrics(req).await
    }

    /// vimanad's answer; a downstream that disagrees on the cgroup driver
    /// is logged (its pods would be accounted under another hierarchy).
    async fn runtime_config(
        &self,
        req: Request<cri::RuntimeConfigRequest>,
    ) -> Reply<cri::RuntimeConfigResponse> {
        let mine = self.vimana.runtime_config(req).await?;
        if let Some(d) = &self.down {
            let mut client = d.client.runtime();
            let deadline = d.client.deadline(&Request::new(()), Kind::Read);
            let theirs = d
                .client
                .call(
                    "RuntimeConfig",
                    deadline,
                    client.runtime_config(cri::RuntimeConfigRequest {}),
                )
                .await;
            check_cgroup_driver(d.client.uri(), mine.get_ref(), theirs);
        }
        Ok(mine)
    }
}

/// Stop and Remove of a pod or container that is gone succeed, as CRI
/// says they must (containerd 1.6 answers NotFound for an absent one;
/// vimanad's own side already succeeds).
fn idempotent<T: Default>(reply: Reply<T>) -> Reply<T> {
    match reply {
        Err(e) if e.code() == Code::NotFound => Ok(Response::new(T::default())),
        other => other,
    }
}

/// Appends the downstream's conditions, handlers and info to vimanad's.
pub(super) fn merge_status(
    mine: &mut cri::StatusResponse,
    down: Result<cri::StatusResponse, Status>,
) {
    let conditions = &mut mine.status.get_or_insert_with(Default::default).conditions;
    match down {
        Ok(theirs) => {
            for c in theirs.status.map(|s| s.conditions).unwrap_or_default() {
                conditions.push(cri::RuntimeCondition {
                    r#type: format!("Downstream{}", c.r#type),
                    ..c
                });
            }
            for h in theirs.runtime_handlers {
                if !mine.runtime_handlers.iter().any(|m| m.name == h.name) {
                    mine.runtime_handlers.push(h);
                }
            }
            for (k, v) in theirs.info {
                mine.info.insert(format!("downstream.{k}"), v);
            }
        }
        Err(e) => conditions.push(cri::RuntimeCondition {
            r#type: "DownstreamRuntimeReady".into(),
            status: false,
            reason: "DownstreamUnavailable".into(),
            message: e.message().to_owned(),
        }),
    }
}

fn check_cgroup_driver(
    uri: &str,
    mine: &cri::RuntimeConfigResponse,
    theirs: Result<cri::RuntimeConfigResponse, Status>,
) {
    let driver = |r: &cri::RuntimeConfigResponse| r.linux.as_ref().map(|l| l.cgroup_driver);
    match theirs {
        Ok(theirs) if driver(&theirs) != driver(mine) => tracing::warn!(
            downstream = %uri,
            vimanad = ?driver(mine),
            theirs = ?driver(&theirs),
            "the downstream CRI runtime uses another cgroup driver than vimanad: set both to cgroupfs"
        ),
        Ok(_) => {}
        // containerd 1.6 predates RuntimeConfig.
        Err(e) if e.code() == Code::Unimplemented => {}
        Err(e) => tracing::debug!(downstream = %uri, error = %e.message(), "RuntimeConfig"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(kind: &str, status: bool, reason: &str) -> cri::RuntimeCondition {
        cri::RuntimeCondition {
            r#type: kind.into(),
            status,
            reason: reason.into(),
            message: String::new(),
        }
    }

    fn ours() -> cri::StatusResponse {
        cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![
                    condition("RuntimeReady", true, ""),
                    condition("NetworkReady", true, ""),
                ],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn stopping_or_removing_what_is_gone_succeeds() {
        let gone: Reply<cri::StopContainerResponse> = Err(Status::not_found("no such container"));
        assert!(idempotent(gone).is_ok());
        let down: Reply<cri::StopContainerResponse> = Err(Status::unavailable("down"));
        assert_eq!(idempotent(down).unwrap_err().code(), Code::Unavailable);
    }

    #[test]
    fn downstream_conditions_are_added_under_their_own_names() {
        let mut mine = ours();
        let theirs = cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![
                    condition("RuntimeReady", true, ""),
                    condition("NetworkReady", false, "NetworkPluginNotReady"),
                ],
            }),
            ..Default::default()
        };
        merge_status(&mut mine, Ok(theirs));
        let c = &mine.status.unwrap().conditions;
        assert_eq!(c.len(), 4);
        assert!(c[0].status && c[1].status, "vimanad's conditions decide");
        assert_eq!(c[3].r#type, "DownstreamNetworkReady");
        assert_eq!(c[3].reason, "NetworkPluginNotReady");
    }

    #[test]
    fn an_unreachable_downstream_is_one_false_condition() {
        let mut mine = ours();
        merge_status(&mut mine, Err(Status::unavailable("down: socket /x")));
        let c = &mine.status.unwrap().conditions;
        assert!(c[0].status && c[1].status);
        assert_eq!(c[2].r#type, "DownstreamRuntimeReady");
        assert!(!c[2].status);
        assert_eq!(c[2].message, "down: socket /x");
    }
}
