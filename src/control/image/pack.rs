//! [`pack`]: builds a FROM-scratch OCI image holding one binary as its
//! entrypoint, written as an OCI image layout (directory or tar), byte for
//! byte reproducible for the same inputs.
//!
//! Owns only image construction; it does not touch any store (import the
//! result with `ImageStore::import`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use flate2::{Compression, GzBuilder};

use super::error::{io_err, ImageError};
use super::fsutil::write_atomic;
use super::oci::{
    to_json, ConfigFile, ContainerConfig, Descriptor, History, Index, LayoutFile, Manifest,
    Platform, RootFs, ANNOTATION_REF_NAME, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP, MT_OCI_MANIFEST,
    WANT_ARCH, WANT_OS,
};
use super::reference::Reference;

/// Where the binary goes when `entrypoint_path` is left empty.
pub const DEFAULT_ENTRYPOINT_PATH: &str = "/component";
/// The fixed `created` time, for reproducible images.
const CREATED: &str = "1970-01-01T00:00:00Z";

/// What to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackOptions {
    /// A (static) executable.
    pub binary: PathBuf,
    /// Reference to tag, e.g. `example.com/echo:1.0` (normalized).
    pub name: String,
    /// An OCI image layout: a tar file when it ends in `.tar`, else a directory.
    pub output: PathBuf,
    /// Where the binary goes in the image; empty means `/component`.
    pub entrypoint_path: String,
    /// The image's Cmd.
    pub args: Vec<String>,
    /// The image's Env.
    pub env: Vec<String>,
}

impl PackOptions {
    /// Options with the default entrypoint path and no args or env.
    pub fn new(
        binary: impl Into<PathBuf>,
        name: impl Into<String>,
        output: impl Into<PathBuf>,
    ) -> Self {
        PackOptions {
            binary: binary.into(),
            name: name.into(),
            output: output.into(),
            entrypoint_path: DEFAULT_ENTRYPOINT_PATH.to_string(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// What [`pack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedImage {
    /// The normalized name the image is annotated with.
    pub name: String,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config: the id the store will give the image.
    pub id: String,
}

/// Builds a standard OCI image (linux/amd64, FROM scratch, one gzip layer
/// holding the binary 0755 root:root and its parent directories 0755,
/// entrypoint = the binary, fixed timestamps) and writes it as an OCI image
/// layout whose index.json names the manifest with
/// `org.opencontainers.image.ref.name` = the full normalized name. An
/// existing output is replaced (a directory's other blobs are left alone).
pub fn pack(opts: &PackOptions) -> Result<PackedImage, ImageError> {
    let name = Reference::parse(&opts.name)?.with_default_tag();
    if name.digest().is_some() {
        return Err(ImageError::invalid_reference(
            &opts.name,
            "a name to pack cannot carry a digest",
        ));
    }
    let name = name.to_string();
    let entry_path = if opts.entrypoint_path.is_empty() {
        DEFAULT_ENTRYPOINT_PATH
    } else {
        &opts.entrypoint_path
    };
    let parts = entrypoint_parts(entry_path)?;
    let meta = fs::metadata(&opts.binary).map_err(io_err("reading", &opts.binary))?;
    if !meta.is_file() {
        return Err(ImageError::InvalidArgument(format!(
            "binary {}: not a regular file",
            opts.binary.display()
        )));
    }
    let binary = fs::read(&opts.binary).map_err(io_err("reading", &opts.binary))?;

    let layer_tar = layer_tar(&parts, &binary)?;
    let diff_id = super::oci::sha256_digest(&layer_tar);
    let layer = gzip(&layer_tar)?;
    let config = ConfigFile {
        created: Some(CREATED.into()),
        architecture: WANT_ARCH.into(),
        os: WANT_OS.into(),
        config: Some(ContainerConfig {
            env: (!opts.env.is_empty()).then(|| opts.env.clone()),
            entrypoint: Some(vec![format!("/{}", parts.join("/"))]),
            cmd: (!opts.args.is_empty()).then(|| opts.args.clone()),
            working_dir: Some("/".into()),
            ..ContainerConfig::default()
        }),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
        history: vec![History {
            created: Some(CREATED.into()),
            created_by: Some(format!("vimanad pack {entry_path}")),
        }],
    };
    let config_bytes = to_json(&config)?;
    let config_desc = Descriptor::new(MT_OCI_CONFIG, &config_bytes);
    let layer_desc = Descriptor::new(MT_OCI_LAYER_GZIP, &layer);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.into()),
        config: config_desc.clone(),
        layers: vec![layer_desc.clone()],
    };
    let manifest_bytes = to_json(&manifest)?;
    let mut manifest_desc = Descriptor::new(MT_OCI_MANIFEST, &manifest_bytes);
    let packed = PackedImage {
        name: name.clone(),
        manifest_digest: manifest_desc.digest.clone(),
        id: config_desc.digest.clone(),
    };
    manifest_desc.platform = Some(Platform::wanted());
    manifest_desc.annotations = Some(BTreeMap::from([(ANNOTATION_REF_NAME.to_string(), name)]));
    let index = to_json(&Index::new(vec![manifest_desc]))?;
    let layout = to_json(&LayoutFile::current())?;

    let mut blobs: Vec<(&Descriptor, &[u8])> =
        vec![(&config_desc, &config_bytes), (&layer_desc, &layer)];
    let manifest_only = Descriptor::new(MT_OCI_MANIFEST, &manifest_bytes);
    blobs.push((&manifest_only, &manifest_bytes));
    blobs.sort_by(|a, b| a.0.digest.cmp(&b.0.digest));

    let out = &opts.output;
    if out.extension().is_some_and(|e| e == "tar") {
        write_atomic(out, &layout_tar(&layout, &index, &blobs)?)?;
    } else {
        let blob_dir = out.join("blobs").join("sha256");
        fs::create_dir_all(&blob_dir).map_err(io_err("creating", &blob_dir))?;
        for (desc, bytes) in &blobs {
            write_atomic(&blob_dir.join(desc.hex(&packed.name)?), bytes)?;
        }
        write_atomic(&out.join("oci-layout"), &layout)?;
        write_atomic(&out.join("index.json"), &index)?;
    }
    tracing::info!(name = %packed.name, digest = %packed.manifest_digest, output = %out.display(), "packed image");
    Ok(packed)
}

/// `/usr/local/bin/x` -> ["usr", "local", "bin", "x"]; refuses `..`, relative
/// paths and `/`.
fn entrypoint_parts(path: &str) -> Result<Vec<String>, ImageError> {
    let bad = |why: &str| ImageError::InvalidArgument(format!("entrypoint path {path:?}: {why}"));
    if !path.starts_with('/') {
        return Err(bad("must be absolute"));
    }
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => {
                parts.push(p.to_str().ok_or_else(|| bad("not utf-8"))?.to_string())
            }
            _ => return Err(bad("must not contain \"..\"")),
        }
    }
    if parts.is_empty() {
        return Err(bad("names no file"));
    }
    Ok(parts)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

fn tar_err(e: std::io::Error) -> ImageError {
    ImageError::InvalidArgument(format!("building tar: {e}"))
}

fn layer_tar(parts: &[String], binary: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 1..parts.len() {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(
            &mut h,
            format!("{}/", parts[..i].join("/")),
            std::io::empty(),
        )
        .map_err(tar_err)?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    b.append_data(&mut h, parts.join("/"), binary)
        .map_err(tar_err)?;
    b.into_inner().map_err(tar_err)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut enc = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::default());
    enc.write_all(bytes).map_err(tar_err)?;
    enc.finish().map_err(tar_err)
}

fn layout_tar(
    layout: &[u8],
    index: &[u8],
    blobs: &[(&Descriptor, &[u8])],
) -> Result<Vec<u8>, ImageError> {
    let mut b = tar::Builder::new(Vec::new());
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, path, data).map_err(tar_err)
    };
    file(&mut b, "oci-layout", layout)?;
    file(&mut b, "index.json", index)?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, dir, std::io::empty())
            .map_err(tar_err)?;
    }
    for (desc, data) in blobs {
        let hex = desc.digest.trim_start_matches("sha256:");
        file(&mut b, &format!("blobs/sha256/{hex}"), data)?;
    }
    b.into_inner().map_err(tar_err)
}
