//! Container logs in the exact CRI format, their rotation, and the
//! isolation each container gets (namespaces, root filesystem, cgroup).

mod common;

use common::*;
use k8s_cri::v1 as cri;

const A: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");

struct Record {
    timestamp: String,
    stream: String,
    tag: String,
    message: String,
}

/// Parses a CRI log file, checking every line's shape on the way.
fn records(text: &str) -> Vec<Record> {
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (ts, stream, tag) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            let message = parts.next().unwrap_or("").to_owned();
            // 2026-11-28T21:47:23.123456789Z
            let b = ts.as_bytes();
            assert_eq!(b.len(), 30, "timestamp {ts:?} in {line:?}");
            assert!(
                ts.ends_with('Z') && b[4] == b'-' && b[10] == b'T' && b[19] == b'.',
                "{ts:?}"
            );
            assert!(ts[20..29].bytes().all(|c| c.is_ascii_digit()), "{ts:?}");
            assert!(stream == "stdout" || stream == "stderr", "{line:?}");
            assert!(tag == "F" || tag == "P", "{line:?}");
            Record {
                timestamp: ts.into(),
                stream: stream.into(),
                tag: tag.into(),
                message,
            }
        })
        .collect()
}

#[tokio::test]
async fn logs_are_in_cri_format_and_reopen_after_rotation() {
    let mut node = Node::start().await;
    let pod = node.run_pod("logs", A).await;
    node.create(&pod, "c", &[("EXAMPLE_LOG_LINES", "3")])
        .await
        .unwrap();
    node.start_container(&pod).await.unwrap();
    let path = std::path::PathBuf::from(
        node.container_status(&pod)
            .await
            .unwrap()
            .status
            .unwrap()
            .log_path,
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let all = records(&text);
    let stdout: Vec<&Record> = all.iter().filter(|r| r.stream == "stdout").collect();
    let got: Vec<(&str, &str)> = stdout
        .iter()
        .take(3)
        .map(|r| (r.tag.as_str(), r.message.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("F", "vimana-example log line 1 of 3"),
            ("F", "vimana-example log line 2 of 3"),
            ("F", "vimana-example log line 3 of 3"),
        ]
    );
    // 20,000 characters: one 16 KiB partial record, then the rest as full.
    assert_eq!(stdout[3].tag, "P");
    assert_eq!(stdout[3].message, "x".repeat(16384));
    assert_eq!(stdout[4].tag, "F");
    assert_eq!(stdout[4].message, "x".repeat(20000 - 16384));
    assert!(
        stdout[5]
            .message
            .starts_with("vimana-example listening on unix:/run/vimana/grpc.sock"),
        "{}",
        stdout[5].message
    );
    assert!(all.iter().any(|r| r.stream == "stderr"
        && r.tag == "F"
        && r.message == "vimana-example log line on stderr"));
    assert!(all
        .windows(2)
        .all(|w| w[0].timestamp <= w[1].timestamp || w[0].stream != w[1].stream));

    // The kubelet rotates: rename, then ReopenContainerLog.
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    node.runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: pod.clone(),
        })
        .await
        .unwrap();
    assert!(path.exists(), "a new log file was opened");
    node.stop_container(&pod, 10).await.unwrap();
    let after = records(&std::fs::read_to_string(&path).unwrap());
    assert!(
        after
            .iter()
            .any(|r| r.stream == "stderr" && r.message.contains("shutting down")),
        "output after the rotation goes to the new file"
    );
    let before = std::fs::read_to_string(&rotated).unwrap();
    assert!(!before.contains("shutting down"));

    // Reopening the log of a stopped container is an error, not a hang.
    let err = node
        .runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: pod.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn containers_get_their_own_namespaces_root_and_cgroup() {
    let mut node = Node::start().await;
    let pod = node.run_pod("iso", A).await;
    let sandbox = node.sandbox_config(&pod).await;
    let mut config = container_config("c", &[]);
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 256 << 20,
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        }),
        security_context: None,
    });
    node.runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        })
        .await
        .unwrap();
    node.start_container(&pod).await.unwrap();
    let pid = node.pid(&pod).await;

    for ns in ["pid", "mnt", "ipc", "uts", "net"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(ours, theirs, "{ns} namespace");
    }

    // PID 1 of its namespace, with the image as its root.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
    assert!(
        root.join("component").exists(),
        "the image's binary is at its root"
    );
    assert!(
        !root.join("etc/passwd").exists(),
        "nothing of the host's root filesystem"
    );
    assert!(root.join("run/vimana/grpc.sock").exists());

    // The cgroup limits from the CRI resources.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let group = format!(
        "/{}/{}",
        node.cgroup_parent,
        pod.rsplit('#').next().unwrap()
    );
    let memory_line = cgroups
        .lines()
        .find(|l| l.contains("memory") || l.starts_with("0::"))
        .unwrap();
    assert!(memory_line.ends_with(&group), "{cgroups}");
    if std::path::Path::new("/sys/fs/cgroup/memory").exists() {
        let limit = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory{group}/memory.limit_in_bytes"
        ))
        .unwrap();
        assert_eq!(limit.trim(), (256u64 << 20).to_string());
        let shares =
            std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{group}/cpu.shares")).unwrap();
        assert_eq!(shares.trim(), "512");
        let quota =
            std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{group}/cpu.cfs_quota_us")).unwrap();
        assert_eq!(quota.trim(), "50000");
    } else {
        let max = std::fs::read_to_string(format!("/sys/fs/cgroup{group}/memory.max")).unwrap();
        assert_eq!(max.trim(), (256u64 << 20).to_string());
    }

    // UpdateContainerResources applies at once.
    node.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: pod.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 128 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    if std::path::Path::new("/sys/fs/cgroup/memory").exists() {
        let limit = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory{group}/memory.limit_in_bytes"
        ))
        .unwrap();
        assert_eq!(limit.trim(), (128u64 << 20).to_string());
    }

    node.stop_container(&pod, 5).await.unwrap();
    assert!(
        !std::path::Path::new(&format!("/sys/fs/cgroup/memory{group}")).exists(),
        "the cgroup goes with the container"
    );
}

#[tokio::test]
async fn runtime_status_version_and_images() {
    let mut node = Node::start().await;
    let version = node
        .runtime
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.runtime_name, "vimanad");
    assert_eq!(version.runtime_api_version, "v1");
    let status = node
        .runtime
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let conditions = status.status.unwrap().conditions;
    for kind in ["RuntimeReady", "NetworkReady"] {
        assert!(
            conditions.iter().any(|c| c.r#type == kind && c.status),
            "{kind}"
        );
    }
    let config = node
        .runtime
        .runtime_config(cri::RuntimeConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        config.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );
    let err = node
        .runtime
        .exec_sync(cri::ExecSyncRequest::default())
        .await
        .unwrap_err();
    // ExecSync is served (tests/streaming.rs); an empty one names the field.
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("cmd"));

    let images = node
        .images
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].repo_tags, vec![IMAGE.to_owned()]);
    assert!(images[0].size > 0);
    let spec = |image: &str| {
        Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        })
    };
    let by_name = node
        .images
        .image_status(cri::ImageStatusRequest {
            image: spec(IMAGE),
            verbose: false,
        })
        .await
        .unwrap();
    let id = by_name.into_inner().image.unwrap().id;
    let by_id = node
        .images
        .image_status(cri::ImageStatusRequest {
            image: spec(&id),
            verbose: false,
        })
        .await
        .unwrap();
    assert_eq!(
        by_id.into_inner().image.unwrap().repo_tags,
        vec![IMAGE.to_owned()]
    );
    let missing = node
        .images
        .image_status(cri::ImageStatusRequest {
            image: spec("nope:1"),
            verbose: false,
        })
        .await
        .unwrap();
    assert!(missing.into_inner().image.is_none());
    let pulled = node
        .images
        .pull_image(cri::PullImageRequest {
            image: spec(IMAGE),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pulled.into_inner().image_ref, id);
    let err = node
        .images
        .pull_image(cri::PullImageRequest {
            image: spec("example.com/nope:1"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    // Not in the store, so it is asked of its registry: not found there,
    // or unreachable (no network).
    assert!(
        matches!(err.code(), tonic::Code::NotFound | tonic::Code::Unavailable),
        "{err:?}"
    );
    let fs = node
        .images
        .image_fs_info(cri::ImageFsInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);

    // An image in use cannot be removed; once unused it can, and removing
    // it again succeeds.
    let pod = node.running_pod("img", A).await;
    let err = node
        .images
        .remove_image(cri::RemoveImageRequest { image: spec(IMAGE) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    node.stop_container(&pod, 5).await.unwrap();
    node.remove_container(&pod).await.unwrap();
    node.images
        .remove_image(cri::RemoveImageRequest { image: spec(IMAGE) })
        .await
        .unwrap();
    node.images
        .remove_image(cri::RemoveImageRequest { image: spec(IMAGE) })
        .await
        .unwrap();
    let images = node
        .images
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.is_empty());
}
