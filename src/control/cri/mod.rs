//! The CRI v1 gRPC services: a thin adapter.
//!
//! Each RPC unpacks its request, calls the runtime verb (one file per group
//! of verbs beside this one), and maps the error once, through
//! `From<control::Error> for Status`. Business logic does not belong here.

mod container;
mod events;
mod images;
pub(crate) mod labels;
mod query;
mod sandbox;
mod start;
mod user;

use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::runtime::Runtime;

pub(crate) use events::channel as events_channel;
pub use labels::{DOMAIN as LABEL_DOMAIN, SERVICE as LABEL_SERVICE, VERSION as LABEL_VERSION};

/// The CRI name and version this runtime reports.
pub const RUNTIME_NAME: &str = "vimanad";
const KUBELET_API_VERSION: &str = "0.1.0";

#[derive(Clone)]
pub struct Cri {
    runtime: Arc<Runtime>,
    streaming: Arc<super::streaming::Server>,
}

impl Cri {
    pub fn new(runtime: Arc<Runtime>, streaming: Arc<super::streaming::Server>) -> Self {
        Self { runtime, streaming }
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// UNIMPLEMENTED with the call's own reason.
fn refused<T>(what: &str, why: &str) -> Reply<T> {
    Err(Status::unimplemented(format!("{what}: {why}")))
}

#[tonic::async_trait]
impl RuntimeService for Cri {
    async fn version(&self, _: Request<cri::VersionRequest>) -> Reply<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: KUBELET_API_VERSION.into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Reply<cri::RunPodSandboxResponse> {
        let id = self.runtime.run_pod_sandbox(req.into_inner()).await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id.to_string(),
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Reply<cri::StopPodSandboxResponse> {
        let id = req.into_inner().pod_sandbox_id;
        self.runtime.stop_pod_sandbox(&id).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Reply<cri::RemovePodSandboxResponse> {
        let id = req.into_inner().pod_sandbox_id;
        self.runtime.remove_pod_sandbox(&id).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Reply<cri::PodSandboxStatusResponse> {
        Ok(Response::new(
            self.runtime
                .pod_sandbox_status(&req.into_inner().pod_sandbox_id)?,
        ))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Reply<cri::ListPodSandboxResponse> {
        let items = self.runtime.list_pod_sandbox(req.into_inner().filter);
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Reply<cri::CreateContainerResponse> {
        let id = self.runtime.create_container(req.into_inner()).await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id.to_string(),
        }))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Reply<cri::StartContainerResponse> {
        let id = req.into_inner().container_id;
        self.runtime.start_container(&id).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Reply<cri::StopContainerResponse> {
        let req = req.into_inner();
        self.runtime
            .stop_container(&req.container_id, req.timeout)
            .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Reply<cri::RemoveContainerResponse> {
        let id = req.into_inner().container_id;
        self.runtime.remove_container(&id).await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Reply<cri::ListContainersResponse> {
        let containers = self.runtime.list_containers(req.into_inner().filter);
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Reply<cri::ContainerStatusResponse> {
        Ok(Response::new(
            self.runtime
                .container_status(&req.into_inner().container_id)?,
        ))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Reply<cri::UpdateContainerResourcesResponse> {
        let req = req.into_inner();
        self.runtime
            .update_container_resources(&req.container_id, req.linux)
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Reply<cri::ReopenContainerLogResponse> {
        self.runtime
            .reopen_container_log(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Reply<cri::ExecSyncResponse> {
        Ok(Response::new(
            self.streaming.exec_sync(req.into_inner()).await?,
        ))
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> Reply<cri::ExecResponse> {
        Ok(Response::new(self.streaming.exec(req.into_inner())?))
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> Reply<cri::AttachResponse> {
        Ok(Response::new(self.streaming.attach(req.into_inner())?))
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Reply<cri::PortForwardResponse> {
        Ok(Response::new(
            self.streaming.port_forward(req.into_inner())?,
        ))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Reply<cri::ContainerStatsResponse> {
        let id = req.into_inner().container_id;
        let stats = self.runtime.container_stats(&id).await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Reply<cri::ListContainerStatsResponse> {
        let filter = req.into_inner().filter;
        let stats = self.runtime.list_container_stats(filter).await?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Reply<cri::PodSandboxStatsResponse> {
        let id = req.into_inner().pod_sandbox_id;
        let stats = self.runtime.pod_sandbox_stats(&id).await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Reply<cri::ListPodSandboxStatsResponse> {
        let filter = req.into_inner().filter;
        let stats = self.runtime.list_pod_sandbox_stats(filter).await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        _: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Reply<cri::UpdateRuntimeConfigResponse> {
        // The pod CIDR the kubelet passes has no use here: components share
        // the node's network.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, _: Request<cri::StatusRequest>) -> Reply<cri::StatusResponse> {
        let condition = |kind: &str| cri::RuntimeCondition {
            r#type: kind.into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![condition("RuntimeReady"), condition("NetworkReady")],
            }),
            info: Default::default(),
            runtime_handlers: vec![cri::RuntimeHandler {
                name: self.runtime.config.runtime_handler.clone(),
                features: Some(cri::RuntimeHandlerFeatures::default()),
            }],
            features: Some(cri::RuntimeFeatures::default()),
        }))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Reply<cri::CheckpointContainerResponse> {
        refused(
            "CheckpointContainer",
            "checkpointing is not supported: a component is restarted, never migrated with its memory",
        )
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        Ok(Response::new(Box::pin(self.runtime.container_events())))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Reply<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: self.runtime.list_metric_descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Reply<cri::ListPodSandboxMetricsResponse> {
        let pod_metrics = self.runtime.list_pod_sandbox_metrics().await?;
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Reply<cri::RuntimeConfigResponse> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }
}

#[tonic::async_trait]
impl ImageService for Cri {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Reply<cri::ListImagesResponse> {
        let images = self.runtime.list_images(req.into_inner().filter)?;
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Reply<cri::ImageStatusResponse> {
        Ok(Response::new(
            self.runtime.image_status(req.into_inner().image)?,
        ))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Reply<cri::PullImageResponse> {
        let image_ref = self.runtime.pull_image(req.into_inner()).await?;
        Ok(Response::new(cri::PullImageResponse { image_ref }))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Reply<cri::RemoveImageResponse> {
        self.runtime.remove_image(req.into_inner().image)?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Reply<cri::ImageFsInfoResponse> {
        Ok(Response::new(self.runtime.fs_info().await?))
    }
}
