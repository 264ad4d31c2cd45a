//! From a reference to the manifest to pull: fetches the manifest or index
//! the reference names (checked against a pinned digest), follows image
//! indexes down to linux/amd64 (each child checked against the digest and
//! size that named it), and checks what a manifest shows before any blob
//! is downloaded.

use bytes::Bytes;

use super::super::error::ImageError;
use super::super::oci::{
    blob_kind, check_config_type, parse_json, Descriptor, Index, Manifest, MAX_JSON_BLOB,
    MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST,
};
use super::super::reference::Reference;
use super::remote::Remote;

/// What a manifest request accepts.
const ACCEPT: &[&str] = &[
    MT_OCI_MANIFEST,
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_DOCKER_LIST,
];
/// Nested image indexes followed at most.
const MAX_INDEX_DEPTH: usize = 4;

/// Fetches the documents from `reference` down the image indexes to the
/// linux/amd64 manifest, and checks that manifest. Returns the documents
/// (top first, the manifest last) and the parsed manifest.
pub(super) async fn resolve(
    remote: &Remote,
    reference: &Reference,
) -> Result<(Vec<(Descriptor, Bytes)>, Manifest), ImageError> {
    let name = remote.image.as_str();
    let top_what = match reference.digest() {
        Some(d) => format!("manifest {d}"),
        None => format!("manifest {}", reference.tag().unwrap_or("latest")),
    };
    let (top_bytes, top) = fetch_manifest(remote, &remote.reference, &top_what).await?;
    if let Some(want) = reference.digest() {
        if top.digest != want {
            return Err(ImageError::DigestMismatch {
                image: name.to_string(),
                what: top_what,
                expected: want.to_string(),
                actual: top.digest,
            });
        }
    }
    let mut documents = vec![(top, top_bytes)];
    let manifest = loop {
        let (desc, bytes) = documents.last().expect("at least the top document");
        let what = format!("{} {}", blob_kind(desc), desc.digest);
        if !desc.is_index() {
            break parse_json::<Manifest>(bytes, name, &what)?;
        }
        if documents.len() > MAX_INDEX_DEPTH {
            return Err(ImageError::invalid_image(
                name,
                format!("image indexes nested deeper than {MAX_INDEX_DEPTH}"),
            ));
        }
        let index: Index = parse_json(bytes, name, &what)?;
        let Some(child) = index.pick_platform().cloned() else {
            return Err(ImageError::invalid_image(
                name,
                format!(
                    "no linux/amd64 image: {what} has only {}",
                    platforms_of(&index)
                ),
            ));
        };
        let child_what = format!("manifest {}", child.digest);
        child.hex(name)?;
        let by_digest = remote.reference.clone_with_digest(child.digest.clone());
        let (bytes, got) = fetch_manifest(remote, &by_digest, &child_what).await?;
        if got.digest != child.digest || got.size != child.size {
            return Err(ImageError::DigestMismatch {
                image: name.to_string(),
                what: child_what,
                expected: format!("{} ({} bytes)", child.digest, child.size),
                actual: format!("{} ({} bytes)", got.digest, got.size),
            });
        }
        documents.push((child, bytes));
    };
    let manifest_desc = &documents.last().expect("a manifest").0;
    check_manifest(&manifest, manifest_desc, name)?;
    Ok((documents, manifest))
}

/// Fetches a manifest or index by tag or digest: its bytes and its
/// descriptor (digest computed here, media type from the document).
async fn fetch_manifest(
    remote: &Remote,
    reference: &oci_client::Reference,
    what: &str,
) -> Result<(Bytes, Descriptor), ImageError> {
    let (bytes, _) = remote
        .client
        .pull_manifest_raw(reference, &remote.auth, ACCEPT)
        .await
        .map_err(remote.fail(format!("fetching {what}")))?;
    if bytes.len() as u64 > MAX_JSON_BLOB {
        return Err(ImageError::invalid_image(
            &remote.image,
            format!("{what}: {} bytes is too big", bytes.len()),
        ));
    }
    let desc = describe_document(&bytes, &remote.image, what)?;
    Ok((bytes, desc))
}

/// A descriptor for a manifest or index fetched by itself: digest and size
/// of the bytes, media type from the document (or its shape).
fn describe_document(bytes: &[u8], image: &str, what: &str) -> Result<Descriptor, ImageError> {
    let value: serde_json::Value = parse_json(bytes, image, what)?;
    let version = value.get("schemaVersion").and_then(|v| v.as_u64());
    if version != Some(2) {
        return Err(ImageError::invalid_image(
            image,
            format!(
                "{what}: schema version {} is not supported (only 2: OCI and docker v2 manifests)",
                version.map_or("none".to_string(), |v| v.to_string())
            ),
        ));
    }
    let media_type = match value.get("mediaType").and_then(|v| v.as_str()) {
        Some(mt) => mt.to_string(),
        None if value.get("manifests").is_some() => MT_OCI_INDEX.to_string(),
        None => MT_OCI_MANIFEST.to_string(),
    };
    if !ACCEPT.contains(&media_type.as_str()) {
        return Err(ImageError::invalid_image(
            image,
            format!("{what}: unsupported media type {media_type:?}"),
        ));
    }
    Ok(Descriptor::new(&media_type, bytes))
}

fn platforms_of(index: &Index) -> String {
    let platforms: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|m| m.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if platforms.is_empty() {
        "none".into()
    } else {
        platforms.join(", ")
    }
}

/// What can be checked in a manifest before anything is downloaded.
fn check_manifest(m: &Manifest, desc: &Descriptor, image: &str) -> Result<(), ImageError> {
    let cfg = &m.config;
    check_config_type(cfg, &desc.digest, image)?;
    cfg.hex(image)?;
    super::super::oci::check_layers(&m.layers, image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_described_from_their_bytes() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        let d = describe_document(index, "x", "manifest 1").unwrap();
        assert_eq!(d.media_type, MT_OCI_INDEX);
        assert_eq!(d.size, index.len() as u64);
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#;
        assert_eq!(
            describe_document(docker, "x", "m").unwrap().media_type,
            MT_DOCKER_MANIFEST
        );
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        let err = describe_document(v1, "x", "manifest 1").unwrap_err();
        assert!(
            err.to_string()
                .contains("schema version 1 is not supported"),
            "{err}"
        );
        let odd =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#;
        assert!(describe_document(odd, "x", "m")
            .unwrap_err()
            .to_string()
            .contains("unsupported media type"));
    }

    #[test]
    fn platform_choice() {
        let child = |os: &str, arch: &str| {
            let mut d = Descriptor::new(MT_OCI_MANIFEST, format!("{os}{arch}").as_bytes());
            d.platform = Some(super::super::super::oci::Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: None,
            });
            d
        };
        let index = Index::new(vec![child("linux", "arm64"), child("linux", "amd64")]);
        assert_eq!(index.pick_platform(), Some(&index.manifests[1]));
        let arm = Index::new(vec![child("linux", "arm64"), child("windows", "amd64")]);
        assert_eq!(arm.pick_platform(), None);
        assert_eq!(platforms_of(&arm), "linux/arm64, windows/amd64");
    }
}
