//! PullImage from real OCI registries: Debian's `docker-registry` (the CNCF
//! distribution registry) started per test on loopback, images put there by
//! `skopeo copy` and by `vimanad image push`, with and without htpasswd auth,
//! through the whole CRI flow to a running component; and every bad input
//! (registry down, 401, 404, another platform only, a hand-built malicious
//! registry's wrong digest, short or cut layer, 500s, escaping layer paths),
//! each failing with its cause named and the store unchanged.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use k8s_cri::v1 as cri;
use sha2::{Digest as _, Sha256};
use tonic::Code;

const A: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
const REPO: &str = "example/vimana-example";

fn auth(user: &str, password: &str) -> Option<cri::AuthConfig> {
    Some(cri::AuthConfig {
        username: user.to_owned(),
        password: password.to_owned(),
        ..Default::default()
    })
}

/// `vimanad image ...`; returns (success, stdout, stderr).
fn vimanad_image(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(vimanad())
        .arg("image")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_image_copied_by_skopeo_pulls_over_cri_and_runs() {
    let registry = Registry::start();
    let name = format!("{}/{REPO}:1.0.0", registry.host);
    skopeo_copy(&example_image_tar(), &name, None);
    let digest = skopeo_digest(&name, None);
    let mut node = Node::start_empty(&["--insecure-registry", &registry.host]).await;
    let used_before = node.image_fs_used().await;

    let id = node.pull(&name, None).await.unwrap();
    assert!(id.starts_with("sha256:"), "{id}");

    // ImageStatus and ListImages: tags, digests, size, pinned.
    let image = node.image_status(&name).await.expect("pulled image");
    assert_eq!(image.id, id);
    assert_eq!(image.repo_tags, vec![name.clone()]);
    assert_eq!(
        image.repo_digests,
        vec![format!("{}/{REPO}@{digest}", registry.host)]
    );
    assert!(image.size > 1000, "{}", image.size);
    assert!(!image.pinned);
    assert_eq!(node.list_images().await, vec![image.clone()]);
    // ImageFsInfo sees the blobs and the unpacked root filesystem.
    let used_after = node.image_fs_used().await;
    assert!(
        used_after > used_before + image.size / 2,
        "{used_before} -> {used_after}"
    );
    assert!(node.log().contains("pull progress"), "{}", node.log());

    // The whole CRI flow with the pulled name.
    let pod = node.run_pod("pulled", A).await;
    node.create_with_image(&pod, &name).await.unwrap();
    node.start_container(&pod).await.unwrap();
    node.wait_state(&pod, cri::ContainerState::ContainerRunning)
        .await;

    // Pull again: the manifest is asked for, no blob is fetched again.
    let layer_gets = |r: &Registry| {
        r.log()
            .lines()
            .filter(|l| l.contains(&format!("\"GET /v2/{REPO}/blobs/")))
            .count()
    };
    let blob_gets = layer_gets(&registry);
    assert_eq!(node.pull(&name, None).await.unwrap(), id);
    assert_eq!(layer_gets(&registry), blob_gets);

    // By digest: the same image, now also known by its digest name.
    let by_digest = format!("{}/{REPO}@{digest}", registry.host);
    assert_eq!(node.pull(&by_digest, None).await.unwrap(), id);
    let image = node.image_status(&by_digest).await.expect("by digest");
    assert_eq!(image.id, id);
    assert_eq!(image.repo_tags, vec![name.clone()]);
    assert_eq!(node.list_images().await.len(), 1);
    node.stop_container(&pod, 5).await.unwrap();

    // The registry gone, a pull of an image the store holds still answers
    // (a node offline keeps its images); one it does not hold fails.
    drop(registry);
    assert_eq!(node.pull(&name, None).await.unwrap(), id);
    assert!(node.log().contains("using the image already stored"));
    let other = name.replace(":1.0.0", ":2.0.0");
    let err = node.pull(&other, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_download_it_once() {
    let registry = Registry::start();
    let name = format!("{}/{REPO}:1.0.0", registry.host);
    skopeo_copy(&example_image_tar(), &name, None);
    let mut node = Node::start_empty(&["--insecure-registry", &registry.host]).await;
    let (mut a, mut b) = (node.images.clone(), node.images.clone());
    let req = || cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: name.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (ra, rb) = tokio::join!(a.pull_image(req()), b.pull_image(req()));
    let (ra, rb) = (ra.unwrap().into_inner(), rb.unwrap().into_inner());
    assert_eq!(ra.image_ref, rb.image_ref);
    let image = node.image_status(&name).await.unwrap();
    assert_eq!(image.id, ra.image_ref);
    // Every blob (config and layer) was fetched exactly once.
    let log = registry.log();
    let gets: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("\"GET /v2/{REPO}/blobs/")))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert!(
        node.log().contains("joining the pull in flight"),
        "{}",
        node.log()
    );
}

#[tokio::test]
async fn vimanad_push_and_pull_behind_htpasswd() {
    let registry = Registry::start_with_auth("alice", "s3cret");
    let host = registry.host.clone();
    let name = format!("{host}/example/pushed:2.0");
    let tar = example_image_tar();
    let tar = tar.to_str().unwrap();

    // Without credentials the push is refused, clearly.
    let (ok, _, err) = vimanad_image(&["push", "--name", &name, "--insecure-registry", &host, tar]);
    assert!(!ok);
    assert!(err.contains("401 unauthorized"), "{err}");
    assert!(err.contains("no credentials were given"), "{err}");
    // With them, it goes; a second push finds every blob there.
    let creds = ["--username", "alice", "--password", "s3cret"];
    let mut args = vec!["push", "--name", &name, "--insecure-registry", &host];
    args.extend(creds);
    args.push(tar);
    let (ok, out, err) = vimanad_image(&args);
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("pushed {name}@sha256:")), "{out}");
    let (ok, _, err) = vimanad_image(&args);
    assert!(ok, "{err}");
    // skopeo reads what we pushed: the same manifest digest.
    let digest = skopeo_digest(&name, Some("alice:s3cret"));
    assert!(out.trim().ends_with(&digest), "{out} vs {digest}");

    let mut node = Node::start_empty(&["--insecure-registry", &host]).await;
    // No credentials, a wrong password: UNAUTHENTICATED, cause named.
    let err = node.pull(&name, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(&name), "{}", err.message());
    assert!(
        err.message().contains("no credentials were given"),
        "{}",
        err.message()
    );
    let err = node.pull(&name, auth("alice", "wrong")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message()
            .contains("401 unauthorized: the registry refused the credentials"),
        "{}",
        err.message()
    );
    assert!(node.list_images().await.is_empty());
    // The right password, and the same as docker's `auth` field.
    let id = node.pull(&name, auth("alice", "s3cret")).await.unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    let again = node
        .pull(
            &name,
            Some(cri::AuthConfig {
                auth: encoded,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(again, id);
    let pod = node.run_pod("authed", A).await;
    node.create_with_image(&pod, &name).await.unwrap();
    node.start_container(&pod).await.unwrap();
    node.stop_container(&pod, 5).await.unwrap();

    // A stored image pushes too (by its name in the store).
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let (ok, _, err) = vimanad_image(&["import", tar, "--state-dir", state_dir]);
    assert!(ok, "{err}");
    let stored = format!("{host}/example/stored:3");
    let mut args = vec!["push", "--name", &stored, "--insecure-registry", &host];
    args.extend(creds);
    args.extend(["--state-dir", state_dir, IMAGE]);
    let (ok, out, err) = vimanad_image(&args);
    assert!(ok, "{err}");
    assert!(out.trim().ends_with(&digest), "{out}");
    assert_eq!(skopeo_digest(&stored, Some("alice:s3cret")), digest);
}

#[tokio::test]
async fn https_is_the_default_even_for_loopback() {
    let registry = Registry::start();
    let name = format!("{}/{REPO}:1.0.0", registry.host);
    skopeo_copy(&example_image_tar(), &name, None);
    let mut node = Node::start_empty(&[]).await;
    let err = node.pull(&name, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("does not speak TLS"),
        "{}",
        err.message()
    );
    assert!(node.log().contains("scheme=\"https\""), "{}", node.log());
    // The CLI takes the same path.
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let (ok, _, err) = vimanad_image(&["pull", &name, "--state-dir", state_dir]);
    assert!(!ok);
    assert!(err.contains("does not speak TLS"), "{err}");
    let (ok, out, err) = vimanad_image(&[
        "pull",
        &name,
        "--state-dir",
        state_dir,
        "--insecure-registry",
        &registry.host,
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("pulled sha256:"), "{out}");
}

// ---- Bad input ----

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

/// A layer tar written header by header, so that it can hold what the tar
/// crate's safe API refuses (`..`, absolute link targets).
fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_old();
        let (path, data, kind, link): (&str, &[u8], _, Option<&str>) = match e {
            Entry::File(p, d) => (p, d, tar::EntryType::Regular, None),
            Entry::Symlink(p, t) => (p, b"", tar::EntryType::Symlink, Some(t)),
        };
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(t) = link {
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A hand-built image: JSON documents and the layer, and its name parts.
struct Built {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

impl Built {
    /// linux/`arch`, one layer (gzipped or plain tar).
    fn new(tar: &[u8], gzipped: bool, arch: &str) -> Built {
        let layer = if gzipped { gzip(tar) } else { tar.to_vec() };
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Entrypoint": ["/component"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
        }))
        .unwrap();
        let layer_type = if gzipped {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": layer_type, "digest": sha256(&layer), "size": layer.len()}],
        }))
        .unwrap();
        Built {
            manifest,
            config,
            layer,
        }
    }

    fn index(&self, arch: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": sha256(&self.manifest), "size": self.manifest.len(),
                           "platform": {"os": "linux", "architecture": arch}}],
        }))
        .unwrap()
    }
}

/// What the malicious registry answers for one path.
#[derive(Clone)]
enum Reply {
    Json(&'static str, Vec<u8>),
    Blob(Vec<u8>),
    /// Says `declared` bytes, sends `body`, closes.
    Cut(usize, Vec<u8>),
    Status(u16),
}

/// A small hand-written distribution API server: `GET /v2/`, then whatever
/// the test put in `routes` (anything else is a 404 with an OCI error body).
struct Malicious {
    host: String,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
}

impl Malicious {
    fn start() -> Malicious {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let routes: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let shared = Arc::clone(&routes);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let routes = Arc::clone(&shared);
                std::thread::spawn(move || serve_one(conn, &routes));
            }
        });
        Malicious { host, routes }
    }

    fn route(&self, path: String, reply: Reply) {
        self.routes.lock().unwrap().insert(path, reply);
    }

    /// Serves `built` as `repo:tag`, with `layer` as the layer's answer.
    fn serve(&self, repo: &str, tag: &str, built: &Built, layer: Reply) -> String {
        let mt = "application/vnd.oci.image.manifest.v1+json";
        let manifest = Reply::Json(mt, built.manifest.clone());
        self.route(format!("/v2/{repo}/manifests/{tag}"), manifest.clone());
        self.route(
            format!("/v2/{repo}/manifests/{}", sha256(&built.manifest)),
            manifest,
        );
        self.route(
            format!("/v2/{repo}/blobs/{}", sha256(&built.config)),
            Reply::Blob(built.config.clone()),
        );
        self.route(format!("/v2/{repo}/blobs/{}", sha256(&built.layer)), layer);
        format!("{}/{repo}:{tag}", self.host)
    }
}

fn serve_one(mut conn: TcpStream, routes: &Mutex<HashMap<String, Reply>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("").to_owned();
    let reply = if path == "/v2/" {
        Reply::Json("application/json", b"{}".to_vec())
    } else {
        routes
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or(Reply::Status(404))
    };
    let send = |conn: &mut TcpStream, status: &str, headers: &str, body: &[u8], declared: usize| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {declared}\r\nConnection: close\r\n{headers}\r\n"
        )
        .into_bytes();
        if method != "HEAD" {
            out.extend_from_slice(body);
        }
        let _ = conn.write_all(&out);
        let _ = conn.flush();
    };
    match reply {
        Reply::Json(mt, body) => {
            let headers = format!(
                "Content-Type: {mt}\r\nDocker-Content-Digest: {}\r\n",
                sha256(&body)
            );
            send(&mut conn, "200 OK", &headers, &body, body.len());
        }
        Reply::Blob(body) => send(
            &mut conn,
            "200 OK",
            "Content-Type: application/octet-stream\r\n",
            &body,
            body.len(),
        ),
        Reply::Cut(declared, body) => send(
            &mut conn,
            "200 OK",
            "Content-Type: application/octet-stream\r\n",
            &body,
            declared,
        ),
        Reply::Status(404) => {
            let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
            send(
                &mut conn,
                "404 Not Found",
                "Content-Type: application/json\r\n",
                body,
                body.len(),
            );
        }
        Reply::Status(code) => {
            let body = b"upstream on fire";
            send(
                &mut conn,
                &format!("{code} Internal Server Error"),
                "Content-Type: text/plain\r\n",
                body,
                body.len(),
            );
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// Writes an OCI layout whose index.json points at an image index holding
/// only a linux/arm64 image.
fn arm64_only_layout(dir: &Path) {
    let built = Built::new(
        &layer_tar(&[Entry::File("component", b"arm")]),
        true,
        "arm64",
    );
    let index = built.index("arm64");
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for blob in [&built.manifest, &built.config, &built.layer, &index] {
        let d = sha256(blob);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), blob).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                       "digest": sha256(&index), "size": index.len()}],
    });
    std::fs::write(dir.join("index.json"), top.to_string()).unwrap();
}

#[tokio::test]
async fn bad_registries_and_bad_images_fail_clearly_and_leave_nothing() {
    let registry = Registry::start();
    let evil = Malicious::start();
    let down = format!("127.0.0.1:{}", free_tcp_port());
    let good = format!("{}/{REPO}:1.0.0", registry.host);
    skopeo_copy(&example_image_tar(), &good, None);
    // An image index with only linux/arm64, pushed by `vimanad image push`.
    let layout = tempfile::tempdir().unwrap();
    arm64_only_layout(layout.path());
    let arm = format!("{}/example/arm-only:1", registry.host);
    let (ok, _, err) = vimanad_image(&[
        "push",
        "--name",
        &arm,
        "--insecure-registry",
        &registry.host,
        layout.path().to_str().unwrap(),
    ]);
    assert!(ok, "{err}");

    let mut node = Node::start_empty(&[
        "--insecure-registry",
        &registry.host,
        "--insecure-registry",
        &evil.host,
        "--insecure-registry",
        &down,
    ])
    .await;
    // One good image in the store: the failures must not touch it.
    let good_id = node.pull(&good, None).await.unwrap();
    let images = node.list_images().await;
    let files = node.store_files();

    // The malicious registry's images: a good layer, then bad answers.
    let tar = layer_tar(&[Entry::File("component", b"#!/bin/true\n")]);
    let ok_image = Built::new(&tar, true, "amd64");
    let wrong = {
        let mut l = ok_image.layer.clone();
        let last = l.len() - 1;
        l[last] ^= 0xff;
        l
    };
    let half = ok_image.layer[..ok_image.layer.len() / 2].to_vec();
    let escaping = Built::new(
        &layer_tar(&[Entry::File("../../escaped", b"x")]),
        false,
        "amd64",
    );
    let absolute = Built::new(
        &layer_tar(&[Entry::Symlink("etc", "/etc"), Entry::File("etc/evil", b"x")]),
        true,
        "amd64",
    );
    let layer_digest = sha256(&ok_image.layer);
    let expected_bytes = format!("expected {} bytes", ok_image.layer.len());
    let of_bytes = format!("of {} bytes", ok_image.layer.len());
    let cases: Vec<(String, Code, Vec<&str>)> = vec![
        (
            format!("{down}/{REPO}:1.0.0"),
            Code::Unavailable,
            vec!["cannot connect", "onnection refused"],
        ),
        (
            format!("{}/example/nothing-here:1", registry.host),
            Code::NotFound,
            vec!["not found", "MANIFEST_UNKNOWN"],
        ),
        (
            format!("{}/{REPO}:no-such-tag", registry.host),
            Code::NotFound,
            vec!["not found", "MANIFEST_UNKNOWN"],
        ),
        (
            arm.clone(),
            Code::FailedPrecondition,
            vec!["no linux/amd64 image", "has only linux/arm64"],
        ),
        (
            evil.serve("evil/digest", "1", &ok_image, Reply::Blob(wrong)),
            Code::FailedPrecondition,
            vec!["digest mismatch", &layer_digest],
        ),
        (
            evil.serve("evil/short", "1", &ok_image, Reply::Blob(half.clone())),
            Code::FailedPrecondition,
            vec!["size mismatch", &expected_bytes],
        ),
        (
            evil.serve(
                "evil/cut",
                "1",
                &ok_image,
                Reply::Cut(ok_image.layer.len(), half),
            ),
            Code::Unavailable,
            vec!["cut short", &of_bytes],
        ),
        (
            evil.serve("evil/blob500", "1", &ok_image, Reply::Status(500)),
            Code::Unavailable,
            vec!["500 Internal Server Error", "upstream on fire"],
        ),
        (
            {
                evil.route(
                    "/v2/evil/manifest500/manifests/1".into(),
                    Reply::Status(500),
                );
                format!("{}/evil/manifest500:1", evil.host)
            },
            Code::Unavailable,
            vec!["fetching manifest 1", "500"],
        ),
        (
            evil.serve(
                "evil/escape",
                "1",
                &escaping,
                Reply::Blob(escaping.layer.clone()),
            ),
            Code::FailedPrecondition,
            vec!["unsafe path", "../../escaped"],
        ),
        (
            evil.serve(
                "evil/symlink",
                "1",
                &absolute,
                Reply::Blob(absolute.layer.clone()),
            ),
            Code::FailedPrecondition,
            vec!["unsafe path", "absolute target"],
        ),
    ];
    for (name, code, causes) in &cases {
        let err = node.pull(name, None).await.unwrap_err();
        assert_eq!(err.code(), *code, "{name}: {err:?}");
        let msg = err.message();
        eprintln!("{code:?}: {msg}");
        assert!(msg.contains(name.as_str()), "{name}: {msg}");
        for cause in causes {
            assert!(msg.contains(cause), "{name}: want {cause:?} in {msg}");
        }
        assert_eq!(node.list_images().await, images, "{name}");
        assert_eq!(node.store_files(), files, "{name}");
    }
    assert!(!Path::new("/tmp/escaped").exists());
    // The good image is still whole, and pulls again.
    assert_eq!(node.pull(&good, None).await.unwrap(), good_id);
    // A good image from the same hand-built registry does pull (so the bad
    // ones failed for their own causes), uncompressed layer included.
    let plain = Built::new(&tar, false, "amd64");
    let fine = evil.serve("evil/fine", "1", &plain, Reply::Blob(plain.layer.clone()));
    node.pull(&fine, None).await.unwrap();
    let index_name = {
        let index = ok_image.index("amd64");
        evil.route(
            "/v2/evil/indexed/manifests/1".into(),
            Reply::Json("application/vnd.oci.image.index.v1+json", index),
        );
        evil.serve(
            "evil/indexed",
            "unused",
            &ok_image,
            Reply::Blob(ok_image.layer.clone()),
        );
        format!("{}/evil/indexed:1", evil.host)
    };
    let id = node.pull(&index_name, None).await.unwrap();
    let indexed = node.image_status(&index_name).await.unwrap();
    assert_eq!(indexed.id, id);
    assert!(indexed.repo_tags.contains(&index_name), "{indexed:?}");
    assert!(node.image_status(&fine).await.is_some());
}

/// `--output` relative to the working directory, as an operator types it:
/// a bare `name.tar` and a bare directory name both pack and import.
#[test]
fn pack_writes_to_a_relative_output_and_the_result_imports() {
    let cwd = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    for out in ["echo.tar", "echo-layout"] {
        let status = Command::new(vimanad())
            .current_dir(cwd.path())
            .args(["image", "pack", "--binary"])
            .arg("/bin/true") // any regular file is a binary to pack
            .args(["--name", "example.com/relative:1.0.0", "--output", out])
            .env("RUST_LOG", "warn")
            .status()
            .unwrap();
        assert!(status.success(), "vimanad image pack --output {out} failed");
        let imported = Command::new(vimanad())
            .args(["image", "import", "--state-dir"])
            .arg(state.path())
            .arg(cwd.path().join(out))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            imported.status.success(),
            "import of {out}: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
        assert!(String::from_utf8_lossy(&imported.stdout).contains("example.com/relative:1.0.0"));
    }
}
