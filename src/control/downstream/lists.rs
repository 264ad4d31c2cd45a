//! Merged List* calls: both sides with the same filter, or only the owner
//! when the filter names an ID. A downstream that fails or misses its
//! deadline is replaced by its last good answer for that filter (its pods
//! stay in the kubelet's view; logged as stale), or by nothing when it
//! never answered since vimanad started.

use std::future::Future;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Code, Request, Response, Status};

use super::client::Kind;
use super::stale::{key, LastGood};
use super::{owner_of, Downstream, Router, Side};

type Reply<T> = Result<Response<T>, Status>;

/// Which sides a filter naming `ids` (empty strings name none) asks.
fn sides(ids: &[&str]) -> (bool, bool) {
    let named: Vec<Side> = ids
        .iter()
        .filter(|id| !id.is_empty())
        .map(|id| owner_of(id))
        .collect();
    let vimana = named.iter().all(|s| *s == Side::Vimana);
    let downstream = named.iter().all(|s| *s == Side::Downstream);
    (vimana, downstream)
}

/// Runs the sides of a list that [`sides`] asks (`asks`: vimanad's, the
/// downstream's) at once and appends the downstream's items to vimanad's
/// answer. A side not asked is never polled.
async fn merge<R: Default, T>(
    (vimana, downstream): (bool, bool),
    mine: impl Future<Output = Result<R, Status>>,
    theirs: impl Future<Output = Vec<T>>,
    items: impl FnOnce(&mut R) -> &mut Vec<T>,
) -> Reply<R> {
    let mine = async {
        if vimana {
            mine.await
        } else {
            Ok(R::default())
        }
    };
    let theirs = async {
        if downstream {
            theirs.await
        } else {
            Vec::new()
        }
    };
    let (mine, theirs) = tokio::join!(mine, theirs);
    let mut mine = mine?;
    items(&mut mine).extend(theirs);
    Ok(Response::new(mine))
}

impl Downstream {
    /// One downstream list call; on failure the last good answer for the
    /// same filter, or nothing.
    pub(super) async fn list<R, T: Clone>(
        &self,
        what: &str,
        filter: Vec<u8>,
        cache: &LastGood<Vec<T>>,
        call: impl Future<Output = Result<Response<R>, Status>>,
        items: impl FnOnce(R) -> Vec<T>,
    ) -> Vec<T> {
        let deadline = self.client.deadline(&Request::new(()), Kind::Read);
        match self.client.call(what, deadline, call).await {
            Ok(reply) => {
                let items = items(reply);
                cache.put(filter, &items);
                items
            }
            Err(e) => {
                let last = cache.get(&filter);
                tracing::debug!(
                    downstream = %self.client.uri(),
                    error = %e.message(),
                    stale = last.is_some(),
                    "{what}: serving the downstream's last good answer"
                );
                last.unwrap_or_default()
            }
        }
    }
}

/// vimanad's side of a list whose RPC it may not serve yet (stats): an
/// UNIMPLEMENTED answer counts as empty when a downstream answers too.
fn or_empty<T: Default>(reply: Reply<T>, downstream: bool) -> Result<T, Status> {
    match reply {
        Ok(r) => Ok(r.into_inner()),
        Err(e) if downstream && e.code() == Code::Unimplemented => Ok(T::default()),
        Err(e) => Err(e),
    }
}

impl Router {
    pub(super) async fn merged_pods(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Reply<cri::ListPodSandboxResponse> {
        let Some(d) = &self.down else {
            return self.vimana.list_pod_sandbox(req).await;
        };
        let filter = req.get_ref().filter.clone();
        let asks = sides(&[filter.as_ref().map_or("", |f| f.id.as_str())]);
        let mut client = d.client.runtime();
        let call = client.list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: filter.clone(),
        });
        let theirs = d.list("ListPodSandbox", key(&filter), &d.pods, call, |r| r.items);
        let mine = async {
            self.vimana
                .list_pod_sandbox(req)
                .await
                .map(Response::into_inner)
        };
        merge(asks, mine, theirs, |r| &mut r.items).await
    }

    pub(super) async fn merged_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Reply<cri::ListContainersResponse> {
        let Some(d) = &self.down else {
            return self.vimana.list_containers(req).await;
        };
        let filter = req.get_ref().filter.clone();
        let asks = sides(
            &filter
                .as_ref()
                .map_or(["", ""], |f| [f.id.as_str(), f.pod_sandbox_id.as_str()]),
        );
        let mut client = d.client.runtime();
        let call = client.list_containers(cri::ListContainersRequest {
            filter: filter.clone(),
        });
        let theirs = d.list("ListContainers", key(&filter), &d.containers, call, |r| {
            r.containers
        });
        let mine = async {
            self.vimana
                .list_containers(req)
                .await
                .map(Response::into_inner)
        };
        merge(asks, mine, theirs, |r| &mut r.containers).await
    }

    pub(super) async fn merged_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Reply<cri::ListContainerStatsResponse> {
        let Some(d) = &self.down else {
            return self.vimana.list_container_stats(req).await;
        };
        let filter = req.get_ref().filter.clone();
        let asks = sides(
            &filter
                .as_ref()
                .map_or(["", ""], |f| [f.id.as_str(), f.pod_sandbox_id.as_str()]),
        );
        let mut client = d.client.runtime();
        let call = client.list_container_stats(cri::ListContainerStatsRequest {
            filter: filter.clone(),
        });
        let theirs = d.list(
            "ListContainerStats",
            key(&filter),
            &d.container_stats,
            call,
            |r| r.stats,
        );
        let mine = async { or_empty(self.vimana.list_container_stats(req).await, asks.1) };
        merge(asks, mine, theirs, |r| &mut r.stats).await
    }

    pub(super) async fn merged_pod_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Reply<cri::ListPodSandboxStatsResponse> {
        let Some(d) = &self.down else {
            return self.vimana.list_pod_sandbox_stats(req).await;
        };
        let filter = req.get_ref().filter.clone();
        let asks = sides(&[filter.as_ref().map_or("", |f| f.id.as_str())]);
        let mut client = d.client.runtime();
        let call = client.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: filter.clone(),
        });
        let theirs = d.list(
            "ListPodSandboxStats",
            key(&filter),
            &d.pod_stats,
            call,
            |r| r.stats,
        );
        let mine = async { or_empty(self.vimana.list_pod_sandbox_stats(req).await, asks.1) };
        merge(asks, mine, theirs, |r| &mut r.stats).await
    }

    /// Both sides' descriptors, one per name.
    pub(super) async fn merged_metric_descriptors(
        &self,
        req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Reply<cri::ListMetricDescriptorsResponse> {
        let Some(d) = &self.down else {
            return self.vimana.list_metric_descriptors(req).await;
        };
        let mut client = d.client.runtime();
        let deadline = d.client.deadline(&req, Kind::Read);
        let theirs = d.client.call(
            "ListMetricDescriptors",
            deadline,
            client.list_metric_descriptors(cri::ListMetricDescriptorsRequest {}),
        );
        let (mine, theirs) = tokio::join!(self.vimana.list_metric_descriptors(req), theirs);
        let (mine, theirs) = both(mine, theirs)?;
        let mut merged = mine.unwrap_or_default();
        for m in theirs.map(|t| t.descriptors).unwrap_or_default() {
            if !merged.descriptors.iter().any(|x| x.name == m.name) {
                merged.descriptors.push(m);
            }
        }
        Ok(Response::new(merged))
    }

    pub(super) async fn merged_pod_metrics(
        &self,
        req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Reply<cri::ListPodSandboxMetricsResponse> {
        let Some(d) = &self.down else {
            return self.vimana.list_pod_sandbox_metrics(req).await;
        };
        let mut client = d.client.runtime();
        let deadline = d.client.deadline(&req, Kind::Read);
        let theirs = d.client.call(
            "ListPodSandboxMetrics",
            deadline,
            client.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}),
        );
        let (mine, theirs) = tokio::join!(self.vimana.list_pod_sandbox_metrics(req), theirs);
        let (mine, theirs) = both(mine, theirs)?;
        let mut merged = mine.unwrap_or_default();
        merged
            .pod_metrics
            .extend(theirs.map(|t| t.pod_metrics).unwrap_or_default());
        Ok(Response::new(merged))
    }
}

/// Two answers of an RPC that either side may not implement: an error only
/// when neither answers (vimanad's error then).
fn both<T>(mine: Reply<T>, theirs: Result<T, Status>) -> Result<(Option<T>, Option<T>), Status> {
    match (mine, theirs) {
        (Err(e), Err(_)) => Err(e),
        (Err(e), Ok(_)) if e.code() != Code::Unimplemented => Err(e),
        (mine, theirs) => Ok((mine.ok().map(Response::into_inner), theirs.ok())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_naming_an_id_asks_its_owner_only() {
        let hex = "ab".repeat(32);
        assert_eq!(sides(&[""]), (true, true));
        assert_eq!(sides(&["", ""]), (true, true));
        assert_eq!(sides(&["d.io:s@1.0.0#0"]), (true, false));
        assert_eq!(sides(&["d.io:s@1.0.0#0.3"]), (true, false));
        assert_eq!(sides(&[&hex]), (false, true));
        assert_eq!(sides(&["", &hex]), (false, true));
        // A container of one side in a pod of the other: nobody has it.
        assert_eq!(sides(&["d.io:s@1.0.0#0", &hex]), (false, false));
    }
}
