//! CRI mounts from the attacker's side: host paths bound read-only stay
//! read-only, a hostile image's symlinks do not lead a mount out of the
//! container root, and what cannot be honoured (missing host paths, /proc,
//! devices, sysctls, Bidirectional) is refused with INVALID_ARGUMENT naming
//! it. The container's view is read through /proc/PID/root, which the
//! kernel resolves in the container's mount namespace.

mod common;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Node;
use k8s_cri::v1 as cri;
use tonic::Code;

const COMPONENT: (&str, &str, &str) = ("example.com", common::SERVICE, "1.0.0");
const HOSTILE: &str = "example.com/hostile-mounts:1.0.0";

fn bind(host: &Path, container: &str, readonly: bool) -> cri::Mount {
    cri::Mount {
        host_path: host.display().to_string(),
        container_path: container.to_owned(),
        readonly,
        ..Default::default()
    }
}

async fn create_with(
    node: &mut Node,
    pod: &str,
    image: &str,
    mounts: Vec<cri::Mount>,
) -> Result<String, tonic::Status> {
    let sandbox = node.sandbox_config(pod).await;
    let mut config = common::container_config("component", &[]);
    config.image.as_mut().unwrap().image = image.to_owned();
    config.mounts = mounts;
    node.runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

fn in_container(pid: i32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root")).join(path.trim_start_matches('/'))
}

/// The container's mountinfo line for `mount_point`.
fn mountinfo(pid: i32, mount_point: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mount_point))
        .map(str::to_owned)
}

fn example_binary() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-gnu/release/vimana-example");
    assert!(
        bin.exists(),
        "{} is missing: scripts/build-example-image.sh builds it",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_writable_binds_reach_the_container_and_are_reported() {
    let mut node = Node::start().await;
    let host = tempfile::tempdir().unwrap();
    let config_dir = host.path().join("configmap");
    std::fs::create_dir(&config_dir).unwrap();
    std::fs::write(config_dir.join("app.yaml"), "greeting: hello\n").unwrap();
    let data_dir = host.path().join("emptydir");
    std::fs::create_dir(&data_dir).unwrap();
    let token = host.path().join("token");
    std::fs::write(&token, "secret-token").unwrap();

    let pod = node.run_pod("mounts", COMPONENT).await;
    let id = create_with(
        &mut node,
        &pod,
        common::IMAGE,
        vec![
            bind(&config_dir, "/etc/config", true),
            bind(&data_dir, "/var/data", false),
            bind(&token, "/var/run/secrets/token", true),
        ],
    )
    .await
    .unwrap();
    node.start_container(&id).await.unwrap();
    let pid = node.pid(&id).await;

    // Visible inside, at the asked paths (created in the image as needed).
    assert_eq!(
        std::fs::read_to_string(in_container(pid, "/etc/config/app.yaml")).unwrap(),
        "greeting: hello\n"
    );
    assert_eq!(
        std::fs::read_to_string(in_container(pid, "/var/run/secrets/token")).unwrap(),
        "secret-token"
    );
    // Read-only: the kernel refuses writes through the container's view.
    for path in ["/etc/config/new", "/etc/config/app.yaml"] {
        let err = std::fs::write(in_container(pid, path), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{path}: {err}");
    }
    let err = std::fs::write(in_container(pid, "/var/run/secrets/token"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let line = mountinfo(pid, "/etc/config").expect("a mount at /etc/config");
    assert!(
        line.split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{line}"
    );
    // Writable: what the container writes is on the host.
    std::fs::write(in_container(pid, "/var/data/out"), "written inside").unwrap();
    assert_eq!(
        std::fs::read_to_string(data_dir.join("out")).unwrap(),
        "written inside"
    );
    // Private propagation: a mount made on the host under a bound
    // directory after start does not appear inside.
    let sub = data_dir.join("later");
    std::fs::create_dir(&sub).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&sub)
        .status()
        .unwrap()
        .success());
    std::fs::write(sub.join("on-tmpfs"), "x").unwrap();
    let seen = in_container(pid, "/var/data/later/on-tmpfs").exists();
    let _ = Command::new("umount").arg(&sub).status();
    assert!(!seen, "a private bind received a host mount");

    // Reported back in ContainerStatus.mounts, and through crictl inspect.
    let status = node.container_status(&id).await.unwrap().status.unwrap();
    let reported: Vec<(&str, bool)> = status
        .mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m.readonly))
        .collect();
    assert_eq!(
        reported,
        [
            ("/etc/config", true),
            ("/var/data", false),
            ("/var/run/secrets/token", true)
        ]
    );
    if let Some(crictl) = tools::tool("crictl") {
        let inspect = tools::crictl_json(&crictl, &node.socket(), &["inspect", &id]);
        let mounts = inspect["status"]["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 3, "{inspect}");
        assert_eq!(mounts[0]["containerPath"], "/etc/config");
        assert_eq!(mounts[0]["hostPath"], config_dir.display().to_string());
        assert_eq!(mounts[0]["readonly"], true);
        assert_eq!(mounts[0]["propagation"], "PROPAGATION_PRIVATE");
        assert_eq!(inspect["status"]["state"], "CONTAINER_RUNNING");
    }
    node.remove_running_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_image_symlinks_do_not_lead_mounts_out_of_the_root() {
    let mut node = Node::start().await;
    // Host directories the image's symlinks aim at: nothing may be created
    // or mounted there.
    let victim = tempfile::tempdir().unwrap();
    let victim_abs = victim.path().display().to_string();
    let victim_rel = format!("../../../../../../../..{victim_abs}");
    let layout = tempfile::tempdir().unwrap();
    tools::image::pack(
        common::vimanad(),
        &example_binary(),
        HOSTILE,
        "/component",
        &[
            tools::image::Entry::Symlink("abs", &victim_abs),
            tools::image::Entry::Symlink("rel", &victim_rel),
            tools::image::Entry::Symlink("proc-link", "/proc"),
            tools::image::Entry::Symlink("sock-link", "../run/vimana"),
            tools::image::Entry::Dir("etc"),
            tools::image::Entry::File("etc/passwd", b"root:x:0:0::/:/component\n"),
            tools::image::Entry::Symlink("etc/passwd-dir", "/etc/passwd"),
        ],
        None,
        layout.path(),
    );
    tools::image::import(common::vimanad(), layout.path(), &node.state_dir());
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("payload"), "from the host").unwrap();

    let pod = node.run_pod("hostile", COMPONENT).await;
    let id = create_with(
        &mut node,
        &pod,
        HOSTILE,
        vec![
            bind(source.path(), "/abs/sub", true),
            bind(source.path(), "/rel/sub", true),
        ],
    )
    .await
    .unwrap();
    node.start_container(&id).await.unwrap();
    let pid = node.pid(&id).await;
    // The binds landed inside the root, where the symlinks point when the
    // root is `/`...
    let inside = format!("{victim_abs}/sub/payload");
    assert_eq!(
        std::fs::read_to_string(in_container(pid, &inside)).unwrap(),
        "from the host"
    );
    // ...and nothing was created or mounted on the host.
    assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 0);
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains(&victim_abs), "{host_mounts}");
    node.remove_running_pod(&pod).await;

    // A symlink to /proc, to the socket directory, or a file where a
    // directory is needed: the start fails naming it, the host is intact.
    for (dest, wanted) in [
        ("/proc-link/sys", "/proc"),
        ("/sock-link", "/run/vimana"),
        ("/etc/passwd-dir/x", "not a directory"),
    ] {
        let pod = node
            .run_pod(&format!("hostile-{}", dest.len()), COMPONENT)
            .await;
        let id = create_with(
            &mut node,
            &pod,
            HOSTILE,
            vec![bind(source.path(), dest, true)],
        )
        .await
        .unwrap();
        let err = node
            .start_container(&id)
            .await
            .expect_err(&format!("a bind at {dest} started"));
        assert!(err.message().contains(wanted), "{dest}: {err:?}");
        node.remove_container(&id).await.unwrap();
        node.stop_pod(&pod).await.unwrap();
        node.remove_pod(&pod).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_mounts_devices_and_sysctls_are_refused_by_name() {
    let mut node = Node::start().await;
    let host = tempfile::tempdir().unwrap();
    let pod = node.run_pod("refused", COMPONENT).await;
    let missing = host.path().join("missing");
    let mut bidirectional = bind(host.path(), "/shared", false);
    bidirectional.propagation = cri::MountPropagation::PropagationBidirectional as i32;
    let mut to_host = bind(host.path(), "/slave", false);
    to_host.propagation = cri::MountPropagation::PropagationHostToContainer as i32;
    let cases = [
        (bind(&missing, "/data", true), "does not exist"),
        (bind(host.path(), "/proc/sys", true), "/proc"),
        (bind(host.path(), "/sys", true), "/sys"),
        (bind(host.path(), "/x/../../proc", true), "/proc"),
        (bind(host.path(), "/run/vimana/x", true), "/run/vimana"),
        (bind(host.path(), "relative", true), "absolute"),
        (bidirectional, "Bidirectional"),
        (to_host, "private"),
    ];
    for (mount, wanted) in cases {
        let what = format!("{mount:?}");
        let err = create_with(&mut node, &pod, common::IMAGE, vec![mount])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(wanted), "{what}: {err:?}");
    }
    // Devices.
    let sandbox = node.sandbox_config(&pod).await;
    let mut config = common::container_config("component", &[]);
    config.devices.push(cri::Device {
        container_path: "/dev/kmsg".into(),
        host_path: "/dev/kmsg".into(),
        permissions: "r".into(),
    });
    let err = node
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("/dev/kmsg"), "{err:?}");
    // Nothing was created by the refused calls.
    let listed = node
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");

    // Sysctls, at RunPodSandbox.
    let mut req = common::run_pod_request("sysctl", COMPONENT);
    req.config.as_mut().unwrap().linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: [("net.ipv4.ip_forward".to_owned(), "1".to_owned())]
            .into_iter()
            .collect(),
        ..Default::default()
    });
    let err = node.runtime.run_pod_sandbox(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("net.ipv4.ip_forward"), "{err:?}");
}

/// Unmounts a test's shared mount even when the test fails.
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-R").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_to_container_propagation_shows_later_host_mounts() {
    let mut node = Node::start().await;
    let host = tempfile::tempdir().unwrap();
    let shared = host.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let sh = |args: &[&str]| assert!(Command::new("mount").args(args).status().unwrap().success());
    let s = shared.to_str().unwrap();
    sh(&["--bind", s, s]);
    let _cleanup = Unmount(shared.clone());
    sh(&["--make-shared", s]);

    let pod = node.run_pod("propagation", COMPONENT).await;
    let mut m = bind(&shared, "/mnt/host", true);
    m.propagation = cri::MountPropagation::PropagationHostToContainer as i32;
    let id = create_with(&mut node, &pod, common::IMAGE, vec![m])
        .await
        .unwrap();
    node.start_container(&id).await.unwrap();
    let pid = node.pid(&id).await;
    let line = mountinfo(pid, "/mnt/host").expect("a mount at /mnt/host");
    assert!(line.contains("master:"), "not a slave: {line}");

    let later = shared.join("later");
    std::fs::create_dir(&later).unwrap();
    sh(&["-t", "tmpfs", "tmpfs", later.to_str().unwrap()]);
    std::fs::write(later.join("file"), "mounted after start").unwrap();
    let seen = std::fs::read_to_string(in_container(pid, "/mnt/host/later/file"));
    let _ = Command::new("umount").arg(&later).status();
    assert_eq!(seen.unwrap(), "mounted after start");
    node.remove_running_pod(&pod).await;
}
