//! [`Puller`]: pulling images from registries into the store, the way the
//! kubelet's `PullImage` and `vimanad image pull` want it.
//!
//! One pull: resolve the reference to a manifest (through image indexes, to
//! linux/amd64), then fetch the config and the layers the store does not
//! hold yet into a [`Staging`](super::Staging) area, each blob's size and
//! digest verified as it is written; then unpack the root filesystem in a
//! work dir (so a layer that would escape the root fails the pull, not a
//! later start), and only then commit with [`ImageStore::insert`]. Any
//! failure drops the staging area and the work dir: the store is unchanged.
//!
//! Concurrent pulls of one reference (with the same credentials) share one
//! task; the task runs on its own, so a caller that gives up (the kubelet's
//! deadline) does not waste the work, and its retry joins the pull in flight.
//! The network side is async (tokio); file work runs on the blocking pool.
//!
//! By job: this file shares pulls and falls back to the stored image;
//! `job` is the sequence of one pull; `remote` is the registry session
//! (client, credentials, login, error wording); `manifest` resolves a
//! reference through image indexes to a checked manifest; `fetch` downloads
//! blobs into staging with progress; `commit` unpacks the root filesystem
//! and commits the image.

mod commit;
mod fetch;
mod job;
mod manifest;
mod remote;

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

use super::error::{io_err, ErrorKind, ImageError};
use super::reference::Reference;
use super::registry::{Credentials, RegistryConfig};
use super::store::ImageStore;
use super::types::Image;
use job::PullJob;

type SharedPull = Shared<BoxFuture<'static, Result<Image, Arc<ImageError>>>>;
type PullKey = (String, Credentials);

/// Pulls images from registries into one store. Cheap to share (`Arc`).
pub struct Puller {
    store: Arc<ImageStore>,
    registries: RegistryConfig,
    /// Pulls in flight, by normalized reference and credentials; each entry
    /// is removed by its own task when it ends.
    in_flight: Arc<Mutex<HashMap<PullKey, (u64, SharedPull)>>>,
    next_id: AtomicU64,
    /// Blob bytes fetched from registries by every pull so far.
    fetched: Arc<AtomicU64>,
}

impl Puller {
    pub fn new(store: Arc<ImageStore>, registries: RegistryConfig) -> Puller {
        Puller {
            store,
            registries,
            in_flight: Arc::default(),
            next_id: AtomicU64::new(0),
            fetched: Arc::default(),
        }
    }

    /// Blob bytes fetched from registries so far (for `/metrics`).
    pub fn bytes_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    pub fn registries(&self) -> &RegistryConfig {
        &self.registries
    }

    /// Pulls `reference` (normalized: `busybox` is
    /// `docker.io/library/busybox:latest`) with `credentials` and returns
    /// the stored image. Must be called within a tokio runtime.
    ///
    /// A reference pinned by digest that the store already holds is not
    /// fetched again. When the registry does not have the image or cannot be
    /// reached and the store already holds it (an imported image, a node
    /// offline), the stored image is returned and a warning logged; a
    /// refused login is an error whatever the store holds.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Credentials,
    ) -> Result<Image, ImageError> {
        let r = Reference::parse(reference)?.with_default_tag();
        let name = r.to_string();
        if r.digest().is_some() {
            if let Some(image) = self.find(&name).await? {
                tracing::debug!(image = %name, "pinned by digest and already stored");
                return Ok(image);
            }
        }
        let result = self.shared_pull(r, credentials).await;
        let err = match result {
            Ok(image) => return Ok(image),
            Err(e) => Arc::try_unwrap(e).unwrap_or_else(ImageError::Shared),
        };
        if matches!(err.kind(), ErrorKind::NotFound | ErrorKind::Unavailable) {
            if let Some(image) = self.find(&name).await? {
                tracing::warn!(image = %name, id = %image.id, error = %err,
                    "registry pull failed; using the image already stored");
                return Ok(image);
            }
        }
        tracing::warn!(image = %name, error = %err, "pull failed");
        Err(err)
    }

    async fn find(&self, name: &str) -> Result<Option<Image>, ImageError> {
        let store = Arc::clone(&self.store);
        let name = name.to_string();
        blocking(move || store.find(&name)).await
    }

    /// Joins the pull in flight for this reference and credentials, or
    /// starts one.
    fn shared_pull(&self, r: Reference, credentials: Credentials) -> SharedPull {
        let key: PullKey = (r.to_string(), credentials);
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, pull)) = map.get(&key) {
            tracing::info!(image = %key.0, "joining the pull in flight");
            return pull.clone();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let job = PullJob {
            store: Arc::clone(&self.store),
            registries: self.registries.clone(),
            reference: r,
            credentials: key.1.clone(),
            fetched: Arc::clone(&self.fetched),
        };
        let in_flight = Arc::clone(&self.in_flight);
        let task_key = key.clone();
        let task = tokio::spawn(async move {
            let result = job.run().await.map_err(Arc::new);
            let mut map = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&task_key).is_some_and(|(i, _)| *i == id) {
                map.remove(&task_key);
            }
            result
        });
        let image = key.0.clone();
        let pull = async move {
            task.await.unwrap_or_else(|e| {
                Err(Arc::new(ImageError::Registry {
                    image,
                    kind: ErrorKind::Internal,
                    reason: format!("the pull task failed: {e}"),
                }))
            })
        }
        .boxed()
        .shared();
        map.insert(key, (id, pull.clone()));
        pull
    }
}

/// Runs blocking store work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(io_err("running", Path::new("a blocking store task"))(
            io::Error::other(e),
        ))
    })
}
