//! Test images: `vimanad image pack` of one binary, plus a layer of extra
//! entries (symlinks, directories, files) appended to the OCI layout the way
//! any image builder stacks layers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    std::fs::write(blob_path(layout, &digest), bytes).unwrap();
    digest
}

/// An uncompressed layer tar of `entries`.
pub fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .unwrap();
            }
            Entry::File(path, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o755);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, *data).unwrap();
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// Packs `binary` as image `name` (entrypoint `entrypoint`) into the OCI
/// layout directory `out`, with one more layer of `extra` entries when
/// given, and `cmd` as the image's Cmd when not empty.
pub fn pack(
    vimanad: &str,
    binary: &Path,
    name: &str,
    entrypoint: &str,
    extra: &[Entry],
    entrypoint_override: Option<&[&str]>,
    out: &Path,
) {
    let status = Command::new(vimanad)
        .args(["image", "pack", "--binary"])
        .arg(binary)
        .args(["--name", name, "--entrypoint-path", entrypoint, "--output"])
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "vimanad image pack failed");
    if extra.is_empty() && entrypoint_override.is_none() {
        return;
    }
    let index_path = out.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_path(out, &manifest_digest)).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_path(out, &config_digest)).unwrap()).unwrap();
    if !extra.is_empty() {
        let layer = layer_tar(extra);
        let digest = write_blob(out, &layer);
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(digest.clone().into());
        config["history"].as_array_mut().unwrap().push(
            serde_json::json!({"created": "1970-01-01T00:00:00Z", "created_by": "test layer"}),
        );
        manifest["layers"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest,
                "size": layer.len(),
            }));
    }
    if let Some(entrypoint) = entrypoint_override {
        config["config"]["Entrypoint"] = serde_json::json!(entrypoint);
    }
    let config_bytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = write_blob(out, &config_bytes).into();
    manifest["config"]["size"] = config_bytes.len().into();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    index["manifests"][0]["digest"] = write_blob(out, &manifest_bytes).into();
    index["manifests"][0]["size"] = manifest_bytes.len().into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// `vimanad image import` of a layout into a node's state directory (the
/// node need not run: the store is shared through the filesystem).
pub fn import(vimanad: &str, layout: &Path, state_dir: &Path) {
    let out = Command::new(vimanad)
        .args(["image", "import"])
        .arg(layout)
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "image import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
