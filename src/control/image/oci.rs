//! The OCI (and Docker v2) JSON documents this layer reads and writes:
//! descriptors, image indexes, manifests, image configs, `oci-layout`, plus
//! the media-type constants and sha256 digest checks.
//!
//! Own serde types rather than `oci-spec`'s: annotations are `BTreeMap`s so
//! what we write is byte-reproducible, and parsing is lenient where real
//! images differ (Docker media types, `null` fields). Pure data; no I/O here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::error::ImageError;
use super::reference::is_lower_hex;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Layer media types we can unpack (gzip or plain tar; the decompressor is
/// chosen from the blob's magic bytes, so a mislabelled layer still works).
const LAYER_TYPES: &[&str] = &[
    MT_OCI_LAYER,
    MT_OCI_LAYER_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// The annotation naming an image in an OCI layout's index.json.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's export writes the full name here (and only the tag in ref.name).
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// The only platform this runtime runs.
pub const WANT_OS: &str = "linux";
pub const WANT_ARCH: &str = "amd64";

/// Biggest JSON document (index, manifest, config) we read into memory.
pub const MAX_JSON_BLOB: u64 = 8 << 20;

pub fn is_layer_type(media_type: &str) -> bool {
    LAYER_TYPES.contains(&media_type)
}

/// What a blob is, for error messages: "layer", "config" or "manifest".
pub fn blob_kind(desc: &Descriptor) -> &'static str {
    if is_layer_type(&desc.media_type) {
        "layer"
    } else if desc.media_type.contains("config") {
        "config"
    } else if desc.is_index() {
        "index"
    } else {
        "manifest"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    pub fn new(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
            platform: None,
            annotations: None,
        }
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// The hex part of the digest, checked to be sha256 (safe to use in a path).
    pub fn hex(&self, image: &str) -> Result<&str, ImageError> {
        digest_hex(&self.digest).ok_or_else(|| {
            ImageError::invalid_image(
                image,
                format!(
                    "unsupported or malformed digest {:?} (want sha256:<64 hex>)",
                    self.digest
                ),
            )
        })
    }

    pub fn is_index(&self) -> bool {
        self.media_type == MT_OCI_INDEX || self.media_type == MT_DOCKER_LIST
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn wanted() -> Platform {
        Platform {
            architecture: WANT_ARCH.into(),
            os: WANT_OS.into(),
            variant: None,
        }
    }

    pub fn is_wanted(&self) -> bool {
        self.os == WANT_OS && self.architecture == WANT_ARCH
    }
}

/// An image index (OCI) or manifest list (Docker); also index.json of a layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Index {
    /// The image for this node: linux/amd64 first; else the only child
    /// that names no platform at all.
    pub fn pick_platform(&self) -> Option<&Descriptor> {
        if let Some(d) = self
            .manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.is_wanted()))
        {
            return Some(d);
        }
        let mut unplatformed = self.manifests.iter().filter(|d| d.platform.is_none());
        match (unplatformed.next(), unplatformed.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }
}

impl Index {
    pub fn new(manifests: Vec<Descriptor>) -> Index {
        Index {
            schema_version: 2,
            media_type: Some(MT_OCI_INDEX.to_string()),
            manifests,
            annotations: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config (OCI or Docker) that this runtime uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// The `oci-layout` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayoutFile {
    pub image_layout_version: String,
}

impl LayoutFile {
    pub fn current() -> LayoutFile {
        LayoutFile {
            image_layout_version: "1.0.0".into(),
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex of a well-formed `sha256:<64 lower-case hex>` digest, else None.
pub fn digest_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && is_lower_hex(hex))
}

/// Parses a JSON document, naming the image and what the document is on error.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    image: &str,
    what: &str,
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImageError::invalid_image(image, format!("{what}: malformed json: {e}")))
}

/// Serializes a document we write (cannot fail for these types; mapped anyway).
pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value)
        .map_err(|e| ImageError::InvalidArgument(format!("serializing json: {e}")))
}

/// The manifest (`digest`) describes a container image: its config is an OCI
/// or docker image config.
pub fn check_config_type(config: &Descriptor, digest: &str, image: &str) -> Result<(), ImageError> {
    if config.media_type != MT_OCI_CONFIG && config.media_type != MT_DOCKER_CONFIG {
        return Err(ImageError::invalid_image(
            image,
            format!(
                "manifest {digest}: unsupported config media type {:?} (not a container image)",
                config.media_type
            ),
        ));
    }
    Ok(())
}

/// Every layer of a manifest names a valid digest and a layer type we can
/// unpack (gzip or uncompressed tar).
pub fn check_layers(layers: &[Descriptor], image: &str) -> Result<(), ImageError> {
    for layer in layers {
        layer.hex(image)?;
        if !is_layer_type(&layer.media_type) {
            return Err(ImageError::invalid_image(
                image,
                format!(
                    "layer {}: unsupported media type {:?} (gzip or uncompressed tar layers only)",
                    layer.digest, layer.media_type
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_checks() {
        let d = sha256_digest(b"");
        assert_eq!(
            d,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(digest_hex(&d).is_some());
        assert!(digest_hex("sha256:../../etc/passwd").is_none());
        assert!(digest_hex(&d.to_uppercase()).is_none());
        assert!(digest_hex("sha512:abcd").is_none());
    }

    #[test]
    fn docker_config_with_nulls_parses() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":null,"Cmd":["sh"],"Env":null,"Labels":null,"WorkingDir":""},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c: ConfigFile = parse_json(json, "x", "config").unwrap();
        assert_eq!(c.config.unwrap().cmd, Some(vec!["sh".to_string()]));
        let err = parse_json::<ConfigFile>(b"{", "x", "config").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("image \"x\": config: malformed json"));
    }
}
