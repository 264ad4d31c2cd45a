//! `ImageService` of the router: one image service over two stores.
//!
//! - PullImage goes to the runtime of the pod it is for: the ImageSpec's
//!   runtime handler when set, else the sandbox (found by its metadata
//!   among vimanad's pods), else the downstream.
//! - ListImages merges both stores, one entry per image ID (tags and
//!   digests united); ImageStatus answers from whichever side has it.
//! - RemoveImage removes the image from every side that has it, but never
//!   while a container of either side still uses it (FAILED_PRECONDITION
//!   naming the container), and not at all while the downstream cannot be
//!   asked.
//! - ImageFsInfo lists both filesystems; when both stores are on one
//!   filesystem (the same device) vimanad's first entry (the only one
//!   kubelet 1.28 reads) counts both stores' bytes and inodes.

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::client::Kind;
use super::stale::key;
use super::{Downstream, Router, Side};

type Reply<T> = Result<Response<T>, Status>;

impl Router {
    /// The side a pull is for.
    async fn pull_side(&self, d: &Downstream, req: &cri::PullImageRequest) -> Side {
        let handler = req
            .image
            .as_ref()
            .map_or("", |i| i.runtime_handler.as_str());
        if !handler.is_empty() {
            return super::side_of_new_pod(handler, &Default::default(), &self.handler, false);
        }
        let Some(sandbox) = &req.sandbox_config else {
            return Side::Downstream;
        };
        let pods = self
            .vimana
            .list_pod_sandbox(Request::new(cri::ListPodSandboxRequest { filter: None }))
            .await
            .map(|r| r.into_inner().items)
            .unwrap_or_default();
        if pods.iter().any(|p| p.metadata == sandbox.metadata) {
            return Side::Vimana;
        }
        // Not run yet (a pull before RunPodSandbox): as RunPodSandbox on
        // the default handler would route it.
        super::side_of_new_pod("", &sandbox.labels, &self.handler, d.components_on_default)
    }

    /// The downstream's ImageStatus of `image`.
    async fn their_status(
        &self,
        d: &Downstream,
        image: Option<cri::ImageSpec>,
    ) -> Result<Option<cri::Image>, Status> {
        let mut client = d.client.images();
        let deadline = d.client.deadline(&Request::new(()), Kind::Read);
        let call = client.image_status(cri::ImageStatusRequest {
            image,
            verbose: false,
        });
        Ok(d.client.call("ImageStatus", deadline, call).await?.image)
    }

    /// The first container of either side using `image`, if any.
    async fn user_of(&self, image: &cri::Image) -> Result<Option<String>, Status> {
        let all = self
            .merged_containers(Request::new(cri::ListContainersRequest { filter: None }))
            .await?
            .into_inner()
            .containers;
        let names = |c: &cri::Container| {
            let spec = c
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default();
            [spec, c.image_ref.clone(), c.image_id.clone()]
        };
        Ok(all
            .iter()
            .find(|c| {
                names(c).iter().any(|n| {
                    !n.is_empty()
                        && (*n == image.id
                            || image.repo_tags.contains(n)
                            || image.repo_digests.contains(n))
                })
            })
            .map(|c| c.id.clone()))
    }
}

/// One entry per image ID, tags and digests united.
pub(super) fn merge_images(mut mine: Vec<cri::Image>, theirs: Vec<cri::Image>) -> Vec<cri::Image> {
    for t in theirs {
        match mine.iter_mut().find(|m| m.id == t.id) {
            Some(m) => merge_image(m, t),
            None => mine.push(t),
        }
    }
    mine
}

fn merge_image(m: &mut cri::Image, t: cri::Image) {
    for tag in t.repo_tags {
        if !m.repo_tags.contains(&tag) {
            m.repo_tags.push(tag);
        }
    }
    for digest in t.repo_digests {
        if !m.repo_digests.contains(&digest) {
            m.repo_digests.push(digest);
        }
    }
    m.size = m.size.max(t.size);
    m.pinned |= t.pinned;
}

/// Both sides' filesystems. Two mountpoints are one filesystem when they
/// name the same path or `same_fs` says so (vimanad's store and
/// containerd's snapshotter are different directories, usually on one
/// disk): the downstream's usage is then added to vimanad's entry, which
/// stays first (kubelet 1.28 reads only the first for image GC and
/// eviction, so it sees both stores' bytes against that disk); a
/// filesystem of its own is listed after vimanad's.
pub(super) fn merge_fs(
    mut mine: cri::ImageFsInfoResponse,
    theirs: cri::ImageFsInfoResponse,
    same_fs: impl Fn(&str, &str) -> bool,
) -> cri::ImageFsInfoResponse {
    fn mount(f: &cri::FilesystemUsage) -> Option<&str> {
        f.fs_id
            .as_ref()
            .map(|i| i.mountpoint.as_str())
            .filter(|m| !m.is_empty())
    }
    fn add(a: &mut Option<cri::UInt64Value>, b: Option<cri::UInt64Value>) {
        let sum = a.as_ref().map_or(0, |v| v.value) + b.map_or(0, |v| v.value);
        *a = Some(cri::UInt64Value { value: sum });
    }
    let merge = |into: &mut Vec<cri::FilesystemUsage>, from: Vec<cri::FilesystemUsage>| {
        for t in from {
            let same = into.iter_mut().find(|m| match (mount(m), mount(&t)) {
                (Some(a), Some(b)) => a == b || same_fs(a, b),
                _ => false,
            });
            match same {
                Some(m) => {
                    add(&mut m.used_bytes, t.used_bytes);
                    add(&mut m.inodes_used, t.inodes_used);
                }
                None => into.push(t),
            }
        }
    };
    merge(&mut mine.image_filesystems, theirs.image_filesystems);
    merge(
        &mut mine.container_filesystems,
        theirs.container_filesystems,
    );
    mine
}

/// Whether two host paths (from vimanad and from the downstream runtime,
/// both trusted node daemons) are on one filesystem: the same device.
fn same_device(a: &str, b: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

#[tonic::async_trait]
impl ImageService for Router {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Reply<cri::ListImagesResponse> {
        let Some(d) = &self.down else {
            return self.vimana.list_images(req).await;
        };
        let filter = req.get_ref().filter.clone();
        let mut client = d.client.images();
        let call = client.list_images(cri::ListImagesRequest {
            filter: filter.clone(),
        });
        let theirs = d.list("ListImages", key(&filter), &d.images, call, |r| r.images);
        let (mine, theirs) = tokio::join!(self.vimana.list_images(req), theirs);
        let images = merge_images(mine?.into_inner().images, theirs);
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Reply<cri::ImageStatusResponse> {
        let Some(d) = &self.down else {
            return self.vimana.image_status(req).await;
        };
        let spec = req.get_ref().image.clone();
        let handler = spec.as_ref().map_or("", |s| s.runtime_handler.as_str());
        if handler == self.handler {
            return self.vimana.image_status(req).await;
        }
        let mut client = d.client.images();
        let deadline = d.client.deadline(&req, Kind::Read);
        let theirs = d.client.call(
            "ImageStatus",
            deadline,
            client.image_status(cri::ImageStatusRequest {
                image: spec.clone(),
                verbose: req.get_ref().verbose,
            }),
        );
        if !handler.is_empty() {
            return theirs.await.map(Response::new);
        }
        let (mine, theirs) = tokio::join!(self.vimana.image_status(req), theirs);
        let mut mine = mine?.into_inner();
        match (mine.image.as_mut(), theirs) {
            (Some(m), Ok(t)) => {
                if let Some(t) = t.image {
                    merge_image(m, t);
                }
                Ok(Response::new(mine))
            }
            // vimanad has it: the downstream's silence changes nothing.
            (Some(_), Err(_)) => Ok(Response::new(mine)),
            (None, theirs) => theirs.map(Response::new),
        }
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Reply<cri::PullImageResponse> {
        let Some(d) = &self.down else {
            return self.vimana.pull_image(req).await;
        };
        match self.pull_side(d, req.get_ref()).await {
            Side::Vimana => self.vimana.pull_image(req).await,
            Side::Downstream => {
                let deadline = d.client.deadline(&req, Kind::Mutate);
                let mut client = d.client.images();
                let call = client.pull_image(req.into_inner());
                d.client
                    .call("PullImage", deadline, call)
                    .await
                    .map(Response::new)
            }
        }
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Reply<cri::RemoveImageResponse> {
        let Some(d) = &self.down else {
            return self.vimana.remove_image(req).await;
        };
        let spec = req.get_ref().image.clone();
        let status = |s: Option<cri::ImageSpec>| {
            Request::new(cri::ImageStatusRequest {
                image: s,
                verbose: false,
            })
        };
        let mine = self
            .vimana
            .image_status(status(spec.clone()))
            .await?
            .into_inner()
            .image;
        let theirs = self.their_status(d, spec.clone()).await?;
        let Some(image) = mine.clone().or_else(|| theirs.clone()) else {
            // Neither has it: vimanad's answer for an absent image.
            return self.vimana.remove_image(req).await;
        };
        let mut united = image;
        if let (Some(_), Some(t)) = (&mine, theirs.clone()) {
            merge_image(&mut united, t);
        }
        if let Some(user) = self.user_of(&united).await? {
            return Err(Status::failed_precondition(format!(
                "image {} is in use by container {user}",
                united.id
            )));
        }
        if mine.is_some() {
            self.vimana.remove_image(req).await?;
        }
        if theirs.is_some() {
            let mut client = d.client.images();
            let deadline = d.client.deadline(&Request::new(()), Kind::Read);
            let call = client.remove_image(cri::RemoveImageRequest { image: spec });
            d.client.call("RemoveImage", deadline, call).await?;
        }
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        req: Request<cri::ImageFsInfoRequest>,
    ) -> Reply<cri::ImageFsInfoResponse> {
        let Some(d) = &self.down else {
            return self.vimana.image_fs_info(req).await;
        };
        let mut client = d.client.images();
        let deadline = d.client.deadline(&req, Kind::Read);
        let theirs = d.client.call(
            "ImageFsInfo",
            deadline,
            client.image_fs_info(cri::ImageFsInfoRequest {}),
        );
        let (mine, theirs) = tokio::join!(self.vimana.image_fs_info(req), theirs);
        let mine = mine?.into_inner();
        let theirs = match theirs {
            Ok(t) => {
                d.fs.put(Vec::new(), &t);
                t
            }
            Err(e) => {
                tracing::debug!(error = %e.message(), "ImageFsInfo: the downstream's last good answer");
                d.fs.get(&[]).unwrap_or_default()
            }
        };
        let merged = tokio::task::spawn_blocking(move || merge_fs(mine, theirs, same_device))
            .await
            .map_err(|e| Status::internal(format!("ImageFsInfo: {e}")))?;
        Ok(Response::new(merged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, tags: &[&str], size: u64) -> cri::Image {
        cri::Image {
            id: id.into(),
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            size,
            ..Default::default()
        }
    }

    #[test]
    fn images_merge_by_id() {
        let merged = merge_images(
            vec![
                image("sha256:a", &["x:1"], 10),
                image("sha256:b", &["y:1"], 5),
            ],
            vec![
                image("sha256:a", &["x:1", "x:latest"], 12),
                image("sha256:c", &[], 1),
            ],
        );
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[0].repo_tags, ["x:1", "x:latest"]);
        assert_eq!(merged[0].size, 12);
        assert_eq!(merged[2].id, "sha256:c");
    }

    fn fs(mount: &str, used: u64) -> cri::FilesystemUsage {
        cri::FilesystemUsage {
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: mount.into(),
            }),
            used_bytes: Some(cri::UInt64Value { value: used }),
            inodes_used: Some(cri::UInt64Value { value: 1 }),
            ..Default::default()
        }
    }

    fn never(_: &str, _: &str) -> bool {
        false
    }

    #[test]
    fn a_shared_filesystem_counts_both_stores() {
        let merged = merge_fs(
            cri::ImageFsInfoResponse {
                image_filesystems: vec![fs("/", 100)],
                ..Default::default()
            },
            cri::ImageFsInfoResponse {
                image_filesystems: vec![fs("/", 50)],
                ..Default::default()
            },
            never,
        );
        assert_eq!(merged.image_filesystems.len(), 1);
        assert_eq!(
            merged.image_filesystems[0]
                .used_bytes
                .as_ref()
                .unwrap()
                .value,
            150
        );
        let apart = merge_fs(
            cri::ImageFsInfoResponse {
                image_filesystems: vec![fs("/", 100)],
                ..Default::default()
            },
            cri::ImageFsInfoResponse {
                image_filesystems: vec![fs("/var", 50)],
                ..Default::default()
            },
            never,
        );
        assert_eq!(apart.image_filesystems.len(), 2);
        assert_eq!(
            apart.image_filesystems[0]
                .used_bytes
                .as_ref()
                .unwrap()
                .value,
            100
        );
    }

    #[test]
    fn two_directories_on_one_device_are_one_filesystem() {
        let dir = std::env::temp_dir();
        let (a, b) = (dir.join("vimanad-fs-a"), dir.join("vimanad-fs-b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
        }
        let (a, b) = (a.display().to_string(), b.display().to_string());
        assert!(same_device(&a, &b));
        assert!(!same_device(&a, "/proc"), "procfs is another device");
        assert!(!same_device(&a, "/nonexistent/vimanad"));
        let merged = merge_fs(
            cri::ImageFsInfoResponse {
                image_filesystems: vec![fs(&a, 100)],
                container_filesystems: vec![fs(&a, 7)],
            },
            cri::ImageFsInfoResponse {
                image_filesystems: vec![fs(&b, 50)],
                container_filesystems: vec![fs("/proc", 3)],
            },
            same_device,
        );
        assert_eq!(merged.image_filesystems.len(), 1);
        let first = &merged.image_filesystems[0];
        assert_eq!(
            first.fs_id.as_ref().unwrap().mountpoint,
            a,
            "vimanad's first"
        );
        assert_eq!(first.used_bytes.as_ref().unwrap().value, 150);
        assert_eq!(first.inodes_used.as_ref().unwrap().value, 2);
        assert_eq!(merged.container_filesystems.len(), 2);
    }
}
