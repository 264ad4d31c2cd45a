//! Adding images to the store: [`Staging`] (verified blobs waiting in a work
//! dir), [`ImageStore::insert`] (the one commit point, which a registry pull
//! will reuse) and [`ImageStore::import`] (an OCI layout directory or tar).
//!
//! Blobs are verified while they are written to staging, outside the lock;
//! the commit (rename blobs in, rewrite index.json, collect garbage) runs
//! under the exclusive lock and is short. Unpacking is not done here.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::{io_err, ImageError};
use super::fsutil::{copy_hashed, fsync_dir, unique_name, WorkDir};
use super::layout::{
    check_blob, extract_layout_tar, read_index, resolve, verify_file, BlobDirs, Resolved, Selected,
};
use super::oci::{blob_kind, Descriptor, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME};
use super::reference::Reference;
use super::store::{images_of, Entry, ImageStore};
use super::types::Image;

/// Blobs written and verified, not yet in the store. Dropping it without
/// [`ImageStore::insert`] deletes them.
#[derive(Debug)]
pub struct Staging {
    work: WorkDir,
}

/// One image to add: the descriptor its names point to (a manifest, or an
/// index from which the linux/amd64 manifest is taken) and its names.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub top: Descriptor,
    /// References, normalized by `insert`. A name with a digest must carry
    /// the digest of `top`.
    pub names: Vec<String>,
}

impl Staging {
    /// The staging layout root (blobs in `blobs/sha256/`).
    pub fn path(&self) -> &Path {
        self.work.path()
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.path().join("blobs").join("sha256").join(hex)
    }

    /// Writes a blob from `reader`, checking size and digest against `desc`.
    /// `image` names the image in errors. Returns the staged blob's path.
    pub fn write_blob(
        &self,
        desc: &Descriptor,
        reader: impl Read,
        image: &str,
    ) -> Result<PathBuf, ImageError> {
        let target = self.blob_path(desc.hex(image)?);
        if target.exists() {
            return Ok(target);
        }
        let tmp = self.path().join(unique_name(".blob"));
        let result = (|| {
            let mut file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
            let (size, digest) = copy_hashed(
                reader.take(desc.size.saturating_add(1)),
                &mut file,
                Path::new(image),
                &tmp,
            )?;
            check_blob(desc, size, &digest, image, blob_kind(desc))?;
            file.sync_all().map_err(io_err("syncing", &tmp))?;
            fs::rename(&tmp, &target).map_err(io_err("renaming", &tmp))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| target)
    }

    /// Moves a file already inside the staging dir into place once verified.
    fn adopt(&self, path: &Path, desc: &Descriptor, image: &str) -> Result<(), ImageError> {
        let target = self.blob_path(desc.hex(image)?);
        if target.exists() {
            return Ok(());
        }
        verify_file(path, desc, image, blob_kind(desc))?;
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing", path))?;
        fs::rename(path, &target).map_err(io_err("renaming", path))
    }
}

impl ImageStore {
    /// A fresh staging area for [`ImageStore::insert`].
    pub fn staging(&self) -> Result<Staging, ImageError> {
        let work = {
            let _lock = self.lock_exclusive()?;
            WorkDir::create(&self.tmp_dir())?
        };
        let blobs = work.path().join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
        Ok(Staging { work })
    }

    /// Whether the store already holds this blob (a puller may skip it; if
    /// it is removed meanwhile, `insert` fails naming it and can be retried).
    pub fn has_blob(&self, digest: &str) -> bool {
        super::oci::digest_hex(digest).is_some_and(|hex| self.blobs().find(hex).is_some())
    }

    /// Commits images whose blobs are in `staging` or already in the store:
    /// resolves each (all JSON verified, every blob present), moves staged
    /// blobs in, points each name at its image (moving a name that pointed
    /// elsewhere), and collects garbage. Returns the inserted images.
    pub fn insert(&self, staging: Staging, images: &[NewImage]) -> Result<Vec<Image>, ImageError> {
        let mut named: Vec<(Vec<String>, &Descriptor)> = Vec::new();
        for image in images {
            let mut names = Vec::new();
            for name in &image.names {
                let r = Reference::parse(name)?.with_default_tag();
                if r.digest().is_some_and(|d| d != image.top.digest) {
                    return Err(ImageError::InvalidArgument(format!(
                        "name {name:?} does not match image digest {}",
                        image.top.digest
                    )));
                }
                names.push(r.to_string());
            }
            if names.is_empty() {
                return Err(ImageError::InvalidArgument(format!(
                    "image {}: no name to store it under",
                    image.top.digest
                )));
            }
            named.push((names, &image.top));
        }
        let lock = self.lock_exclusive()?;
        let store_blobs = self.blobs();
        let both = BlobDirs::new([staging.path(), self.oci_dir().as_path()]);
        let mut resolved: Vec<(Vec<String>, Resolved)> = Vec::new();
        for (names, top) in named {
            let label = names[0].as_str();
            let r = match resolve(&both, top, label)? {
                Selected::Image(r) => *r,
                Selected::OtherPlatform(why) => {
                    return Err(ImageError::invalid_image(
                        label,
                        format!("not a linux/amd64 image: {why}"),
                    ))
                }
            };
            for blob in r.blobs() {
                both.path(blob, label, blob_kind(blob))?;
            }
            resolved.push((names, r));
        }
        let blob_dir = self.blob_dir();
        for (names, r) in &resolved {
            for blob in r.blobs() {
                let hex = blob.hex(&names[0])?;
                if store_blobs.find(hex).is_none() {
                    let from = staging.blob_path(hex);
                    fs::rename(&from, blob_dir.join(hex))
                        .map_err(io_err("moving into the store", &from))?;
                }
            }
        }
        fsync_dir(&blob_dir)?;
        let mut entries = self.read_entries()?;
        for (names, r) in &resolved {
            entries.retain(|e| !names.contains(&e.name));
            entries.extend(names.iter().map(|name| Entry {
                name: name.clone(),
                desc: r.top.clone(),
            }));
        }
        self.write_entries(&entries)?;
        let trash = self.collect_garbage(&entries)?;
        let ids: Vec<&str> = resolved.iter().map(|(_, r)| r.id()).collect();
        let all = images_of(&self.load(&entries));
        drop(lock);
        drop(trash);
        drop(staging);
        for (names, r) in &resolved {
            tracing::info!(names = ?names, id = r.id(), "stored image");
        }
        Ok(all
            .into_iter()
            .filter(|i| ids.contains(&i.id.as_str()))
            .collect())
    }

    /// Imports every linux/amd64 image of an OCI image layout: a directory,
    /// or a tar of one (gzipped or not), told apart by `path`'s file type.
    ///
    /// Names: with `name`, the layout must hold exactly one linux/amd64 image
    /// (several → an error; import without a name to use the layout's), and
    /// it is stored under `name` only. Without `name`, each image is stored
    /// under its `io.containerd.image.name` or `org.opencontainers.image.ref.name`
    /// annotation, which must be a full reference (a bare tag like `1.0`, or
    /// no annotation, is an error asking for a name). Entries for other
    /// platforms are skipped. Every blob's size and digest is verified;
    /// on any error the store is unchanged.
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
        let source_label = path.display().to_string();
        let name = name
            .map(|n| Reference::parse(n).map(|r| r.with_default_tag().to_string()))
            .transpose()?;
        let staging = self.staging()?;
        let meta = fs::metadata(path).map_err(io_err("reading", path))?;
        let (root, from_tar) = if meta.is_dir() {
            (path.to_path_buf(), false)
        } else {
            let root = staging.path().join("source");
            extract_layout_tar(path, &root, &source_label)?;
            (root, true)
        };
        let index = read_index(&root, &source_label)?;
        let source = BlobDirs::new([root.as_path()]);
        // Resolve every entry, grouping names by what they point to.
        let mut found: BTreeMap<String, (Resolved, Vec<String>)> = BTreeMap::new();
        let mut skipped = Vec::new();
        for desc in &index.manifests {
            let annotated = desc
                .annotation(ANNOTATION_CONTAINERD_NAME)
                .or_else(|| desc.annotation(ANNOTATION_REF_NAME));
            let label = name
                .clone()
                .or_else(|| annotated.map(str::to_string))
                .unwrap_or_else(|| source_label.clone());
            let r = match resolve(&source, desc, &label)? {
                Selected::Image(r) => *r,
                Selected::OtherPlatform(why) => {
                    tracing::debug!(source = %source_label, "skipping: {why}");
                    skipped.push(why);
                    continue;
                }
            };
            let slot = found
                .entry(r.top.digest.clone())
                .or_insert_with(|| (r, Vec::new()));
            if name.is_none() {
                slot.1
                    .push(name_from_annotation(annotated, desc, &source_label)?);
            }
        }
        if found.is_empty() {
            let why = if skipped.is_empty() {
                "it is empty".to_string()
            } else {
                skipped.join("; ")
            };
            return Err(ImageError::invalid_image(
                &source_label,
                format!("no linux/amd64 image in layout: {why}"),
            ));
        }
        if let Some(name) = &name {
            if found.len() > 1 {
                return Err(ImageError::InvalidArgument(format!(
                    "{source_label}: the layout holds {} linux/amd64 images, a name can tag only one (import without a name to use the layout's names)",
                    found.len()
                )));
            }
            for (_, names) in found.values_mut() {
                names.push(name.clone());
            }
        }
        let mut new_images = Vec::new();
        for (r, names) in found.into_values() {
            let label = &names[0];
            for blob in r.blobs() {
                if staging.blob_path(blob.hex(label)?).exists() {
                    continue; // shared with an image staged before
                }
                let src = source.path(blob, label, blob_kind(blob))?;
                if from_tar {
                    staging.adopt(&src, blob, label)?;
                } else {
                    let file = File::open(&src).map_err(io_err("opening", &src))?;
                    staging.write_blob(blob, file, label)?;
                }
            }
            new_images.push(NewImage { top: r.top, names });
        }
        self.insert(staging, &new_images)
    }
}

/// The name an import entry carries, normalized; a bare tag or none is an error.
fn name_from_annotation(
    annotated: Option<&str>,
    desc: &Descriptor,
    source: &str,
) -> Result<String, ImageError> {
    let Some(ann) = annotated else {
        return Err(ImageError::InvalidArgument(format!(
            "{source}: manifest {} has no {ANNOTATION_REF_NAME} annotation: give a name",
            desc.digest
        )));
    };
    // Tags never contain '/', ':' or '@', so anything with one is a reference.
    if !ann.contains(['/', ':', '@']) {
        return Err(ImageError::InvalidArgument(format!(
            "{source}: {ANNOTATION_REF_NAME} {ann:?} is only a tag: give a name"
        )));
    }
    Ok(Reference::parse(ann)?.with_default_tag().to_string())
}
