//! The local OCI image store, import, pack and unpack.
//!
//! Owns everything about images on this node: names (`reference`), the OCI
//! documents (`oci`), reading layouts (`layout`), the store and its garbage
//! collection (`store`), adding images (`insert`: import now, registry pull
//! later through [`ImageStore::insert`]), root filesystems (`rootfs`,
//! `unpack`) and building component images (`pack`). It does not speak CRI
//! (the CRI adapter maps [`ImageError::kind`] to gRPC codes) and does no
//! network I/O. Every call blocks; run it off the async executor.

mod error;
mod fsutil;
mod insert;
mod layout;
mod oci;
mod pack;
mod reference;
mod rootfs;
mod store;
mod types;
mod unpack;

#[cfg(test)]
mod tests;

pub use error::{ErrorKind, ImageError};
pub use insert::{NewImage, Staging};
pub use oci::{Descriptor, Platform};
pub use pack::{pack, PackOptions, PackedImage, DEFAULT_ENTRYPOINT_PATH};
pub use reference::{normalize_reference, Reference};
pub use store::ImageStore;
pub use types::{FsUsage, Image, ImageConfig};
