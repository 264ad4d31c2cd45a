//! The local OCI image store, import, pack and unpack.
//!
//! Owns everything about images on this node: names (`reference`), the OCI
//! documents (`oci`), reading layouts (`layout`), the store and its garbage
//! collection (`store`), adding images (`insert`: import, and registry pulls
//! through [`ImageStore::insert`]), root filesystems (`rootfs`, `unpack`),
//! building component images (`pack`), and registries: the distribution
//! client (`registry`), pulling (`pull`) and pushing (`push`). It does not
//! speak CRI (the CRI adapter maps [`ImageError::kind`] to gRPC codes).
//! Store calls block (run them off the async executor); only `pull` and
//! `push` are async, and they do their file work on the blocking pool.

mod error;
mod fsutil;
mod insert;
mod layout;
mod oci;
mod pack;
mod pull;
mod push;
mod reference;
mod registry;
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
pub use pull::Puller;
pub use push::{push, PushSource, Pushed};
pub use reference::{normalize_reference, Reference};
pub use registry::{Credentials, RegistryConfig};
pub use store::ImageStore;
pub use types::{FsUsage, Image, ImageConfig};
#[cfg(fuzzing)]
pub(crate) use unpack::apply_layer;
