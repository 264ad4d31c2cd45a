//! Robustness tests: mutated archives never panic and never half-import;
//! readers and writers in parallel (as `vimanad serve` and `vimanad image
//! import` would be) always see a consistent store.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;

#[test]
fn mutated_layout_tars_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let (packed, tar) = pack_to(
        tmp.path(),
        "example.com/m:1",
        &b"binary".repeat(50),
        "m.tar",
    );
    let original = fs::read(&tar).unwrap();
    let store = new_store(tmp.path());
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let bad = tmp.path().join("bad.tar");
    for round in 0..60 {
        let mut bytes = original.clone();
        for _ in 0..1 + round % 4 {
            let i = (next() % bytes.len() as u64) as usize;
            bytes[i] = next() as u8;
        }
        if round % 10 == 9 {
            bytes.truncate((next() % bytes.len() as u64) as usize);
        }
        fs::write(&bad, &bytes).unwrap();
        match store.import(&bad, None) {
            // A flip in padding or an unused header field changes nothing that matters.
            Ok(images) => assert_eq!(images[0].id, packed.id),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        for image in store.list().unwrap() {
            assert_eq!(image.id, packed.id, "round {round}");
            store.rootfs(&image).unwrap();
        }
        store.remove(&packed.id).unwrap();
        assert!(store_blobs(&store).is_empty(), "round {round}");
        assert!(
            dir_names(&store.dir().join("tmp")).is_empty(),
            "round {round}"
        );
    }
}

#[test]
fn readers_see_a_consistent_store_while_another_handle_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, a) = pack_to(tmp.path(), "example.com/a:1", b"a", "a.tar");
    let (_, b) = pack_to(tmp.path(), "example.com/b:1", b"b", "b.tar");
    let store = new_store(tmp.path());
    store.import(&a, None).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, dir) = (Arc::clone(&done), store.dir().to_path_buf());
        std::thread::spawn(move || {
            let reader = ImageStore::open(&dir).unwrap();
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) || reads == 0 {
                let images = reader.list().unwrap();
                assert!(images.iter().any(|i| i.repo_tags == ["example.com/a:1"]));
                let a = reader.find("example.com/a:1").unwrap().unwrap();
                reader.rootfs(&a).unwrap();
                reads += 1;
            }
            reads
        })
    };
    for _ in 0..20 {
        store.import(&b, None).unwrap();
        assert!(store.remove("example.com/b:1").unwrap());
    }
    done.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(store.list().unwrap().len(), 1);
}
