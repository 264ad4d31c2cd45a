//! Unpack tests: whiteouts and opaque directories across layers, links,
//! modes, and malicious layers that must fail leaving nothing behind.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde_json::json;

use super::super::oci::sha256_digest;
use super::super::{ErrorKind, Image, ImageError};
use super::*;

fn import_one(tmp: &Path, layers: &[Vec<u8>], name: &str) -> (ImageStore, Image) {
    let layout = layout_with_layers(
        tmp,
        &format!("layout-{}", name.replace(['/', ':'], "_")),
        layers,
        name,
    );
    let store = new_store(tmp);
    let image = store.import(&layout, None).unwrap().remove(0);
    (store, image)
}

#[test]
fn whiteouts_and_opaque_dirs_across_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tar_of(&[
        E::Dir("a/", 0o755),
        E::File("a/x", b"x", 0o644),
        E::File("a/y", b"y", 0o600),
        E::Dir("b/", 0o700),
        E::File("b/1", b"1", 0o644),
        E::Dir("b/sub/", 0o755),
        E::File("b/sub/deep", b"d", 0o644),
        E::File("c", b"c", 0o644),
        E::Dir("d/", 0o755),
        E::File("d/old", b"old", 0o644),
        E::Dir("keep/", 0o755),
        E::File("keep/k", b"k", 0o4755),
        E::Symlink("l", "a/y"),
        E::Hardlink("h", "a/y"),
        E::Dir("gone/", 0o755),
        E::File("gone/inner", b"i", 0o644),
    ]);
    let upper = tar_of(&[
        E::File("a/.wh.x", b"", 0o644),
        E::Dir("b/", 0o755),
        E::File("b/.wh..wh..opq", b"", 0o644),
        E::File("b/2", b"2", 0o644),
        E::Dir("b/sub/", 0o755), // re-created in this layer: still empty of lower content
        E::File(".wh.c", b"", 0o644),
        E::File("d/new", b"new", 0o644),
        E::File("d/.wh..wh..opq", b"", 0o644), // after a sibling: order must not matter
        E::File(".wh.gone", b"", 0o644),
        E::File("e", b"e", 0o640),
        E::File(".wh..wh.plnk", b"", 0o644), // aufs metadata: ignored
    ]);
    let (store, image) = import_one(tmp.path(), &[lower, upper], "example.com/wh:1");
    let root = store.rootfs(&image).unwrap();
    assert_eq!(dir_names(&root), vec!["a", "b", "d", "e", "h", "keep", "l"]);
    assert_eq!(dir_names(&root.join("a")), vec!["y"]);
    assert_eq!(dir_names(&root.join("b")), vec!["2", "sub"]);
    assert!(dir_names(&root.join("b/sub")).is_empty());
    assert_eq!(dir_names(&root.join("d")), vec!["new"]);
    assert_eq!(
        fs::metadata(root.join("b")).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::metadata(root.join("a/y")).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert_eq!(
        fs::metadata(root.join("keep/k"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::metadata(root.join("e")).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert_eq!(fs::read_link(root.join("l")).unwrap(), Path::new("a/y"));
    let (h, y) = (
        fs::metadata(root.join("h")).unwrap(),
        fs::metadata(root.join("a/y")).unwrap(),
    );
    assert_eq!(h.ino(), y.ino());
    assert_eq!(fs::metadata(root.join("e")).unwrap().mtime(), 1_700_000_000);
}

#[test]
fn uncompressed_layers_and_in_root_symlinks_are_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let l1 = tar_of(&[
        E::Dir("usr/", 0o755),
        E::Dir("usr/lib/", 0o755),
        E::Symlink("lib", "usr/lib"),
    ]);
    let l2 = tar_of(&[
        E::File("lib/libx.so", b"so", 0o755),
        E::Symlink("abs", "/etc/passwd"),
    ]);
    let layout = tmp.path().join("plain");
    let m = put_image(&layout, &[l1, l2], false, "amd64");
    put_index(&layout, vec![named(m, "example.com/plain:1")]);
    let store = new_store(tmp.path());
    let image = store.import(&layout, None).unwrap().remove(0);
    let root = store.rootfs(&image).unwrap();
    assert_eq!(fs::read(root.join("usr/lib/libx.so")).unwrap(), b"so");
    // A symlink may point anywhere; it is only never followed while unpacking.
    assert_eq!(
        fs::read_link(root.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
}

fn assert_unsafe(layers: Vec<Vec<u8>>, needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (store, image) = import_one(tmp.path(), &layers, "example.com/evil:1");
    let err = store.rootfs(&image).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::InvalidImage, "{msg}");
    assert!(matches!(err, ImageError::UnsafePath { .. }), "{msg}");
    assert!(msg.contains("example.com/evil:1"), "{msg}");
    assert!(msg.contains(needle), "{msg}");
    assert!(dir_names(&store.dir().join("rootfs")).is_empty());
    assert!(dir_names(&store.dir().join("tmp")).is_empty());
    assert!(!tmp.path().join("x").exists());
    assert!(!store.dir().join("x").exists());
    assert!(!store.dir().join("tmp/x").exists());
    // The image itself stays and can be removed.
    assert!(store.remove("example.com/evil:1").unwrap());
}

#[test]
fn parent_dir_entry_is_refused() {
    assert_unsafe(vec![tar_of(&[E::File("../x", b"evil", 0o644)])], "\"../x\"");
    assert_unsafe(
        vec![tar_of(&[
            E::Dir("a/", 0o755),
            E::File("a/../../x", b"e", 0o644),
        ])],
        "..",
    );
}

#[test]
fn absolute_entry_is_refused() {
    assert_unsafe(vec![tar_of(&[E::File("/etc/x", b"evil", 0o644)])], "/etc/x");
}

#[test]
fn symlink_to_root_then_write_through_it_is_refused() {
    assert_unsafe(
        vec![tar_of(&[
            E::Symlink("a", "/"),
            E::File("a/etc/passwd", b"root::0:0::/:/bin/sh", 0o644),
        ])],
        "a/etc/passwd",
    );
    // The same across two layers, and with a relative escape.
    assert_unsafe(
        vec![
            tar_of(&[E::Symlink("a", "/")]),
            tar_of(&[E::File("a/x", b"e", 0o644)]),
        ],
        "a/x",
    );
    assert_unsafe(
        vec![
            tar_of(&[E::Dir("d/", 0o755), E::Symlink("d/up", "../..")]),
            tar_of(&[E::File("d/up/x", b"e", 0o644)]),
        ],
        "d/up/x",
    );
}

#[test]
fn hardlink_outside_is_refused() {
    assert_unsafe(vec![tar_of(&[E::Hardlink("h", "../../x")])], "\"h\"");
    assert_unsafe(vec![tar_of(&[E::Hardlink("h", "/etc/passwd")])], "\"h\"");
    // A hard link through an escaping symlink.
    assert_unsafe(
        vec![tar_of(&[
            E::Symlink("s", "/etc"),
            E::Hardlink("h", "s/passwd"),
        ])],
        "s",
    );
}

#[test]
fn diff_id_mismatch_and_garbage_layers_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("lay");
    let layer = put_blob(
        &layout,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &gz(&tar_of(&[E::File("f", b"data", 0o644)])),
    );
    let config = json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b"something else")]}});
    let config = put_blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).unwrap(),
    );
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer]});
    let m = put_blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    put_index(&layout, vec![named(m, "example.com/diff:1")]);
    let store = new_store(tmp.path());
    let image = store.import(&layout, None).unwrap().remove(0);
    let err = store.rootfs(&image).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("example.com/diff:1"), "{err}");
    assert!(dir_names(&store.dir().join("rootfs")).is_empty());
    assert!(dir_names(&store.dir().join("tmp")).is_empty());

    let layout2 = tmp.path().join("garbage");
    let m2 = put_image(
        &layout2,
        &[b"this is not a tar archive at all".repeat(20)],
        true,
        "amd64",
    );
    put_index(&layout2, vec![named(m2, "example.com/garbage:1")]);
    let image2 = store.import(&layout2, None).unwrap().remove(0);
    let err = store.rootfs(&image2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidImage, "{err}");
    assert!(err.to_string().contains("example.com/garbage:1"), "{err}");
    assert!(dir_names(&store.dir().join("rootfs")).is_empty());
}
