//! [`ImageStore::rootfs`]: the unpacked root filesystem of an image, made
//! lazily on first use in a work dir and renamed into `rootfs/<config hex>/`
//! so a crash never leaves a half tree that looks complete.
//!
//! Owns the lifecycle of a rootfs dir; how one layer is applied safely is in
//! `unpack.rs`. Removal of unused rootfs dirs is the store's garbage collection.

use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::error::{io_err, ImageError};
use super::fsutil::{fsync_dir, WorkDir};
use super::store::{id_hex, ImageStore};
use super::types::Image;
use super::unpack::apply_layer;

impl ImageStore {
    /// The image's root filesystem: all layers applied in order, whiteouts
    /// honoured, nothing outside the root touched. Unpacked on first call;
    /// meant to be used read-only (an overlayfs lowerdir). An unsafe or
    /// corrupt layer is an error naming the image and path, and leaves
    /// nothing behind.
    pub fn rootfs(&self, image: &Image) -> Result<PathBuf, ImageError> {
        let hex = id_hex(&image.id)?;
        let target = self.rootfs_dir().join(hex);
        if super::fsutil::is_dir(&target) {
            return Ok(target);
        }
        let label = image.repo_tags.first().unwrap_or(&image.id).clone();
        let not_found = || ImageError::NotFound {
            reference: image.id.clone(),
        };
        let resolved = {
            let _lock = self.lock_shared()?;
            let entries = self.read_entries()?;
            self.load(&entries)
                .into_iter()
                .find(|l| l.image.id() == image.id)
                .ok_or_else(not_found)?
                .image
        };
        let work = {
            let _lock = self.lock_exclusive()?;
            WorkDir::create(&self.tmp_dir())?
        };
        let root = work.path().join("rootfs");
        fs::create_dir(&root).map_err(io_err("creating", &root))?;
        fs::set_permissions(&root, Permissions::from_mode(0o755))
            .map_err(io_err("setting mode of", &root))?;
        let blobs = self.blobs();
        for (layer, diff_id) in resolved.layers.iter().zip(&resolved.config.rootfs.diff_ids) {
            let blob = blobs.path(layer, &label, "layer")?;
            apply_layer(&root, &blob, layer, diff_id, &label)?;
        }
        super::fsutil::syncfs(&root)?;
        let _lock = self.lock_exclusive()?;
        if super::fsutil::is_dir(&target) {
            return Ok(target); // another caller finished first; ours is dropped
        }
        let still_there = self
            .load(&self.read_entries()?)
            .iter()
            .any(|l| l.image.id() == image.id);
        if !still_there {
            return Err(not_found());
        }
        fs::rename(&root, &target).map_err(io_err("renaming into place", &target))?;
        fsync_dir(&self.rootfs_dir())?;
        tracing::info!(image = %label, path = %target.display(), "unpacked image");
        Ok(target)
    }
}
