//! [`push`]: sends an image to a registry: one from an OCI image layout
//! (what `vimanad image pack` writes, a directory or a tar) or one from the
//! store, so images get to a registry without other tools.
//!
//! What is pushed is the tree under the chosen descriptor: layers and
//! configs first (skipped when the registry has them), then manifests by
//! digest, then the top one under the destination's tag. An image index
//! whose children are not all present (a pulled multi-platform image keeps
//! only linux/amd64) is pushed as its linux/amd64 manifest alone. Every blob
//! is verified against its digest before it leaves.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::RegistryOperation;

use super::error::{io_err, ImageError};
use super::fsutil::{StoreLock, WorkDir};
use super::layout::{
    extract_layout_tar, parse_doc, read_index, resolve, verify_file, BlobDirs, Doc, Selected,
};
use super::oci::{blob_kind, Descriptor, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME};
use super::reference::Reference;
use super::registry::{oci_reference, Credentials, Doing, RegistryConfig};
use super::store::ImageStore;

/// Nested image indexes followed at most.
const MAX_INDEX_DEPTH: usize = 4;
/// Read size when streaming a blob out.
const CHUNK: usize = 1 << 20;

/// What to push.
#[derive(Debug, Clone)]
pub enum PushSource {
    /// An OCI image layout: a directory, or a tar of one (gzipped or not).
    /// With several entries in its index.json, the one annotated with the
    /// destination name (or its tag) is taken.
    Layout(PathBuf),
    /// An image of the store, by name, `name@digest` or id.
    Stored {
        store: ImageStore,
        reference: String,
    },
}

/// What [`push`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The normalized destination reference.
    pub name: String,
    /// `sha256:...` of the top manifest (or index) now in the registry.
    pub digest: String,
    /// Blobs uploaded, and blobs the registry already had.
    pub blobs_uploaded: usize,
    pub blobs_present: usize,
}

/// Everything to send, read and verified from the source.
struct Plan {
    /// Keeps an extracted tar or the store's shared lock alive.
    _work: Option<WorkDir>,
    _lock: Option<StoreLock>,
    /// Configs and layers, each once.
    blobs: Vec<(Descriptor, PathBuf)>,
    /// Manifests and indexes, children first, the top one last.
    manifests: Vec<(Descriptor, Vec<u8>)>,
}

/// Pushes `source` to the registry as `name` (e.g.
/// `127.0.0.1:5000/example/echo:1.0`), over HTTPS unless the registry is
/// listed as insecure. Must be called within a tokio runtime.
pub async fn push(
    source: PushSource,
    name: &str,
    registries: &RegistryConfig,
    credentials: &Credentials,
) -> Result<Pushed, ImageError> {
    let r = Reference::parse(name)?.with_default_tag();
    let label = r.to_string();
    let plan = {
        let label = label.clone();
        tokio::task::spawn_blocking(move || make_plan(source, &label))
            .await
            .unwrap_or_else(|e| {
                Err(io_err("running", Path::new("the push planner"))(
                    std::io::Error::other(e),
                ))
            })?
    };
    let top = plan.manifests.last().expect("a top manifest").0.clone();
    if let Some(want) = r.digest() {
        if want != top.digest {
            return Err(ImageError::InvalidArgument(format!(
                "cannot push to {label}: the image's digest is {}",
                top.digest
            )));
        }
    }
    let reference = oci_reference(&r)?;
    let registry = reference.resolve_registry().to_string();
    let doing = |what: String| Doing {
        image: &label,
        registry: &registry,
        what,
        anonymous: credentials.is_anonymous(),
    };
    let client = registries.client();
    let auth = credentials.to_auth(&label)?;
    tracing::info!(image = %label, registry = %registry,
        scheme = registries.scheme_for(&registry), "pushing image");
    client
        .auth(&reference, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| doing("reaching the registry API (/v2/)".into()).fail(e))?;
    let (mut uploaded, mut present) = (0, 0);
    for (desc, path) in &plan.blobs {
        let what = format!("{} {}", blob_kind(desc), desc.digest);
        let exists = client
            .blob_exists(&reference, &desc.digest)
            .await
            .map_err(|e| doing(format!("checking {what}")).fail(e))?;
        if exists {
            present += 1;
            continue;
        }
        let file = tokio::fs::File::open(path)
            .await
            .map_err(io_err("opening", path))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK)
            .map_err(OciDistributionError::from);
        client
            .push_blob_stream(&reference, stream, &desc.digest, Some(desc.size))
            .await
            .map_err(|e| doing(format!("uploading {what}")).fail(e))?;
        uploaded += 1;
        tracing::info!(image = %label, blob = %what, "uploaded");
    }
    let last = plan.manifests.len() - 1;
    for (i, (desc, bytes)) in plan.manifests.iter().enumerate() {
        let target = if i == last {
            reference.clone()
        } else {
            reference.clone_with_digest(desc.digest.clone())
        };
        let content_type = http::HeaderValue::from_str(&desc.media_type).map_err(|_| {
            ImageError::invalid_image(
                &label,
                format!("{}: bad media type {:?}", desc.digest, desc.media_type),
            )
        })?;
        let what = format!("{} {}", blob_kind(desc), desc.digest);
        client
            .push_manifest_raw(&target, bytes.clone(), content_type)
            .await
            .map_err(|e| doing(format!("uploading {what}")).fail(e))?;
    }
    tracing::info!(image = %label, digest = %top.digest, uploaded, present, "pushed image");
    Ok(Pushed {
        name: label,
        digest: top.digest,
        blobs_uploaded: uploaded,
        blobs_present: present,
    })
}

/// Reads the source and lists what to send. Blocking.
fn make_plan(source: PushSource, name: &str) -> Result<Plan, ImageError> {
    match source {
        PushSource::Layout(path) => {
            let label = path.display().to_string();
            let meta = fs::metadata(&path).map_err(io_err("reading", &path))?;
            let (root, work) = if meta.is_dir() {
                (path.clone(), None)
            } else {
                let work = WorkDir::create(&std::env::temp_dir())?;
                let root = work.path().join("layout");
                extract_layout_tar(&path, &root, &label)?;
                (root, Some(work))
            };
            let index = read_index(&root, &label)?;
            let top = choose_entry(&index.manifests, name, &label)?;
            let mut plan = Plan {
                _work: work,
                _lock: None,
                blobs: Vec::new(),
                manifests: Vec::new(),
            };
            add_top(&BlobDirs::new([root.as_path()]), &top, name, &mut plan)?;
            Ok(plan)
        }
        PushSource::Stored { store, reference } => {
            let lock = store.lock_shared()?;
            let image = store
                .find(&reference)?
                .ok_or_else(|| ImageError::NotFound {
                    reference: reference.clone(),
                })?;
            let wanted = Reference::parse(&reference)
                .ok()
                .map(|r| r.with_default_tag().to_string());
            let loaded = store.load(&store.read_entries()?);
            let mut candidates = loaded.iter().filter(|l| l.image.id() == image.id);
            let first = candidates.clone().next();
            let entry = candidates
                .find(|l| Some(&l.name) == wanted.as_ref())
                .or(first)
                .ok_or_else(|| ImageError::NotFound {
                    reference: reference.clone(),
                })?;
            let top = entry.image.top.clone();
            let mut plan = Plan {
                _work: None,
                _lock: Some(lock),
                blobs: Vec::new(),
                manifests: Vec::new(),
            };
            add_top(&store.blobs(), &top, name, &mut plan)?;
            Ok(plan)
        }
    }
}

/// The index.json entry to push: the only one, or the one named `name`.
fn choose_entry(entries: &[Descriptor], name: &str, label: &str) -> Result<Descriptor, ImageError> {
    let strip = |d: &Descriptor| Descriptor {
        annotations: None,
        platform: None,
        ..d.clone()
    };
    if let [only] = entries {
        return Ok(strip(only));
    }
    let tag = Reference::parse(name)
        .ok()
        .and_then(|r| r.tag().map(str::to_string));
    let named = |d: &&Descriptor| {
        [ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME]
            .iter()
            .filter_map(|k| d.annotation(k))
            .any(|a| {
                Reference::parse(a)
                    .map(|r| r.with_default_tag().to_string() == name)
                    .unwrap_or(false)
                    || Some(a) == tag.as_deref()
            })
    };
    let mut matching = entries.iter().filter(named);
    match (matching.next(), matching.next()) {
        (Some(d), None) => Ok(strip(d)),
        _ => Err(ImageError::InvalidArgument(format!(
            "{label}: the layout holds {} images and not exactly one is named {name:?}",
            entries.len()
        ))),
    }
}

/// Adds the tree under `top`, or, for an index missing some children, its
/// linux/amd64 manifest alone.
fn add_top(
    blobs: &BlobDirs,
    top: &Descriptor,
    name: &str,
    plan: &mut Plan,
) -> Result<(), ImageError> {
    if complete(blobs, top, name, 0)? {
        let mut seen = HashSet::new();
        return add_tree(blobs, top, name, 0, plan, &mut seen);
    }
    match resolve(blobs, top, name)? {
        Selected::Image(r) => {
            let manifest = r.chain.last().expect("a manifest").clone();
            tracing::warn!(image = name, index = %top.digest, manifest = %manifest.digest,
                "the index is incomplete: pushing its linux/amd64 manifest alone");
            let mut seen = HashSet::new();
            add_tree(blobs, &manifest, name, 0, plan, &mut seen)
        }
        Selected::OtherPlatform(why) => Err(ImageError::invalid_image(
            name,
            format!(
                "index {} is incomplete and has no linux/amd64 image: {why}",
                top.digest
            ),
        )),
    }
}

/// Whether every index child under `desc` is present (layers are checked
/// later, with a clearer error).
fn complete(
    blobs: &BlobDirs,
    desc: &Descriptor,
    name: &str,
    depth: usize,
) -> Result<bool, ImageError> {
    if blobs.find(desc.hex(name)?).is_none() {
        return Ok(false);
    }
    if !desc.is_index() {
        return Ok(true);
    }
    if depth > MAX_INDEX_DEPTH {
        return Err(deep(name));
    }
    let bytes = blobs.read_verified(desc, name, "index")?;
    match parse_doc(desc, &bytes, name)? {
        Doc::Index(index) => {
            for child in &index.manifests {
                if !complete(blobs, child, name, depth + 1)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Doc::Manifest(_) => Ok(true),
    }
}

fn add_tree(
    blobs: &BlobDirs,
    desc: &Descriptor,
    name: &str,
    depth: usize,
    plan: &mut Plan,
    seen: &mut HashSet<String>,
) -> Result<(), ImageError> {
    if depth > MAX_INDEX_DEPTH {
        return Err(deep(name));
    }
    if !seen.insert(desc.digest.clone()) {
        return Ok(());
    }
    let kind = blob_kind(desc);
    let bytes = blobs.read_verified(desc, name, kind)?;
    let desc = Descriptor {
        annotations: None,
        platform: None,
        ..desc.clone()
    };
    match parse_doc(&desc, &bytes, name)? {
        Doc::Index(index) => {
            for child in &index.manifests {
                add_tree(blobs, child, name, depth + 1, plan, seen)?;
            }
        }
        Doc::Manifest(m) => {
            for blob in std::iter::once(&m.config).chain(&m.layers) {
                if !seen.insert(blob.digest.clone()) {
                    continue;
                }
                let what = blob_kind(blob);
                let path = blobs.path(blob, name, what)?;
                verify_file(&path, blob, name, what)?;
                plan.blobs.push((blob.clone(), path));
            }
        }
    }
    plan.manifests.push((desc, bytes));
    Ok(())
}

fn deep(name: &str) -> ImageError {
    ImageError::invalid_image(
        name,
        format!("image indexes nested deeper than {MAX_INDEX_DEPTH}"),
    )
}
