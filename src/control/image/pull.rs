//! [`Puller`]: pulling images from registries into the store, the way the
//! kubelet's `PullImage` and `vimanad image pull` want it.
//!
//! One pull: resolve the reference to a manifest (through image indexes, to
//! linux/amd64), then fetch the config and the layers the store does not
//! hold yet into a [`Staging`] area, each blob's size and digest verified as
//! it is written; then unpack the root filesystem in a work dir (so a layer
//! that would escape the root fails the pull, not a later start), and only
//! then commit with [`ImageStore::insert`]. Any failure drops the staging
//! area and the work dir: the store is unchanged.
//!
//! Concurrent pulls of one reference (with the same credentials) share one
//! task; the task runs on its own, so a caller that gives up (the kubelet's
//! deadline) does not waste the work, and its retry joins the pull in flight.
//! The network side is async (tokio); file work runs on the blocking pool.

use std::collections::{HashMap, HashSet};
use std::fs::{self, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use oci_client::RegistryOperation;

use super::error::{io_err, ErrorKind, ImageError};
use super::fsutil::{fsync_dir, WorkDir};
use super::insert::{NewImage, Staging};
use super::layout::{resolve, BlobDirs, Selected};
use super::oci::{
    blob_kind, parse_json, ConfigFile, Descriptor, Index, Manifest, MAX_JSON_BLOB, MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_MANIFEST, WANT_ARCH, WANT_OS,
};
use super::reference::Reference;
use super::registry::{oci_reference, Credentials, Doing, RegistryConfig};
use super::store::{id_hex, ImageStore};
use super::types::Image;
use super::unpack::apply_layer;

/// What a manifest request accepts.
const ACCEPT: &[&str] = &[
    MT_OCI_MANIFEST,
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_DOCKER_LIST,
];
const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Nested image indexes followed at most.
const MAX_INDEX_DEPTH: usize = 4;
/// Blobs downloaded at once.
const PARALLEL_BLOBS: usize = 3;
/// Chunks buffered between the network and the file being written.
const CHANNEL_CHUNKS: usize = 16;
/// Progress is logged at most this often (and once per blob).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

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
}

impl Puller {
    pub fn new(store: Arc<ImageStore>, registries: RegistryConfig) -> Puller {
        Puller {
            store,
            registries,
            in_flight: Arc::default(),
            next_id: AtomicU64::new(0),
        }
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

/// One pull, from the registry to the store.
struct PullJob {
    store: Arc<ImageStore>,
    registries: RegistryConfig,
    reference: Reference,
    credentials: Credentials,
}

/// The registry side of one pull: client, reference, auth, and what to say
/// when something fails.
struct Remote {
    client: oci_client::Client,
    reference: oci_client::Reference,
    auth: oci_client::secrets::RegistryAuth,
    registry: String,
    image: String,
    anonymous: bool,
}

impl Remote {
    fn doing(&self, what: impl Into<String>) -> Doing<'_> {
        Doing {
            image: &self.image,
            registry: &self.registry,
            what: what.into(),
            anonymous: self.anonymous,
        }
    }

    fn fail(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(oci_client::errors::OciDistributionError) -> ImageError + '_ {
        let what = what.into();
        move |e| self.doing(what).fail(e)
    }

    /// Fetches a manifest or index by tag or digest: its bytes and its
    /// descriptor (digest computed here, media type from the document).
    async fn manifest(
        &self,
        reference: &oci_client::Reference,
        what: &str,
    ) -> Result<(Bytes, Descriptor), ImageError> {
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, ACCEPT)
            .await
            .map_err(self.fail(format!("fetching {what}")))?;
        if bytes.len() as u64 > MAX_JSON_BLOB {
            return Err(ImageError::invalid_image(
                &self.image,
                format!("{what}: {} bytes is too big", bytes.len()),
            ));
        }
        let desc = describe_document(&bytes, &self.image, what)?;
        Ok((bytes, desc))
    }
}

/// A descriptor for a manifest or index fetched by itself: digest and size
/// of the bytes, media type from the document (or its shape).
fn describe_document(bytes: &[u8], image: &str, what: &str) -> Result<Descriptor, ImageError> {
    let value: serde_json::Value = parse_json(bytes, image, what)?;
    let version = value.get("schemaVersion").and_then(|v| v.as_u64());
    if version != Some(2) {
        return Err(ImageError::invalid_image(
            image,
            format!(
                "{what}: schema version {} is not supported (only 2: OCI and docker v2 manifests)",
                version.map_or("none".to_string(), |v| v.to_string())
            ),
        ));
    }
    let media_type = match value.get("mediaType").and_then(|v| v.as_str()) {
        Some(mt) => mt.to_string(),
        None if value.get("manifests").is_some() => MT_OCI_INDEX.to_string(),
        None => MT_OCI_MANIFEST.to_string(),
    };
    if !ACCEPT.contains(&media_type.as_str()) {
        return Err(ImageError::invalid_image(
            image,
            format!("{what}: unsupported media type {media_type:?}"),
        ));
    }
    Ok(Descriptor::new(&media_type, bytes))
}

fn platforms_of(index: &Index) -> String {
    let platforms: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|m| m.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if platforms.is_empty() {
        "none".into()
    } else {
        platforms.join(", ")
    }
}

impl PullJob {
    async fn run(self) -> Result<Image, ImageError> {
        let name = self.reference.to_string();
        let started = Instant::now();
        let reference = oci_reference(&self.reference)?;
        let remote = Remote {
            client: self.registries.client(),
            auth: self.credentials.to_auth(&name)?,
            registry: reference.resolve_registry().to_string(),
            reference,
            image: name.clone(),
            anonymous: self.credentials.is_anonymous(),
        };
        tracing::info!(image = %name, registry = %remote.registry,
            scheme = self.registries.scheme_for(&remote.registry), "pulling image");
        remote
            .client
            .auth(&remote.reference, &remote.auth, RegistryOperation::Pull)
            .await
            .map_err(remote.fail("reaching the registry API (/v2/)"))?;

        // Down the indexes to the linux/amd64 manifest.
        let top_what = match self.reference.digest() {
            Some(d) => format!("manifest {d}"),
            None => format!("manifest {}", self.reference.tag().unwrap_or("latest")),
        };
        let (top_bytes, top) = remote.manifest(&remote.reference, &top_what).await?;
        if let Some(want) = self.reference.digest() {
            if top.digest != want {
                return Err(ImageError::DigestMismatch {
                    image: name,
                    what: top_what,
                    expected: want.to_string(),
                    actual: top.digest,
                });
            }
        }
        let mut documents = vec![(top.clone(), top_bytes)];
        let manifest = loop {
            let (desc, bytes) = documents.last().expect("at least the top document");
            let what = format!("{} {}", blob_kind(desc), desc.digest);
            if !desc.is_index() {
                break parse_json::<Manifest>(bytes, &name, &what)?;
            }
            if documents.len() > MAX_INDEX_DEPTH {
                return Err(ImageError::invalid_image(
                    &name,
                    format!("image indexes nested deeper than {MAX_INDEX_DEPTH}"),
                ));
            }
            let index: Index = parse_json(bytes, &name, &what)?;
            let Some(child) = index.pick_platform().cloned() else {
                return Err(ImageError::invalid_image(
                    &name,
                    format!(
                        "no linux/amd64 image: {what} has only {}",
                        platforms_of(&index)
                    ),
                ));
            };
            let child_what = format!("manifest {}", child.digest);
            child.hex(&name)?;
            let by_digest = remote.reference.clone_with_digest(child.digest.clone());
            let (bytes, got) = remote.manifest(&by_digest, &child_what).await?;
            if got.digest != child.digest || got.size != child.size {
                return Err(ImageError::DigestMismatch {
                    image: name,
                    what: child_what,
                    expected: format!("{} ({} bytes)", child.digest, child.size),
                    actual: format!("{} ({} bytes)", got.digest, got.size),
                });
            }
            documents.push((child, bytes));
        };
        let manifest_desc = documents.last().expect("a manifest").0.clone();
        check_manifest(&manifest, &manifest_desc, &name)?;

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
        let progress = Arc::new(Progress::new(&name, &wanted));
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

/// What can be checked in a manifest before anything is downloaded.
fn check_manifest(m: &Manifest, desc: &Descriptor, image: &str) -> Result<(), ImageError> {
    let cfg = &m.config;
    if cfg.media_type != MT_OCI_CONFIG && cfg.media_type != MT_DOCKER_CONFIG {
        return Err(ImageError::invalid_image(
            image,
            format!(
                "manifest {}: unsupported config media type {:?} (not a container image)",
                desc.digest, cfg.media_type
            ),
        ));
    }
    cfg.hex(image)?;
    super::oci::check_layers(&m.layers, image)
}

/// Downloads one blob into staging, verifying size and digest as it is
/// written.
async fn fetch_blob(
    remote: &Remote,
    staging: &Arc<Staging>,
    desc: Descriptor,
    progress: &Progress,
) -> Result<(), ImageError> {
    let what = format!("{} {}", blob_kind(&desc), desc.digest);
    let sized = remote
        .client
        .pull_blob_stream(&remote.reference, desc.digest.as_str())
        .await
        .map_err(remote.fail(format!("fetching {what}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let writer = {
        let (staging, desc, image) = (Arc::clone(staging), desc.clone(), remote.image.clone());
        tokio::task::spawn_blocking(move || {
            staging.write_blob(&desc, ChannelReader::new(rx), &image)
        })
    };
    let mut stream = sized.stream;
    let mut received = 0u64;
    let mut cut: Option<io::Error> = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                received += chunk.len() as u64;
                progress.add(chunk.len() as u64);
                if tx.send(chunk).await.is_err() {
                    break; // the writer stopped: too much data, or a write error
                }
            }
            // oci-client's own digest check; ours (in `write_blob`) names
            // the expected and actual digests, so let it speak.
            Err(e) if is_digest_error(&e) => break,
            Err(e) => {
                cut = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| {
        ImageError::invalid_image(&remote.image, format!("{what}: writer failed: {e}"))
    })?;
    match (written, cut) {
        (Ok(_), _) => {
            progress.blob_done(&what);
            Ok(())
        }
        (Err(_), Some(cut)) => Err(ImageError::Registry {
            image: remote.image.clone(),
            kind: ErrorKind::Unavailable,
            reason: format!(
                "registry {}: fetching {what}: the download was cut short after {received} of {} bytes: {}",
                remote.registry,
                desc.size,
                cause_chain(&cut)
            ),
        }),
        (Err(e), None) => Err(e),
    }
}

fn is_digest_error(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>())
}

fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The blocking side of a download: chunks from the network task.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Bytes and blobs done, logged per blob and at most once a second.
struct Progress {
    image: String,
    total_bytes: u64,
    total_blobs: usize,
    done_bytes: AtomicU64,
    blobs_done: AtomicUsize,
    last_log: Mutex<Instant>,
}

impl Progress {
    fn new(image: &str, wanted: &[Descriptor]) -> Progress {
        Progress {
            image: image.to_string(),
            total_bytes: wanted.iter().map(|d| d.size).sum(),
            total_blobs: wanted.len(),
            done_bytes: AtomicU64::new(0),
            blobs_done: AtomicUsize::new(0),
            last_log: Mutex::new(Instant::now()),
        }
    }

    fn add(&self, n: u64) {
        let done = self.done_bytes.fetch_add(n, Ordering::Relaxed) + n;
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= PROGRESS_EVERY {
            *last = Instant::now();
            tracing::info!(
                image = %self.image,
                bytes_done = done,
                bytes_total = self.total_bytes,
                blobs_done = self.blobs_done.load(Ordering::Relaxed),
                blobs_total = self.total_blobs,
                "pull progress"
            );
        }
    }

    fn blob_done(&self, what: &str) {
        let blobs = self.blobs_done.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            image = %self.image,
            blob = what,
            bytes_done = self.done_bytes.load(Ordering::Relaxed),
            bytes_total = self.total_bytes,
            blobs_done = blobs,
            blobs_total = self.total_blobs,
            "pull progress"
        );
    }
}

/// Unpacks the root filesystem from the staged (and stored) blobs, commits
/// the image, then moves the root filesystem into place. Blocking.
fn commit(
    store: &ImageStore,
    staging: Staging,
    top: Descriptor,
    image: &str,
) -> Result<Image, ImageError> {
    let both = BlobDirs::new([staging.path(), store.oci_dir().as_path()]);
    let resolved = match resolve(&both, &top, image)? {
        Selected::Image(r) => *r,
        Selected::OtherPlatform(why) => {
            return Err(ImageError::invalid_image(
                image,
                format!("no linux/amd64 image: {why}"),
            ))
        }
    };
    let target = store.rootfs_dir().join(id_hex(resolved.id())?);
    let unpacked = if super::fsutil::is_dir(&target) {
        None
    } else {
        let work = {
            let _lock = store.lock_exclusive()?;
            WorkDir::create(&store.tmp_dir())?
        };
        let root = work.path().join("rootfs");
        fs::create_dir(&root).map_err(io_err("creating", &root))?;
        fs::set_permissions(&root, Permissions::from_mode(0o755))
            .map_err(io_err("setting mode of", &root))?;
        for (layer, diff_id) in resolved.layers.iter().zip(&resolved.config.rootfs.diff_ids) {
            let blob = both.path(layer, image, "layer")?;
            apply_layer(&root, &blob, layer, diff_id, image)?;
        }
        super::fsutil::syncfs(&root)?;
        Some((work, root))
    };
    let inserted = store.insert(
        staging,
        &[NewImage {
            top,
            names: vec![image.to_string()],
        }],
    )?;
    let stored = inserted
        .into_iter()
        .find(|i| i.id == resolved.id())
        .ok_or_else(|| ImageError::NotFound {
            reference: image.to_string(),
        })?;
    if let Some((_work, root)) = unpacked {
        let _lock = store.lock_exclusive()?;
        let still_there = store
            .load(&store.read_entries()?)
            .iter()
            .any(|l| l.image.id() == stored.id);
        if !super::fsutil::is_dir(&target) && still_there {
            fs::rename(&root, &target).map_err(io_err("renaming into place", &target))?;
            fsync_dir(&store.rootfs_dir())?;
        }
    }
    Ok(stored)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_described_from_their_bytes() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        let d = describe_document(index, "x", "manifest 1").unwrap();
        assert_eq!(d.media_type, MT_OCI_INDEX);
        assert_eq!(d.size, index.len() as u64);
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#;
        assert_eq!(
            describe_document(docker, "x", "m").unwrap().media_type,
            MT_DOCKER_MANIFEST
        );
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        let err = describe_document(v1, "x", "manifest 1").unwrap_err();
        assert!(
            err.to_string()
                .contains("schema version 1 is not supported"),
            "{err}"
        );
        let odd =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#;
        assert!(describe_document(odd, "x", "m")
            .unwrap_err()
            .to_string()
            .contains("unsupported media type"));
    }

    #[test]
    fn platform_choice() {
        let child = |os: &str, arch: &str| {
            let mut d = Descriptor::new(MT_OCI_MANIFEST, format!("{os}{arch}").as_bytes());
            d.platform = Some(super::super::oci::Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: None,
            });
            d
        };
        let index = Index::new(vec![child("linux", "arm64"), child("linux", "amd64")]);
        assert_eq!(index.pick_platform(), Some(&index.manifests[1]));
        let arm = Index::new(vec![child("linux", "arm64"), child("windows", "amd64")]);
        assert_eq!(arm.pick_platform(), None);
        assert_eq!(platforms_of(&arm), "linux/arm64, windows/amd64");
    }

    #[test]
    fn channel_reader_reassembles_chunks() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let feeder = std::thread::spawn(move || {
            for c in [&b"ab"[..], b"", b"cde"] {
                tx.blocking_send(Bytes::from_static(c)).unwrap();
            }
        });
        let mut out = Vec::new();
        ChannelReader::new(rx).read_to_end(&mut out).unwrap();
        feeder.join().unwrap();
        assert_eq!(out, b"abcde");
    }
}
