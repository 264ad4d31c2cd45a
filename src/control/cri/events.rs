//! GetContainerEvents: container lifecycle events (created, started,
//! stopped, deleted, each with the pod's status) for the kubelet's evented
//! PLEG. Verbs emit under the store's lock, so events follow the order of
//! the changes; a subscriber that falls behind gets an error and relists.

use k8s_cri::v1 as cri;
use tokio::sync::broadcast;

use super::query::container_status;
use crate::control::runtime::Runtime;
use crate::control::state::{now_nanos, ContainerId, Store};

/// Events kept for a slow subscriber before it must relist.
pub const BACKLOG: usize = 1024;

pub fn channel() -> broadcast::Sender<cri::ContainerEventResponse> {
    broadcast::channel(BACKLOG).0
}

impl Runtime {
    /// Sends `kind` for container `id` to every subscriber, with its pod's
    /// status as `store` holds it now.
    pub(crate) fn emit(&self, store: &Store, id: &ContainerId, kind: cri::ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let Some(pod) = store.pods.get(&id.pod) else {
            return;
        };
        let event = cri::ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status: Some(self.sandbox_status(pod)),
            containers_statuses: pod
                .containers
                .iter()
                .map(|c| container_status(pod, c))
                .collect(),
        };
        let _ = self.events.send(event);
    }

    /// The events from now on, until the subscriber lags or the runtime
    /// stops.
    pub fn container_events(
        &self,
    ) -> impl futures::Stream<Item = Result<cri::ContainerEventResponse, tonic::Status>> + Send
    {
        let rx = self.events.subscribe();
        futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(event) => Some((Ok(event), Some(rx))),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(tonic::Status::data_loss(format!(
                        "{n} container events were dropped for this slow subscriber; list containers again and resubscribe"
                    ))),
                    None,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }
}
