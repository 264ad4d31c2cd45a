//! Store tests: pack -> import -> list/find -> rootfs -> remove, tags,
//! shared blobs, reproducible packing, skopeo interoperability.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use super::super::{ErrorKind, ImageError};
use super::*;

#[test]
fn pack_import_find_rootfs_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let content = b"\x7fELF pretend static binary".repeat(100);
    let (packed, tar) = pack_to(tmp.path(), "example.com/echo:1.0", &content, "echo.tar");
    assert_eq!(packed.name, "example.com/echo:1.0");
    let store = new_store(tmp.path());
    assert!(store.list().unwrap().is_empty());

    let imported = store.import(&tar, None).unwrap();
    assert_eq!(imported.len(), 1);
    let image = &imported[0];
    assert_eq!(image.id, packed.id);
    assert_eq!(image.repo_tags, vec!["example.com/echo:1.0"]);
    assert_eq!(
        image.repo_digests,
        vec![format!("example.com/echo@{}", packed.manifest_digest)]
    );
    assert_eq!(image.config.entrypoint, vec!["/component"]);
    assert!(image.config.cmd.is_empty());
    assert!(!image.pinned);
    assert!(image.size > 0);
    assert_eq!(store.list().unwrap(), imported);

    let hex = &packed.id[7..];
    for reference in [
        "example.com/echo:1.0".to_string(),
        packed.id.clone(),
        hex.to_string(),
        hex[..12].to_string(),
        format!("sha256:{}", &hex[..20]),
        format!("example.com/echo@{}", packed.manifest_digest),
        format!("example.com/echo:1.0@{}", packed.manifest_digest),
    ] {
        assert_eq!(
            store.find(&reference).unwrap().as_ref(),
            Some(image),
            "find {reference}"
        );
    }
    assert_eq!(store.find("example.com/echo").unwrap(), None); // :latest
    assert_eq!(store.find("example.com/other:1.0").unwrap(), None);
    assert_eq!(store.find(&"0".repeat(64)).unwrap(), None);
    assert_eq!(
        store.find("Bad/Name").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );

    let root = store.rootfs(image).unwrap();
    assert_eq!(root, store.dir().join("rootfs").join(hex));
    let bin = root.join("component");
    let meta = fs::symlink_metadata(&bin).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    if nix::unistd::geteuid().is_root() {
        assert_eq!((meta.uid(), meta.gid()), (0, 0));
    }
    assert_eq!(fs::read(&bin).unwrap(), content);
    assert_eq!(store.rootfs(image).unwrap(), root); // second call: already there
    assert_eq!(dir_names(&store.dir().join("tmp")), Vec::<String>::new());

    let usage = store.usage().unwrap();
    assert!(usage.used_bytes > content.len() as u64);
    assert!(usage.inodes_used > 5);
    assert_eq!(usage.mountpoint, store.dir());

    assert!(store.remove("example.com/echo:1.0").unwrap());
    assert_eq!(store.find(&packed.id).unwrap(), None);
    assert!(store.list().unwrap().is_empty());
    assert!(store_blobs(&store).is_empty());
    assert!(dir_names(&store.dir().join("rootfs")).is_empty());
    assert!(!store.remove("example.com/echo:1.0").unwrap());
    assert!(!store.remove(&packed.id).unwrap());
    let err = store.rootfs(image).unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
}

#[test]
fn short_names_normalize_and_tags_are_removed_one_by_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (packed, dir) = pack_to(tmp.path(), "busybox", b"bb", "bb-layout");
    let store = new_store(tmp.path());
    store.import(&dir, None).unwrap();
    let found = store.find("busybox").unwrap().unwrap();
    assert_eq!(found.repo_tags, vec!["docker.io/library/busybox:latest"]);
    assert_eq!(
        store.find("docker.io/library/busybox:latest").unwrap(),
        Some(found.clone())
    );

    let second = store.import(&dir, Some("example.com/bb:2")).unwrap();
    assert_eq!(
        second[0].repo_tags,
        vec!["docker.io/library/busybox:latest", "example.com/bb:2"]
    );
    assert_eq!(store.list().unwrap().len(), 1);
    store.rootfs(&second[0]).unwrap();
    let blobs = store_blobs(&store);

    assert!(store.remove("busybox").unwrap());
    let left = store.find(&packed.id).unwrap().unwrap();
    assert_eq!(left.repo_tags, vec!["example.com/bb:2"]);
    assert_eq!(store_blobs(&store), blobs);
    assert!(store.dir().join("rootfs").join(&packed.id[7..]).is_dir());

    assert!(store.remove(&packed.id[7..19]).unwrap()); // by id prefix: all of it
    assert!(store.list().unwrap().is_empty());
    assert!(store_blobs(&store).is_empty());
    assert!(dir_names(&store.dir().join("rootfs")).is_empty());
}

#[test]
fn pack_is_reproducible_and_shared_layers_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, tar_a) = pack_to(tmp.path(), "example.com/echo:1.0", b"same binary", "a.tar");
    let (a2, tar_a2) = pack_to(tmp.path(), "example.com/echo:1.0", b"same binary", "a2.tar");
    assert_eq!(a, a2);
    assert_eq!(fs::read(&tar_a).unwrap(), fs::read(&tar_a2).unwrap());
    let (_, dir_a) = pack_to(tmp.path(), "example.com/echo:1.0", b"same binary", "a-dir");
    let blob = |d: &str| fs::read(dir_a.join("blobs/sha256").join(&d[7..])).unwrap();
    assert!(!blob(&a.manifest_digest).is_empty());

    // Same binary, different Cmd: another config and manifest, the same layer.
    let bin = fake_binary(tmp.path(), b"same binary");
    let mut opts = PackOptions::new(bin, "example.com/echo:2.0", tmp.path().join("b.tar"));
    opts.args = vec!["--port".into(), "1".into()];
    opts.env = vec!["X=1".into()];
    let b = pack(&opts).unwrap();
    assert_ne!(a.id, b.id);

    let store = new_store(tmp.path());
    store.import(&tar_a, None).unwrap();
    let imported = store.import(&opts.output, None).unwrap();
    assert_eq!(imported[0].config.cmd, vec!["--port", "1"]);
    assert_eq!(imported[0].config.env, vec!["X=1"]);
    assert_eq!(store.list().unwrap().len(), 2);
    assert_eq!(store_blobs(&store).len(), 5); // 2 manifests + 2 configs + 1 layer

    let ia = store.find("example.com/echo:1.0").unwrap().unwrap();
    let ib = store.find("example.com/echo:2.0").unwrap().unwrap();
    store.rootfs(&ia).unwrap();
    store.rootfs(&ib).unwrap();
    assert!(store.remove("example.com/echo:1.0").unwrap());
    assert_eq!(store_blobs(&store).len(), 3);
    assert_eq!(
        dir_names(&store.dir().join("rootfs")),
        vec![b.id[7..].to_string()]
    );
    assert_eq!(
        fs::read(store.rootfs(&ib).unwrap().join("component")).unwrap(),
        b"same binary"
    );
}

#[test]
fn pack_places_binary_under_nested_path_and_rejects_bad_options() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_binary(tmp.path(), b"nested");
    let mut opts = PackOptions::new(&bin, "example.com/n:1", tmp.path().join("n"));
    opts.entrypoint_path = "/usr/local/bin/server".into();
    pack(&opts).unwrap();
    let store = new_store(tmp.path());
    let image = store.import(&opts.output, None).unwrap().remove(0);
    assert_eq!(image.config.entrypoint, vec!["/usr/local/bin/server"]);
    let root = store.rootfs(&image).unwrap();
    for d in ["usr", "usr/local", "usr/local/bin"] {
        let m = fs::metadata(root.join(d)).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    }
    assert_eq!(
        fs::read(root.join("usr/local/bin/server")).unwrap(),
        b"nested"
    );

    for bad in ["relative", "/", "/a/../b"] {
        opts.entrypoint_path = bad.into();
        assert_eq!(
            pack(&opts).unwrap_err().kind(),
            ErrorKind::InvalidArgument,
            "{bad}"
        );
    }
    opts.entrypoint_path = String::new();
    opts.name = "Bad".into();
    assert!(matches!(
        pack(&opts).unwrap_err(),
        ImageError::InvalidReference { .. }
    ));
    opts.name = "ok".into();
    opts.binary = tmp.path().to_path_buf();
    assert_eq!(pack(&opts).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn store_is_a_readable_oci_layout_and_reopens() {
    let tmp = tempfile::tempdir().unwrap();
    let (packed, tar) = pack_to(tmp.path(), "example.com/echo:1.0", b"x", "e.tar");
    let store = new_store(tmp.path());
    store.import(&tar, None).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(store.dir().join("oci/index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        packed.manifest_digest.as_str()
    );
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "example.com/echo:1.0"
    );
    // A second handle (as another process would have) sees the same images.
    let again = ImageStore::open(store.dir()).unwrap();
    assert_eq!(again.list().unwrap(), store.list().unwrap());
    // A stale work dir from a crashed process is cleaned on open.
    let stale = store.dir().join("tmp/w-crashed");
    fs::create_dir_all(stale.join("rootfs/half")).unwrap();
    ImageStore::open(store.dir()).unwrap();
    assert!(!stale.exists());
}

#[test]
fn skopeo_reads_packed_images_and_the_store() {
    if Command::new("skopeo").arg("--version").output().is_err() {
        println!("note: skopeo not installed; skipping the skopeo interoperability test");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (packed, tar) = pack_to(tmp.path(), "example.com/echo:1.0", b"skopeo", "e.tar");
    let (_, dir) = pack_to(tmp.path(), "example.com/echo:1.0", b"skopeo", "e-dir");
    let store = new_store(tmp.path());
    store.import(&tar, None).unwrap();
    let store_ref = format!(
        "oci:{}:example.com/echo:1.0",
        store.dir().join("oci").display()
    );
    for target in [
        format!("oci-archive:{}", tar.display()),
        format!("oci:{}", dir.display()),
        store_ref,
    ] {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", &target])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo inspect {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            sha256_digest(&out.stdout),
            packed.manifest_digest,
            "{target}"
        );
        let out = Command::new("skopeo")
            .args(["inspect", "--config", &target])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo inspect --config {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["config"]["Entrypoint"][0], "/component");
    }
    // And skopeo can copy the packed image into a layout that we import.
    let copied = tmp.path().join("copied");
    let out = Command::new("skopeo")
        .args([
            "copy",
            &format!("oci-archive:{}", tar.display()),
            &format!("oci:{}:example.com/copied:1", copied.display()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = store.import(&copied, None).unwrap().remove(0);
    // skopeo kept the manifest as is, so it is the same image under a new name.
    assert_eq!(image.id, packed.id);
    assert_eq!(
        image.repo_tags,
        vec!["example.com/copied:1", "example.com/echo:1.0"]
    );
}
