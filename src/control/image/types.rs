//! The public value types of the image layer: [`Image`], [`ImageConfig`],
//! [`FsUsage`]. Plain data handed to the CRI layer; no I/O, no store logic.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::oci::ConfigFile;

/// An image in the store, as the CRI layer reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// `sha256:<hex of the config blob digest>` (like containerd).
    pub id: String,
    /// Normalized names, e.g. `example.com/echo:1.0`, sorted.
    pub repo_tags: Vec<String>,
    /// `example.com/echo@sha256:<manifest digest>`, sorted. The digest is the
    /// one the name points to (an index digest for a multi-platform image).
    pub repo_digests: Vec<String>,
    /// Sum of the compressed layer sizes plus the config size.
    pub size: u64,
    pub config: ImageConfig,
    /// Always false for now.
    pub pinned: bool,
}

/// The runtime-relevant part of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl From<&ConfigFile> for ImageConfig {
    fn from(file: &ConfigFile) -> Self {
        let c = file.config.clone().unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: non_empty(c.working_dir),
            user: non_empty(c.user),
            labels: c.labels.unwrap_or_default(),
        }
    }
}

/// Real usage of the store, for CRI `ImageFsInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// The store directory (the filesystem holding the images).
    pub mountpoint: PathBuf,
    /// Bytes allocated on disk (`st_blocks * 512`, hard links counted once).
    pub used_bytes: u64,
    pub inodes_used: u64,
}
