//! Reading OCI image layouts: finding blobs, verifying them, resolving an
//! index.json entry down to the linux/amd64 manifest and its config, and
//! turning an `oci-archive` tar into a directory layout.
//!
//! Used for both import sources and the store itself (which is a layout).
//! It only reads (and, for a tar source, extracts into a given work dir); it
//! never changes the store.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use super::error::{io_err, ImageError};
use super::fsutil::copy_hashed;
use super::oci::{
    check_config_type, digest_hex, parse_json, ConfigFile, Descriptor, Index, Manifest,
    MAX_JSON_BLOB, MT_DOCKER_MANIFEST, MT_OCI_MANIFEST, WANT_ARCH, WANT_OS,
};

/// Nested indexes deeper than this are refused (no cycles, no stack games).
const MAX_INDEX_DEPTH: usize = 4;

/// Blob directories (`.../blobs/sha256`) searched in order.
#[derive(Debug, Clone)]
pub(crate) struct BlobDirs {
    dirs: Vec<PathBuf>,
}

impl BlobDirs {
    /// `roots` are layout roots (each holding `blobs/sha256/`).
    pub fn new<'a>(roots: impl IntoIterator<Item = &'a Path>) -> BlobDirs {
        BlobDirs {
            dirs: roots
                .into_iter()
                .map(|r| r.join("blobs").join("sha256"))
                .collect(),
        }
    }

    /// Where the blob with this (validated) hex lives, if anywhere.
    pub fn find(&self, hex: &str) -> Option<PathBuf> {
        self.dirs.iter().map(|d| d.join(hex)).find(|p| {
            fs::symlink_metadata(p)
                .map(|m| m.is_file())
                .unwrap_or(false)
        })
    }

    /// The path of the blob `desc` names, or an error naming it as missing.
    pub fn path(&self, desc: &Descriptor, image: &str, what: &str) -> Result<PathBuf, ImageError> {
        let hex = desc.hex(image)?;
        self.find(hex).ok_or_else(|| {
            ImageError::invalid_image(image, format!("{what} {}: blob missing", desc.digest))
        })
    }

    /// Reads a small JSON blob and checks its size and digest.
    pub fn read_verified(
        &self,
        desc: &Descriptor,
        image: &str,
        what: &str,
    ) -> Result<Vec<u8>, ImageError> {
        if desc.size > MAX_JSON_BLOB {
            return Err(ImageError::invalid_image(
                image,
                format!("{what} {}: {} bytes is too big", desc.digest, desc.size),
            ));
        }
        let path = self.path(desc, image, what)?;
        let file = File::open(&path).map_err(io_err("opening", &path))?;
        let mut bytes = Vec::new();
        let (size, digest) = copy_hashed(
            file.take(MAX_JSON_BLOB + 1),
            &mut bytes,
            &path,
            Path::new("memory"),
        )?;
        check_blob(desc, size, &digest, image, what)?;
        Ok(bytes)
    }
}

/// Checks a file's size and digest against `desc`.
pub(crate) fn verify_file(
    path: &Path,
    desc: &Descriptor,
    image: &str,
    what: &str,
) -> Result<(), ImageError> {
    let len = fs::metadata(path)
        .map_err(io_err("reading metadata of", path))?
        .len();
    if len != desc.size {
        return Err(ImageError::SizeMismatch {
            image: image.into(),
            what: format!("{what} {}", desc.digest),
            expected: desc.size,
            actual: len,
        });
    }
    let file = File::open(path).map_err(io_err("opening", path))?;
    let (size, digest) = copy_hashed(file, io::sink(), path, Path::new("/dev/null"))?;
    check_blob(desc, size, &digest, image, what)
}

pub(crate) fn check_blob(
    desc: &Descriptor,
    size: u64,
    digest: &str,
    image: &str,
    what: &str,
) -> Result<(), ImageError> {
    let what = format!("{what} {}", desc.digest);
    if size != desc.size {
        return Err(ImageError::SizeMismatch {
            image: image.into(),
            what,
            expected: desc.size,
            actual: size,
        });
    }
    if digest != desc.digest {
        return Err(ImageError::DigestMismatch {
            image: image.into(),
            what,
            expected: desc.digest.clone(),
            actual: digest.into(),
        });
    }
    Ok(())
}

/// One image, resolved from an index.json entry to its platform manifest.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// What the entry points to (manifest or index): the repo digest.
    pub top: Descriptor,
    /// Every index and manifest on the way down, top first.
    pub chain: Vec<Descriptor>,
    pub manifest_digest: String,
    pub config_desc: Descriptor,
    pub config: ConfigFile,
    pub layers: Vec<Descriptor>,
}

impl Resolved {
    /// `sha256:<config hex>`, like containerd's image id.
    pub fn id(&self) -> &str {
        &self.config_desc.digest
    }

    /// Every blob this image needs, each once, JSON documents first.
    pub fn blobs(&self) -> Vec<&Descriptor> {
        let mut out: Vec<&Descriptor> = Vec::new();
        for d in self
            .chain
            .iter()
            .chain(std::iter::once(&self.config_desc))
            .chain(&self.layers)
        {
            if !out.iter().any(|o| o.digest == d.digest) {
                out.push(d);
            }
        }
        out
    }
}

/// The outcome of resolving an entry.
#[derive(Debug)]
pub(crate) enum Selected {
    Image(Box<Resolved>),
    /// A valid image, but for another platform (described).
    OtherPlatform(String),
}

pub(crate) enum Doc {
    Index(Index),
    Manifest(Manifest),
}

pub(crate) fn parse_doc(desc: &Descriptor, bytes: &[u8], image: &str) -> Result<Doc, ImageError> {
    let what = format!(
        "{} {}",
        if desc.is_index() { "index" } else { "manifest" },
        desc.digest
    );
    if desc.is_index() {
        return Ok(Doc::Index(parse_json(bytes, image, &what)?));
    }
    if desc.media_type == MT_OCI_MANIFEST || desc.media_type == MT_DOCKER_MANIFEST {
        return Ok(Doc::Manifest(parse_json(bytes, image, &what)?));
    }
    // Unknown descriptor type: go by the document's own shape and mediaType.
    let value: serde_json::Value = parse_json(bytes, image, &what)?;
    if value.get("manifests").is_some() {
        return Ok(Doc::Index(parse_json(bytes, image, &what)?));
    }
    if value.get("config").is_some() && value.get("layers").is_some() {
        return Ok(Doc::Manifest(parse_json(bytes, image, &what)?));
    }
    Err(ImageError::invalid_image(
        image,
        format!(
            "{} has unsupported media type {:?}",
            desc.digest, desc.media_type
        ),
    ))
}

/// Resolves `top` through any nested indexes to the linux/amd64 manifest,
/// reading and verifying every JSON blob on the way.
pub(crate) fn resolve(
    blobs: &BlobDirs,
    top: &Descriptor,
    image: &str,
) -> Result<Selected, ImageError> {
    let mut chain = Vec::new();
    let mut desc = top.clone();
    for _ in 0..=MAX_INDEX_DEPTH {
        let what = if desc.is_index() { "index" } else { "manifest" };
        let bytes = blobs.read_verified(&desc, image, what)?;
        chain.push(strip(&desc));
        match parse_doc(&desc, &bytes, image)? {
            Doc::Index(index) => match index.pick_platform() {
                Some(child) => desc = child.clone(),
                None => {
                    let platforms: Vec<String> = index
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect();
                    return Ok(Selected::OtherPlatform(format!(
                        "index {} has no linux/amd64 manifest (has {})",
                        desc.digest,
                        if platforms.is_empty() {
                            "none".into()
                        } else {
                            platforms.join(", ")
                        }
                    )));
                }
            },
            Doc::Manifest(manifest) => {
                return resolve_manifest(blobs, top, chain, &desc, manifest, image);
            }
        }
    }
    Err(ImageError::invalid_image(
        image,
        format!("image indexes nested deeper than {MAX_INDEX_DEPTH}"),
    ))
}

fn resolve_manifest(
    blobs: &BlobDirs,
    top: &Descriptor,
    chain: Vec<Descriptor>,
    desc: &Descriptor,
    manifest: Manifest,
    image: &str,
) -> Result<Selected, ImageError> {
    let cfg = &manifest.config;
    check_config_type(cfg, &desc.digest, image)?;
    let config_bytes = blobs.read_verified(cfg, image, "config")?;
    let config: ConfigFile = parse_json(&config_bytes, image, &format!("config {}", cfg.digest))?;
    let declared = !config.os.is_empty() && !config.architecture.is_empty();
    if declared && (config.os != WANT_OS || config.architecture != WANT_ARCH) {
        let platform = format!("{}/{}", config.os, config.architecture);
        return Ok(Selected::OtherPlatform(format!(
            "manifest {} is for {platform}",
            desc.digest
        )));
    }
    super::oci::check_layers(&manifest.layers, image)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::invalid_image(
            image,
            format!(
                "config {}: {} diff ids for {} layers",
                cfg.digest,
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        ));
    }
    if let Some(bad) = config
        .rootfs
        .diff_ids
        .iter()
        .find(|d| digest_hex(d).is_none())
    {
        return Err(ImageError::invalid_image(
            image,
            format!("config {}: malformed diff id {bad:?}", cfg.digest),
        ));
    }
    Ok(Selected::Image(Box::new(Resolved {
        top: strip(top),
        chain,
        manifest_digest: desc.digest.clone(),
        config_desc: strip(cfg),
        config,
        layers: manifest.layers.iter().map(strip).collect(),
    })))
}

/// A descriptor without annotations (store entries add their own).
fn strip(d: &Descriptor) -> Descriptor {
    Descriptor {
        annotations: None,
        ..d.clone()
    }
}

/// Reads a layout's `index.json` (and checks `oci-layout` when present).
pub(crate) fn read_index(root: &Path, image: &str) -> Result<Index, ImageError> {
    let layout = root.join("oci-layout");
    if let Ok(bytes) = read_small(&layout) {
        let value: serde_json::Value = parse_json(&bytes, image, "oci-layout")?;
        if value
            .get("imageLayoutVersion")
            .and_then(|v| v.as_str())
            .is_none()
        {
            return Err(ImageError::invalid_image(
                image,
                "oci-layout: no imageLayoutVersion",
            ));
        }
    }
    let path = root.join("index.json");
    let bytes = match read_small(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::invalid_image(
                image,
                "not an oci image layout (no index.json)",
            ))
        }
        Err(e) => return Err(io_err("reading", &path)(e)),
    };
    parse_json(&bytes, image, "index.json")
}

fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(MAX_JSON_BLOB)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Extracts an OCI layout tar (`oci-archive`, optionally gzipped) into
/// `dest`. Only `oci-layout`, `index.json` and `blobs/sha256/<hex>` regular
/// files are taken; anything else is skipped, and a path with `..` or a
/// leading `/` is an error. Nothing is followed, so nothing can escape.
pub(crate) fn extract_layout_tar(
    archive: &Path,
    dest: &Path,
    image: &str,
) -> Result<(), ImageError> {
    let reader = super::fsutil::open_maybe_gzip(archive)?;
    let blob_dir = dest.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir).map_err(io_err("creating", &blob_dir))?;
    let bad_tar = |e: io::Error| ImageError::invalid_image(image, format!("malformed tar: {e}"));
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(bad_tar)? {
        let mut entry = entry.map_err(bad_tar)?;
        let raw = entry.path().map_err(bad_tar)?.into_owned();
        let mut parts = Vec::new();
        for c in raw.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
                Component::CurDir => {}
                _ => {
                    return Err(ImageError::invalid_image(
                        image,
                        format!("unsafe path {:?} in archive", raw.display().to_string()),
                    ))
                }
            }
        }
        let target = match parts.as_slice() {
            [f] if f == "index.json" || f == "oci-layout" => dest.join(f),
            [b, alg, hex] if b == "blobs" => {
                if alg != "sha256" || hex.len() != 64 || !super::reference::is_lower_hex(hex) {
                    tracing::debug!(path = %raw.display(), "skipping non-sha256 blob in archive");
                    continue;
                }
                blob_dir.join(hex)
            }
            _ => continue,
        };
        if !entry.header().entry_type().is_file() {
            return Err(ImageError::invalid_image(
                image,
                format!(
                    "{:?} in archive is not a regular file",
                    raw.display().to_string()
                ),
            ));
        }
        let mut out = File::create(&target).map_err(io_err("creating", &target))?;
        io::copy(&mut entry, &mut out).map_err(io_err("extracting", &target))?;
    }
    Ok(())
}
