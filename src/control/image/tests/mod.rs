//! Tests of the image layer with real files in temp dirs: helpers to build
//! binaries, layer tars (including malicious ones, written header by header)
//! and OCI layouts by hand. Test code only.

mod import;
mod robust;
mod store;
mod unpack;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::oci::sha256_digest;
use super::{pack, ImageStore, PackOptions, PackedImage};

/// A fake "static binary": some bytes, mode 0755.
pub(super) fn fake_binary(dir: &Path, content: &[u8]) -> PathBuf {
    let path = dir.join(format!("bin-{}", sha256_digest(content).split_at(15).1));
    fs::write(&path, content).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

pub(super) fn pack_to(
    dir: &Path,
    name: &str,
    content: &[u8],
    output: &str,
) -> (PackedImage, PathBuf) {
    let bin = fake_binary(dir, content);
    let out = dir.join(output);
    let packed = pack(&PackOptions::new(bin, name, &out)).unwrap();
    (packed, out)
}

pub(super) fn new_store(dir: &Path) -> ImageStore {
    ImageStore::open(&dir.join("store")).unwrap()
}

/// Names of the blobs in the store.
pub(super) fn store_blobs(store: &ImageStore) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store.dir().join("oci/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub(super) fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// One tar entry, written header by header so that tests can produce what
/// the `tar` crate's safe API refuses (`..`, absolute paths).
pub(super) enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

pub(super) fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let (path, link, data, kind, mode): (&str, Option<&str>, &[u8], tar::EntryType, u32) =
            match e {
                E::Dir(p, m) => (p, None, &[], tar::EntryType::Directory, *m),
                E::File(p, d, m) => (p, None, d, tar::EntryType::Regular, *m),
                E::Symlink(p, t) => (p, Some(t), &[], tar::EntryType::Symlink, 0o777),
                E::Hardlink(p, t) => (p, Some(t), &[], tar::EntryType::Link, 0o644),
            };
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        let old = h.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

pub(super) fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes a blob into a layout dir, returning its descriptor as JSON.
pub(super) fn put_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let digest = sha256_digest(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&digest[7..]), bytes).unwrap();
    json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
}

/// Writes an image (config + manifest + layers) into a layout dir; returns
/// the manifest descriptor. Layers are gzipped when `gzip`.
pub(super) fn put_image(
    layout: &Path,
    layers: &[Vec<u8>],
    gzip: bool,
    arch: &str,
) -> serde_json::Value {
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        diff_ids.push(sha256_digest(l));
        layer_descs.push(if gzip {
            put_blob(
                layout,
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &gz(l),
            )
        } else {
            put_blob(layout, "application/vnd.oci.image.layer.v1.tar", l)
        });
    }
    let config = json!({
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": ["/bin/app"], "Env": ["A=1"], "Labels": {"k": "v"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = put_blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).unwrap(),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": layer_descs,
    });
    put_blob(
        layout,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    )
}

/// Writes index.json (and oci-layout) naming `manifests`.
pub(super) fn put_index(layout: &Path, manifests: Vec<serde_json::Value>) {
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = json!({"schemaVersion": 2, "manifests": manifests});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// A descriptor with a ref.name annotation.
pub(super) fn named(mut desc: serde_json::Value, name: &str) -> serde_json::Value {
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    desc
}

/// A one-image layout dir built from layer tars, named `name`.
pub(super) fn layout_with_layers(dir: &Path, sub: &str, layers: &[Vec<u8>], name: &str) -> PathBuf {
    let layout = dir.join(sub);
    let m = put_image(&layout, layers, true, "amd64");
    put_index(&layout, vec![named(m, name)]);
    layout
}
