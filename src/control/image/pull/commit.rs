//! The end of a pull, on the blocking pool: unpacks the root filesystem
//! from the staged (and already stored) blobs in a work dir, commits the
//! image to the store, then moves the root filesystem into place.

use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;

use super::super::error::{io_err, ImageError};
use super::super::fsutil::{self, fsync_dir, WorkDir};
use super::super::insert::{NewImage, Staging};
use super::super::layout::{resolve, BlobDirs, Selected};
use super::super::oci::Descriptor;
use super::super::store::{id_hex, ImageStore};
use super::super::types::Image;
use super::super::unpack::apply_layer;

/// Unpacks the root filesystem from the staged (and stored) blobs, commits
/// the image, then moves the root filesystem into place. Blocking.
pub(super) fn commit(
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
    let unpacked = if fsutil::is_dir(&target) {
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
        fsutil::syncfs(&root)?;
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
        if !fsutil::is_dir(&target) && still_there {
            fs::rename(&root, &target).map_err(io_err("renaming into place", &target))?;
            fsync_dir(&store.rootfs_dir())?;
        }
    }
    Ok(stored)
}
