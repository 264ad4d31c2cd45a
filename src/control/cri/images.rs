//! The CRI ImageService verbs over the local image store.

use k8s_cri::v1 as cri;

use crate::control::image::{Credentials, Image};
use crate::control::runtime::Runtime;
use crate::control::Error;

impl Runtime {
    pub fn list_images(&self, filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>, Error> {
        let wanted = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match wanted {
            Some(reference) => self.images.find(&reference)?.into_iter().collect(),
            None => self.images.list()?,
        };
        Ok(images.iter().map(to_cri).collect())
    }

    pub fn image_status(
        &self,
        spec: Option<cri::ImageSpec>,
    ) -> Result<cri::ImageStatusResponse, Error> {
        let reference = image_name(spec)?;
        let image = self.images.find(&reference)?;
        Ok(cri::ImageStatusResponse {
            image: image.as_ref().map(to_cri),
            info: Default::default(),
        })
    }

    /// PullImage: fetches the image from its registry (HTTPS unless listed
    /// as insecure) with the kubelet's credentials; concurrent pulls of one
    /// image share the work. Returns the image id.
    pub async fn pull_image(&self, req: cri::PullImageRequest) -> Result<String, Error> {
        let reference = image_name(req.image)?;
        let credentials = req.auth.map(credentials).unwrap_or_default();
        let pulled = self.puller.pull(&reference, credentials).await;
        let result = if pulled.is_ok() { "ok" } else { "error" };
        self.metrics.image_pulls.with_label_values(&[result]).inc();
        Ok(pulled?.id)
    }

    pub fn remove_image(&self, spec: Option<cri::ImageSpec>) -> Result<(), Error> {
        let reference = image_name(spec)?;
        let Some(image) = self.images.find(&reference)? else {
            return Ok(());
        };
        {
            let store = self.store();
            let user = store
                .pods
                .values()
                .find(|p| p.containers.iter().any(|c| c.image.id == image.id));
            if let Some(pod) = user {
                return Err(Error::FailedPrecondition(format!(
                    "image {reference:?} is used by container {}; remove the container first",
                    pod.id
                )));
            }
        }
        self.images.remove(&reference)?;
        Ok(())
    }
}

fn image_name(spec: Option<cri::ImageSpec>) -> Result<String, Error> {
    spec.map(|s| s.image)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::InvalidArgument("no image given".into()))
}

/// The CRI `AuthConfig` as the puller takes it (`server_address` is only
/// which registry the kubelet matched it to).
fn credentials(auth: cri::AuthConfig) -> Credentials {
    Credentials {
        username: auth.username,
        password: auth.password,
        auth: auth.auth,
        registry_token: auth.registry_token,
        identity_token: auth.identity_token,
    }
}

fn to_cri(image: &Image) -> cri::Image {
    let user = image.config.user.clone().unwrap_or_default();
    let uid_part = user.split(':').next().unwrap_or_default();
    let (uid, username) = match uid_part.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, uid_part.to_owned()),
    };
    cri::Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: image.id.clone(),
            ..Default::default()
        }),
        pinned: image.pinned,
    }
}
