//! [`ImageStore`]: the on-disk store, its layout and its reads (`list`,
//! `find`, `usage`), removal and garbage collection.
//!
//! Layout under `dir`: `lock` (flock: exclusive for every mutation, shared
//! for reads), `oci/` (a standard OCI image layout: one index.json entry per
//! name, annotated with `org.opencontainers.image.ref.name`), `rootfs/<config
//! hex>/` (unpacked root filesystems), `tmp/` (work dirs). Adding images is
//! in `insert.rs`, unpacking in `rootfs.rs`/`unpack.rs`; no CRI types here.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::error::{io_err, ImageError};
use super::fsutil::{
    clean_stale_workdirs, fsync_dir, tree_usage, write_atomic, StoreLock, WorkDir,
};
use super::layout::{parse_doc, read_index, resolve, BlobDirs, Doc, Resolved, Selected};
use super::oci::{digest_hex, to_json, Descriptor, Index, LayoutFile, ANNOTATION_REF_NAME};
use super::reference::{is_lower_hex, Reference};
use super::types::{FsUsage, Image, ImageConfig};

/// Shortest id prefix `find` accepts.
const MIN_ID_PREFIX: usize = 12;

/// The local image store. Cheap to clone paths from; holds no cache: every
/// read goes to index.json afresh, so another process's writes are seen.
///
/// All methods block (file I/O, `flock`): call them from a blocking context.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// One index.json entry: a name and the descriptor it points to.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: String,
    pub desc: Descriptor,
}

/// An entry resolved to its image.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub name: String,
    pub image: Resolved,
}

/// What `find`/`remove` were asked for.
enum Query {
    Id(String),
    /// Hex prefix; when it is also a valid name, the name is tried first.
    Prefix(String, Option<Reference>),
    Name(Reference),
}

impl ImageStore {
    /// Opens (creating if needed) a store rooted at `dir`.
    pub fn open(dir: &Path) -> Result<ImageStore, ImageError> {
        let store = ImageStore {
            dir: dir.to_path_buf(),
        };
        for d in [store.blob_dir(), store.rootfs_dir(), store.tmp_dir()] {
            fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        let _lock = store.lock_exclusive()?;
        let layout = store.oci_dir().join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, &to_json(&LayoutFile::current())?)?;
        }
        if !store.index_path().exists() {
            store.write_entries(&[])?;
        }
        clean_stale_workdirs(&store.tmp_dir());
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn oci_dir(&self) -> PathBuf {
        self.dir.join("oci")
    }
    pub(crate) fn blob_dir(&self) -> PathBuf {
        self.oci_dir().join("blobs").join("sha256")
    }
    pub(crate) fn rootfs_dir(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }
    fn index_path(&self) -> PathBuf {
        self.oci_dir().join("index.json")
    }
    pub(crate) fn blobs(&self) -> BlobDirs {
        BlobDirs::new([self.oci_dir().as_path()])
    }
    pub(crate) fn lock_exclusive(&self) -> Result<StoreLock, ImageError> {
        StoreLock::exclusive(&self.dir.join("lock"))
    }
    pub(crate) fn lock_shared(&self) -> Result<StoreLock, ImageError> {
        StoreLock::shared(&self.dir.join("lock"))
    }

    fn label(&self) -> String {
        self.dir.display().to_string()
    }

    /// index.json, read fresh. Entries without a ref.name are not ours and
    /// are ignored; a duplicated name keeps its first entry.
    pub(crate) fn read_entries(&self) -> Result<Vec<Entry>, ImageError> {
        let index = read_index(&self.oci_dir(), &self.label())
            .map_err(|e| ImageError::corrupt(&self.dir, e.to_string()))?;
        let mut seen = HashSet::new();
        Ok(index
            .manifests
            .into_iter()
            .filter_map(|desc| {
                let name = desc.annotation(ANNOTATION_REF_NAME)?.to_string();
                seen.insert(name.clone()).then_some(Entry { name, desc })
            })
            .collect())
    }

    /// Writes index.json atomically, entries sorted by name.
    pub(crate) fn write_entries(&self, entries: &[Entry]) -> Result<(), ImageError> {
        let mut manifests: Vec<Descriptor> = entries
            .iter()
            .map(|e| {
                let mut desc = e.desc.clone();
                desc.annotations = Some(BTreeMap::from([(
                    ANNOTATION_REF_NAME.to_string(),
                    e.name.clone(),
                )]));
                desc
            })
            .collect();
        manifests.sort_by(|a, b| a.annotations.cmp(&b.annotations));
        write_atomic(&self.index_path(), &to_json(&Index::new(manifests))?)
    }

    /// Resolves every entry; an entry that cannot be resolved is logged and
    /// left out (one broken image must not hide the others).
    pub(crate) fn load(&self, entries: &[Entry]) -> Vec<Loaded> {
        let blobs = self.blobs();
        entries
            .iter()
            .filter_map(|e| match resolve(&blobs, &e.desc, &e.name) {
                Ok(Selected::Image(image)) => Some(Loaded {
                    name: e.name.clone(),
                    image: *image,
                }),
                Ok(Selected::OtherPlatform(why)) => {
                    tracing::warn!(image = %e.name, "skipping stored image: {why}");
                    None
                }
                Err(err) => {
                    tracing::warn!(image = %e.name, error = %err, "skipping broken stored image");
                    None
                }
            })
            .collect()
    }

    fn load_all(&self) -> Result<Vec<Loaded>, ImageError> {
        let _lock = self.lock_shared()?;
        let entries = self.read_entries()?;
        Ok(self.load(&entries))
    }

    /// Every image in the store, sorted by id.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        Ok(images_of(&self.load_all()?))
    }

    /// Finds an image by name (normalized), full id `sha256:<hex>`, bare
    /// 64-hex id, unique id prefix (at least 12 hex), or `name@sha256:<digest>`
    /// (the digest the name points to, or the platform manifest's). A hex
    /// string that is also a stored name finds that name first. A prefix
    /// matching several images is [`ImageError::Ambiguous`].
    pub fn find(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let query = parse_query(reference)?;
        let loaded = self.load_all()?;
        let Some(id) = match_id(&query, &loaded, reference)? else {
            return Ok(None);
        };
        Ok(images_of(&loaded).into_iter().find(|i| i.id == id))
    }

    /// Removes an image. By id (or prefix): every name of it. By name: only
    /// that name. By `name@digest`: every name of that repository pointing to
    /// that digest. Blobs and the rootfs go once nothing references them
    /// (the caller must not remove an image a container still uses: its
    /// rootfs is deleted). Ok(false) when nothing matched.
    pub fn remove(&self, reference: &str) -> Result<bool, ImageError> {
        let mut query = parse_query(reference)?;
        let lock = self.lock_exclusive()?;
        let entries = self.read_entries()?;
        let loaded = self.load(&entries);
        if let Query::Prefix(_, Some(r)) = &query {
            // A hex string that is also a name: the name wins, as in `find`.
            if entries
                .iter()
                .any(|e| e.name == r.clone().with_default_tag().to_string())
            {
                query = Query::Name(r.clone());
            }
        }
        let doomed: HashSet<String> = match &query {
            Query::Name(r) if r.digest().is_none() => {
                let name = r.clone().with_default_tag().to_string();
                entries
                    .iter()
                    .filter(|e| e.name == name)
                    .map(|e| e.name.clone())
                    .collect()
            }
            _ => match match_id(&query, &loaded, reference)? {
                None => HashSet::new(),
                Some(id) => loaded
                    .iter()
                    .filter(|l| l.image.id() == id && matches_query(&query, l))
                    .map(|l| l.name.clone())
                    .collect(),
            },
        };
        if doomed.is_empty() {
            return Ok(false);
        }
        let remaining: Vec<Entry> = entries
            .into_iter()
            .filter(|e| !doomed.contains(&e.name))
            .collect();
        self.write_entries(&remaining)?;
        let trash = self.collect_garbage(&remaining)?;
        drop(lock);
        drop(trash); // removes unreferenced root filesystems outside the lock
        tracing::info!(reference, names = ?doomed, "removed image");
        Ok(true)
    }

    /// Deletes blobs and moves away root filesystems that no entry reaches.
    /// Call with the lock held exclusively; drop the returned work dir after
    /// unlocking to delete the moved root filesystems. If any entry cannot be
    /// walked, nothing is deleted (never guess about a corrupt store).
    pub(crate) fn collect_garbage(&self, entries: &[Entry]) -> Result<Option<WorkDir>, ImageError> {
        clean_stale_workdirs(&self.tmp_dir());
        let blobs = self.blobs();
        let mut reachable = HashSet::new();
        let mut configs = HashSet::new();
        for e in entries {
            if let Err(err) = walk(&blobs, &e.desc, &e.name, &mut reachable, &mut configs) {
                tracing::warn!(image = %e.name, error = %err, "store not garbage-collected");
                return Ok(None);
            }
        }
        let blob_dir = self.blob_dir();
        for name in list_names(&blob_dir)? {
            if is_lower_hex(&name) && !reachable.contains(&name) {
                let path = blob_dir.join(&name);
                fs::remove_file(&path).map_err(io_err("removing", &path))?;
            }
        }
        fsync_dir(&blob_dir)?;
        let mut trash = None;
        let rootfs_dir = self.rootfs_dir();
        for name in list_names(&rootfs_dir)? {
            if configs.contains(&name) {
                continue;
            }
            if trash.is_none() {
                trash = Some(WorkDir::create(&self.tmp_dir())?);
            }
            if let Some(t) = &trash {
                let from = rootfs_dir.join(&name);
                let to = t.path().join(&name);
                fs::rename(&from, &to).map_err(io_err("moving away", &from))?;
            }
        }
        Ok(trash)
    }

    /// Real usage (bytes and inodes) of everything under `dir`.
    pub fn usage(&self) -> Result<FsUsage, ImageError> {
        let (used_bytes, inodes_used) = tree_usage(&self.dir)?;
        Ok(FsUsage {
            mountpoint: self.dir.clone(),
            used_bytes,
            inodes_used,
        })
    }
}

fn list_names(dir: &Path) -> Result<Vec<String>, ImageError> {
    let entries = fs::read_dir(dir).map_err(io_err("listing", dir))?;
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect())
}

/// Marks every present blob under `desc` reachable (other platforms' blobs
/// of an index are usually absent, which is fine) and collects config hexes.
fn walk(
    blobs: &BlobDirs,
    desc: &Descriptor,
    image: &str,
    reachable: &mut HashSet<String>,
    configs: &mut HashSet<String>,
) -> Result<(), ImageError> {
    let mut stack = vec![(desc.clone(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let hex = d.hex(image)?.to_string();
        if blobs.find(&hex).is_none() || depth > 8 {
            continue;
        }
        reachable.insert(hex);
        let bytes = blobs.read_verified(&d, image, "manifest")?;
        match parse_doc(&d, &bytes, image)? {
            Doc::Index(index) => stack.extend(index.manifests.into_iter().map(|m| (m, depth + 1))),
            Doc::Manifest(m) => {
                configs.insert(m.config.hex(image)?.to_string());
                for blob in std::iter::once(&m.config).chain(&m.layers) {
                    reachable.insert(blob.hex(image)?.to_string());
                }
            }
        }
    }
    Ok(())
}

fn parse_query(reference: &str) -> Result<Query, ImageError> {
    if let Some(hex) = reference.strip_prefix("sha256:") {
        if hex.len() == 64 && is_lower_hex(hex) {
            return Ok(Query::Id(reference.to_string()));
        }
        if hex.len() >= MIN_ID_PREFIX && hex.len() < 64 && is_lower_hex(hex) {
            return Ok(Query::Prefix(hex.to_string(), None));
        }
        return Err(ImageError::invalid_reference(
            reference,
            "malformed image id",
        ));
    }
    if reference.len() == 64 && is_lower_hex(reference) {
        return Ok(Query::Id(format!("sha256:{reference}")));
    }
    if reference.len() >= MIN_ID_PREFIX && reference.len() < 64 && is_lower_hex(reference) {
        return Ok(Query::Prefix(
            reference.to_string(),
            Reference::parse(reference).ok(),
        ));
    }
    Ok(Query::Name(Reference::parse(reference)?))
}

fn matches_name(r: &Reference, l: &Loaded) -> bool {
    match r.digest() {
        Some(d) => {
            Reference::parse(&l.name).is_ok_and(|n| n.repository() == r.repository())
                && (l.image.top.digest == d || l.image.manifest_digest == d)
        }
        None => l.name == r.clone().with_default_tag().to_string(),
    }
}

/// For `remove`: does this entry belong to what the query named?
fn matches_query(query: &Query, l: &Loaded) -> bool {
    match query {
        Query::Name(r) => matches_name(r, l),
        Query::Id(_) | Query::Prefix(..) => true,
    }
}

/// The id of the image the query names, if any.
fn match_id(
    query: &Query,
    loaded: &[Loaded],
    reference: &str,
) -> Result<Option<String>, ImageError> {
    let by_name = |r: &Reference| {
        loaded
            .iter()
            .find(|l| matches_name(r, l))
            .map(|l| l.image.id().to_string())
    };
    match query {
        Query::Id(id) => Ok(loaded
            .iter()
            .any(|l| l.image.id() == id)
            .then(|| id.clone())),
        Query::Name(r) => Ok(by_name(r)),
        Query::Prefix(hex, name) => {
            if let Some(id) = name.as_ref().and_then(by_name) {
                return Ok(Some(id));
            }
            let prefix = format!("sha256:{hex}");
            let ids: HashSet<&str> = loaded
                .iter()
                .map(|l| l.image.id())
                .filter(|id| id.starts_with(&prefix))
                .collect();
            match ids.len() {
                0 => Ok(None),
                1 => Ok(ids.into_iter().next().map(str::to_string)),
                count => Err(ImageError::Ambiguous {
                    reference: reference.to_string(),
                    count,
                }),
            }
        }
    }
}

/// Groups resolved entries into images (one per id), sorted by id.
pub(crate) fn images_of(loaded: &[Loaded]) -> Vec<Image> {
    let mut by_id: BTreeMap<String, Image> = BTreeMap::new();
    for l in loaded {
        let r = &l.image;
        let image = by_id.entry(r.id().to_string()).or_insert_with(|| Image {
            id: r.id().to_string(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            size: r.config_desc.size + r.layers.iter().map(|d| d.size).sum::<u64>(),
            config: ImageConfig::from(&r.config),
            pinned: false,
        });
        let Ok(name) = Reference::parse(&l.name) else {
            continue;
        };
        if name.digest().is_none() && !image.repo_tags.contains(&l.name) {
            image.repo_tags.push(l.name.clone());
        }
        let repo_digest = format!("{}@{}", name.repository(), r.top.digest);
        if !image.repo_digests.contains(&repo_digest) {
            image.repo_digests.push(repo_digest);
        }
    }
    let mut images: Vec<Image> = by_id.into_values().collect();
    for i in &mut images {
        i.repo_tags.sort();
        i.repo_digests.sort();
    }
    images
}

/// `sha256:<hex>` id -> hex, for paths.
pub(crate) fn id_hex(id: &str) -> Result<&str, ImageError> {
    digest_hex(id).ok_or_else(|| ImageError::invalid_reference(id, "malformed image id"))
}
