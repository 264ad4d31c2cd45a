//! Import tests: verification (digest, size, JSON), naming rules, platform
//! selection through nested indexes, Docker media types, layout tars.

use std::fs;

use serde_json::json;

use super::super::{ErrorKind, ImageError};
use super::*;

/// The store's observable state: index.json bytes and blob names.
fn snapshot(store: &ImageStore) -> (Vec<u8>, Vec<String>, Vec<String>) {
    (
        fs::read(store.dir().join("oci/index.json")).unwrap(),
        store_blobs(store),
        dir_names(&store.dir().join("tmp")),
    )
}

#[test]
fn digest_or_size_mismatch_fails_and_leaves_the_store_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let (_, ok) = pack_to(tmp.path(), "example.com/ok:1", b"ok", "ok");
    store.import(&ok, None).unwrap();
    let before = snapshot(&store);

    let (packed, dir) = pack_to(tmp.path(), "example.com/echo:1.0", b"good bytes", "bad");
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(dir.join("blobs/sha256").join(&packed.manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let layer_path = dir.join("blobs/sha256").join(&layer_digest[7..]);
    let mut bytes = fs::read(&layer_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&layer_path, &bytes).unwrap();
    let err = store.import(&dir, None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{msg}");
    assert!(msg.starts_with(&format!("image \"example.com/echo:1.0\": layer {layer_digest}: digest mismatch (expected {layer_digest}, got sha256:")), "{msg}");
    assert_eq!(snapshot(&store), before);

    bytes.push(0);
    fs::write(&layer_path, &bytes).unwrap();
    let err = store.import(&dir, None).unwrap_err();
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
    assert_eq!(snapshot(&store), before);

    // The same through a tar of the layout.
    let tar_path = tmp.path().join("bad.tar");
    let mut b = tar::Builder::new(fs::File::create(&tar_path).unwrap());
    b.append_dir_all(".", &dir).unwrap();
    b.finish().unwrap();
    drop(b);
    assert!(store.import(&tar_path, None).is_err());
    assert_eq!(snapshot(&store), before);
}

#[test]
fn malformed_and_missing_documents_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let layout = tmp.path().join("l");
    fs::create_dir_all(&layout).unwrap();
    let err = store.import(&layout, None).unwrap_err();
    assert!(err.to_string().contains("no index.json"), "{err}");

    fs::write(layout.join("index.json"), b"{not json").unwrap();
    let err = store.import(&layout, None).unwrap_err();
    assert!(
        err.to_string().contains("index.json: malformed json"),
        "{err}"
    );

    let bogus = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:../../../../etc/passwd", "size": 3});
    put_index(&layout, vec![named(bogus, "example.com/x:1")]);
    let err = store.import(&layout, None).unwrap_err();
    assert!(err.to_string().contains("malformed digest"), "{err}");

    let manifest = put_blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        b"[1,2",
    );
    put_index(&layout, vec![named(manifest, "example.com/x:1")]);
    let err = store.import(&layout, None).unwrap_err();
    assert!(err.to_string().contains("malformed json"), "{err}");

    let missing = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha256_of(b"absent"), "size": 6});
    put_index(&layout, vec![named(missing, "example.com/x:1")]);
    let err = store.import(&layout, None).unwrap_err();
    assert!(err.to_string().contains("blob missing"), "{err}");

    let err = store
        .import(&tmp.path().join("nope.tar"), None)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(store.list().unwrap().is_empty());
    assert!(store_blobs(&store).is_empty());
}

fn sha256_of(b: &[u8]) -> String {
    super::super::oci::sha256_digest(b)
}

#[test]
fn names_come_from_the_argument_or_the_annotation() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let layout = tmp.path().join("tag-only");
    let m = put_image(
        &layout,
        &[tar_of(&[E::File("f", b"1", 0o644)])],
        true,
        "amd64",
    );
    put_index(&layout, vec![named(m.clone(), "1.0")]);
    let err = store.import(&layout, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("\"1.0\" is only a tag"), "{err}");
    let image = store
        .import(&layout, Some("example.com/named"))
        .unwrap()
        .remove(0);
    assert_eq!(image.repo_tags, vec!["example.com/named:latest"]);
    assert_eq!(image.config.env, vec!["A=1"]);
    assert_eq!(image.config.labels.get("k").map(String::as_str), Some("v"));

    put_index(&layout, vec![m.clone()]);
    let err = store.import(&layout, None).unwrap_err();
    assert!(err.to_string().contains("give a name"), "{err}");

    // containerd's export: full name in io.containerd.image.name.
    let mut d = named(m, "1.0");
    d["annotations"]["io.containerd.image.name"] = json!("example.com/ctr:1.0");
    put_index(&layout, vec![d]);
    let image = store.import(&layout, None).unwrap().remove(0);
    assert_eq!(
        image.repo_tags,
        vec!["example.com/ctr:1.0", "example.com/named:latest"]
    );

    assert!(matches!(
        store.import(&layout, Some("Bad Name")).unwrap_err(),
        ImageError::InvalidReference { .. }
    ));
}

#[test]
fn several_images_import_by_annotation_but_not_under_one_name() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let layout = tmp.path().join("multi");
    let a = put_image(
        &layout,
        &[tar_of(&[E::File("a", b"a", 0o644)])],
        true,
        "amd64",
    );
    let b = put_image(
        &layout,
        &[tar_of(&[E::File("b", b"b", 0o644)])],
        true,
        "amd64",
    );
    put_index(
        &layout,
        vec![
            named(a.clone(), "example.com/a:1"),
            named(b, "example.com/b:1"),
            named(a, "example.com/a:2"),
        ],
    );
    let err = store.import(&layout, Some("example.com/one")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.to_string().contains("holds 2 linux/amd64 images"),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
    let images = store.import(&layout, None).unwrap();
    assert_eq!(images.len(), 2);
    let tags: Vec<Vec<String>> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.repo_tags)
        .collect();
    assert!(
        tags.contains(&vec!["example.com/a:1".into(), "example.com/a:2".into()]),
        "{tags:?}"
    );
    assert!(tags.contains(&vec!["example.com/b:1".into()]), "{tags:?}");
    // Re-tagging moves a name; the image it left keeps its other name.
    let (_, other) = pack_to(tmp.path(), "example.com/a:1", b"new a", "new-a");
    store.import(&other, None).unwrap();
    assert_eq!(store.list().unwrap().len(), 3);
    assert!(store.remove("example.com/a:2").unwrap());
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn nested_index_picks_linux_amd64_and_skips_other_platforms() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let layout = tmp.path().join("nested");
    let amd = put_image(
        &layout,
        &[tar_of(&[E::File("arch", b"amd64", 0o644)])],
        true,
        "amd64",
    );
    let arm = put_image(
        &layout,
        &[tar_of(&[E::File("arch", b"arm64", 0o644)])],
        true,
        "arm64",
    );
    let mut amd_d = amd.clone();
    amd_d["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let mut arm_d = arm.clone();
    arm_d["platform"] = json!({"architecture": "arm64", "os": "linux", "variant": "v8"});
    let inner = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [arm_d, amd_d]});
    let inner = put_blob(
        &layout,
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&inner).unwrap(),
    );
    let outer = json!({"schemaVersion": 2, "manifests": [inner]});
    let outer = put_blob(
        &layout,
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&outer).unwrap(),
    );
    // Also a top-level arm64-only manifest, which is skipped.
    put_index(
        &layout,
        vec![
            named(outer.clone(), "example.com/multi:1"),
            named(arm.clone(), "example.com/armonly:1"),
        ],
    );
    let images = store.import(&layout, None).unwrap();
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image.repo_tags, vec!["example.com/multi:1"]);
    let outer_digest = outer["digest"].as_str().unwrap();
    assert_eq!(
        image.repo_digests,
        vec![format!("example.com/multi@{outer_digest}")]
    );
    let amd_digest = amd["digest"].as_str().unwrap();
    assert_eq!(
        store
            .find(&format!("example.com/multi@{amd_digest}"))
            .unwrap()
            .as_ref(),
        Some(image)
    );
    let root = store.rootfs(image).unwrap();
    assert_eq!(fs::read(root.join("arch")).unwrap(), b"amd64");
    // Only the amd64 path was stored: 2 indexes + manifest + config + layer.
    assert_eq!(store_blobs(&store).len(), 5);

    put_index(&layout, vec![named(arm, "example.com/armonly:1")]);
    let err = store.import(&layout, None).unwrap_err();
    assert!(err.to_string().contains("no linux/amd64 image"), "{err}");
    assert!(store.remove("example.com/multi:1").unwrap());
    assert!(store_blobs(&store).is_empty());
}

#[test]
fn docker_media_types_and_gzipped_layout_tars_import() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let layout = tmp.path().join("docker");
    let layer_tar = tar_of(&[E::File("hello", b"docker", 0o644)]);
    let layer = put_blob(
        &layout,
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        &gz(&layer_tar),
    );
    let config = json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"], "Entrypoint": null, "WorkingDir": "/w", "User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": [sha256_of(&layer_tar)]}});
    let config = put_blob(
        &layout,
        "application/vnd.docker.container.image.v1+json",
        &serde_json::to_vec(&config).unwrap(),
    );
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "config": config, "layers": [layer]});
    let m = put_blob(
        &layout,
        "application/vnd.docker.distribution.manifest.v2+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    put_index(&layout, vec![named(m, "docker.io/library/hello:latest")]);
    let tar_gz = tmp.path().join("docker.tar.gz");
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all("./", &layout).unwrap();
    fs::write(&tar_gz, gz(&b.into_inner().unwrap())).unwrap();
    let image = store.import(&tar_gz, None).unwrap().remove(0);
    assert_eq!(image.config.cmd, vec!["/hello"]);
    assert!(image.config.entrypoint.is_empty());
    assert_eq!(image.config.working_dir.as_deref(), Some("/w"));
    assert_eq!(image.config.user.as_deref(), Some("1000"));
    assert_eq!(store.find("hello").unwrap().as_ref(), Some(&image));
    assert_eq!(
        fs::read(store.rootfs(&image).unwrap().join("hello")).unwrap(),
        b"docker"
    );
}

#[test]
fn layout_tars_with_unsafe_paths_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let evil = tmp.path().join("evil.tar");
    fs::write(&evil, tar_of(&[E::File("../index.json", b"{}", 0o644)])).unwrap();
    let err = store.import(&evil, None).unwrap_err();
    assert!(err.to_string().contains("unsafe path"), "{err}");
    fs::write(&evil, b"not a tar").unwrap();
    assert!(store.import(&evil, None).is_err());
    assert!(dir_names(&store.dir().join("tmp")).is_empty());
}
