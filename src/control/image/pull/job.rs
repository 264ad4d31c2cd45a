//! One pull, in order: log in, resolve the manifest, stage the documents,
//! fetch and check the config (a config for another platform stops the pull
//! before any layer is fetched), fetch the missing layers a few at a time,
//! then unpack and commit. Each step's own module does the work.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};

use super::super::error::ImageError;
use super::super::layout::BlobDirs;
use super::super::oci::{parse_json, ConfigFile, Descriptor, WANT_ARCH, WANT_OS};
use super::super::reference::Reference;
use super::super::registry::{Credentials, RegistryConfig};
use super::super::store::ImageStore;
use super::super::types::Image;
use super::blocking;
use super::commit::commit;
use super::fetch::{fetch_blob, Progress};
use super::manifest;
use super::remote::Remote;

/// Blobs downloaded at once.
const PARALLEL_BLOBS: usize = 3;

/// One pull, from the registry to the store.
pub(super) struct PullJob {
    pub(super) store: Arc<ImageStore>,
    pub(super) registries: RegistryConfig,
    pub(super) reference: Reference,
    pub(super) credentials: Credentials,
    /// The puller's count of bytes fetched (`Puller::bytes_fetched`).
    pub(super) fetched: Arc<std::sync::atomic::AtomicU64>,
}

impl PullJob {
    pub(super) async fn run(self) -> Result<Image, ImageError> {
        let name = self.reference.to_string();
        let started = Instant::now();
        let remote = Remote::new(&self.registries, &self.reference, &self.credentials)?;
        tracing::info!(image = %name, registry = %remote.registry,
            scheme = self.registries.scheme_for(&remote.registry), "pulling image");
        remote.login().await?;

        // Down the indexes to the linux/amd64 manifest.
        let (documents, manifest) = manifest::resolve(&remote, &self.reference).await?;
        let top = documents[0].0.clone();
        let manifest_desc = documents.last().expect("a manifest").0.clone();

        let store = Arc::clone(&self.store);
        let staging = Arc::new(blocking(move || store.staging()).await?);
        for (desc, bytes) in &documents {
            let (staging, desc, bytes, image) = (
                Arc::clone(&staging),
                desc.clone(),
                bytes.clone(),
                name.clone(),
            );
            blocking(move || staging.write_blob(&desc, &bytes[..], &image)).await?;
        }

        // The config first: a config for another platform stops the pull
        // before any layer is fetched.
        let config_desc = manifest.config.clone();
        let mut wanted: Vec<Descriptor> = Vec::new();
        let mut seen = HashSet::new();
        for blob in std::iter::once(&config_desc).chain(&manifest.layers) {
            if seen.insert(blob.digest.clone()) && !self.store.has_blob(&blob.digest) {
                wanted.push(blob.clone());
            }
        }
        let progress = Arc::new(Progress::new(&name, &wanted, Arc::clone(&self.fetched)));
        if wanted
            .first()
            .is_some_and(|d| d.digest == config_desc.digest)
        {
            fetch_blob(&remote, &staging, wanted.remove(0), &progress).await?;
        }
        let config = {
            let (store, staging, desc, image) = (
                Arc::clone(&self.store),
                Arc::clone(&staging),
                config_desc.clone(),
                name.clone(),
            );
            blocking(move || {
                BlobDirs::new([staging.path(), store.oci_dir().as_path()])
                    .read_verified(&desc, &image, "config")
            })
            .await?
        };
        let config: ConfigFile =
            parse_json(&config, &name, &format!("config {}", config_desc.digest))?;
        if !config.os.is_empty()
            && !config.architecture.is_empty()
            && (config.os != WANT_OS || config.architecture != WANT_ARCH)
        {
            return Err(ImageError::invalid_image(
                &name,
                format!(
                    "no linux/amd64 image: manifest {} is for {}/{}",
                    manifest_desc.digest, config.os, config.architecture
                ),
            ));
        }

        futures::stream::iter(wanted)
            .map(|blob| fetch_blob(&remote, &staging, blob, &progress))
            .buffer_unordered(PARALLEL_BLOBS)
            .try_collect::<Vec<()>>()
            .await?;

        // Every blob is here and verified: unpack, then commit.
        let staging = Arc::try_unwrap(staging)
            .map_err(|_| ImageError::invalid_image(&name, "internal: staging area still in use"))?;
        let (store, image) = (Arc::clone(&self.store), name.clone());
        let stored = blocking(move || commit(&store, staging, top, &image)).await?;
        tracing::info!(
            image = %name,
            id = %stored.id,
            digest = %documents[0].0.digest,
            bytes_fetched = progress.done_bytes.load(Ordering::Relaxed),
            blobs_fetched = progress.blobs_done.load(Ordering::Relaxed),
            ms = started.elapsed().as_millis() as u64,
            "pulled image"
        );
        Ok(stored)
    }
}
