//! Test harness: Debian's containerd + runc on private paths, as vimanad's
//! downstream CRI runtime.
//!
//! Its own root, state, socket, runc root and config (with
//! `restrict_oom_score_adj = true`: root here lacks CAP_SYS_RESOURCE), a
//! `sandbox_image` that is a static pause program the harness compiles,
//! packed with `vimanad image pack`, and a busybox image built from
//! Debian's `busybox-static` (its applets linked in /bin); both imported
//! with `ctr -n k8s.io images import` (no internet here). A loopback-only
//! CNI (a script) gives pods with their own network namespace only `lo`
//! (their reported IP is 127.0.0.1); the tests' own pods use the node's.
//! Dropping it removes every pod, kills containerd and its shims, unmounts
//! what it mounted and removes its cgroups.
//!
//! Included with `#[path]` beside `mod common;`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub const PAUSE: &str = "localhost/vimana-test/pause:1";
pub const BUSYBOX: &str = "localhost/vimana-test/busybox:1";

const PAUSE_C: &str = r#"
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
static void stop(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"#;

/// The shared tools: `$VIMANA_TOOLS`, else `<repo>/../shared/tools`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("VIMANA_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools"))
}

/// True when every program these tests need is here; else says what is
/// missing and returns false (the test skips), or panics under CI=true.
pub fn prerequisites(tools: &[&str]) -> bool {
    let mut missing: Vec<String> = [
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "gcc",
    ]
    .iter()
    .filter(|p| !on_path(p))
    .map(|p| p.to_string())
    .collect();
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (busybox-static)".into());
    }
    for tool in tools {
        if !tools_dir().join(tool).exists() {
            missing.push(tools_dir().join(tool).display().to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "missing {} (scripts/setup.sh installs the packages; VIMANA_TOOLS names the tools)",
        missing.join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    false
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(program).is_file()
}

pub struct Containerd {
    pub root: tempfile::TempDir,
    process: Option<Child>,
    /// Every pod's cgroup parent (removed on drop).
    pub cgroup_parent: String,
}

impl Containerd {
    pub fn socket(&self) -> PathBuf {
        self.root.path().join("containerd.sock")
    }
    pub fn uri(&self) -> String {
        format!("unix://{}", self.socket().display())
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("containerd.log")).unwrap_or_default()
    }
    pub fn log_dir(&self) -> PathBuf {
        self.root.path().join("logs")
    }

    /// Starts containerd with the pause and busybox images imported.
    pub fn start() -> Containerd {
        Self::start_with_registry(None)
    }

    /// `start`, pulling from the plain-HTTP registry `host` (`127.0.0.1:PORT`).
    pub fn start_with_registry(registry: Option<&str>) -> Containerd {
        let root = tempfile::Builder::new()
            .prefix("ctrd")
            .tempdir_in("/tmp")
            .unwrap();
        let cgroup_parent = format!(
            "/vimanad-ctrd-{}",
            root.path().file_name().unwrap().to_string_lossy()
        );
        let mut c = Containerd {
            root,
            process: None,
            cgroup_parent,
        };
        c.write_config(registry);
        c.write_cni();
        c.spawn();
        for (tar, _) in c.build_images() {
            c.ctr(&["images", "import", &tar.display().to_string()]);
        }
        c
    }

    fn write_config(&self, registry: Option<&str>) {
        let r = self.root.path().display().to_string();
        let mut config = format!(
            r#"version = 2
root = "{r}/root"
state = "{r}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{r}/containerd.sock"
[ttrpc]
  address = "{r}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{r}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{r}/cni/bin"
    conf_dir = "{r}/cni/conf"
"#
        );
        if let Some(host) = registry {
            config.push_str(&format!(
                "  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{host}\"]\n    endpoint = [\"http://{host}\"]\n"
            ));
        }
        std::fs::write(self.root.path().join("config.toml"), config).unwrap();
    }

    /// A loopback-only CNI: one script, installed as `loopback` (the
    /// network containerd always adds) and as `vimana-lo` (the pod
    /// network). It brings the pod's `lo` up and reports `127.0.0.1` as the
    /// pod's IP on `eth0`, creating no interface: nothing leaves the pod.
    fn write_cni(&self) {
        let bin = self.root.path().join("cni/bin");
        let conf = self.root.path().join("cni/conf");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        let script = r#"#!/bin/sh
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}' ;;
ADD)
    cat >/dev/null
    nsenter --net="$CNI_NETNS" ip link set lo up || exit 1
    printf '{"cniVersion":"0.4.0","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"version":"4","address":"127.0.0.1/8","interface":0}]}' "$CNI_IFNAME" "$CNI_NETNS" ;;
*) cat >/dev/null ;;
esac
"#;
        use std::os::unix::fs::PermissionsExt;
        for name in ["loopback", "vimana-lo"] {
            let path = bin.join(name);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(
            conf.join("10-vimana-lo.conflist"),
            r#"{"cniVersion":"0.4.0","name":"vimana-lo","plugins":[{"type":"vimana-lo"}]}"#,
        )
        .unwrap();
    }

    /// The pause and busybox OCI archives (built in this root).
    fn build_images(&self) -> Vec<(PathBuf, &'static str)> {
        let dir = self.root.path().join("images");
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("pause.c");
        std::fs::write(&source, PAUSE_C).unwrap();
        let pause = dir.join("pause");
        run(Command::new("gcc")
            .args(["-static", "-Os", "-o"])
            .arg(&pause)
            .arg(&source));
        let pack = |binary: &Path, name: &str, inside: &str, tar: &str| {
            let out = dir.join(tar);
            run(Command::new(super::common::vimanad())
                .args(["image", "pack", "--binary"])
                .arg(binary)
                .args(["--name", name, "--entrypoint-path", inside, "--output"])
                .arg(&out));
            out
        };
        let busybox = dir.join("busybox.tar");
        busybox_image(&busybox);
        vec![
            (pack(&pause, PAUSE, "/pause", "pause.tar"), PAUSE),
            (busybox, BUSYBOX),
        ]
    }

    /// `ctr -n k8s.io ARGS` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts containerd on this root and waits until its CRI answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("containerd.log"))
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.root.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (scripts/setup.sh installs it)");
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = Command::new("ctr")
                .arg("--address")
                .arg(self.socket())
                .arg("version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if up {
                return;
            }
            let exited = self.process.as_mut().unwrap().try_wait().unwrap().is_some();
            assert!(
                !exited && Instant::now() < deadline,
                "containerd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// containerd's PID.
    pub fn pid(&self) -> i32 {
        self.process.as_ref().expect("containerd running").id() as i32
    }

    /// `kill -9` containerd (its shims and containers keep running).
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// containerd's own CRI client.
    pub async fn client(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(super::common::uds_channel(self.socket()).await)
    }

    /// An ordinary pod: the node's network, logs under `log_dir()`, cgroups
    /// under `cgroup_parent`.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("uid-{name}"),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            log_directory: self.log_dir().join(name).display().to_string(),
            labels: [("app".to_owned(), name.to_owned())].into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A busybox container running `sh -c SCRIPT` (exits on SIGTERM).
    pub fn busybox(name: &str, script: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: BUSYBOX.to_owned(),
                ..Default::default()
            }),
            args: vec![
                "sh".into(),
                "-c".into(),
                format!("trap 'exit 0' TERM; {script}; while true; do sleep 1; done"),
            ],
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }

    /// Removes every pod through containerd's CRI (it unmounts and deletes
    /// what it made).
    fn remove_all_pods(&self) {
        let socket = self.socket();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(channel) = super::common::uds_connect(
                    tonic::transport::Endpoint::from_static("http://localhost")
                        .timeout(Duration::from_secs(20)),
                    socket,
                )
                .await
                else {
                    return;
                };
                let mut c = RuntimeServiceClient::new(channel);
                let Ok(pods) = c
                    .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                    .await
                else {
                    return;
                };
                for pod in pods.into_inner().items {
                    let id = pod.id;
                    let _ = c
                        .stop_pod_sandbox(cri::StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await;
                    let _ = c
                        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                        .await;
                }
            });
        })
        .join();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.process.is_some() {
            self.remove_all_pods();
        }
        self.kill9();
        // Shims (their command lines name this root's socket) and the
        // containers they still hold.
        super::common::kill_processes_mentioning(self.root.path());
        std::thread::sleep(Duration::from_millis(200));
        let root = self.root.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.reverse();
        for m in ours {
            let c = std::ffi::CString::new(m).unwrap();
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        remove_cgroup_tree(self.cgroup_parent.trim_start_matches('/'));
        // The shims' socket directory (fixed in containerd 1.6), if no
        // other containerd uses it: remove_dir only removes it empty.
        let _ = std::fs::remove_dir("/run/containerd/s");
        let _ = std::fs::remove_dir("/run/containerd");
    }
}

/// Removes `parent` and everything below it in every cgroup hierarchy.
fn remove_cgroup_tree(parent: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    fn remove(dir: &Path) {
        if let Ok(children) = std::fs::read_dir(dir) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                remove(&child.path());
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for h in hierarchies.flatten() {
        let group = h.path().join(parent);
        if group.exists() {
            remove(&group);
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the stock crictl against `socket`; returns (success, stdout,
/// stderr).
pub fn crictl(socket: &Path, args: &[&str]) -> (bool, String, String) {
    let endpoint = format!("unix://{}", socket.display());
    let out = Command::new(tools_dir().join("crictl"))
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--timeout", "10s"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An OCI archive of Debian's static busybox with its applets linked into
/// /bin (`sh`, `sleep`, `top`, ... resolve through PATH), tagged `BUSYBOX`.
pub fn busybox_image(out: &Path) {
    use sha2::{Digest, Sha256};
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    let applets = String::from_utf8(list.stdout).unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    let dir = |layer: &mut tar::Builder<Vec<u8>>, path: &str| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        layer.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    for d in ["bin/", "tmp/", "etc/", "root/"] {
        dir(&mut layer, d);
    }
    let binary = std::fs::read("/bin/busybox").unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(binary.len() as u64);
    layer
        .append_data(&mut h, "bin/busybox", &binary[..])
        .unwrap();
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        layer
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    layer
        .append_data(&mut h, "etc/passwd", &passwd[..])
        .unwrap();
    let group = b"root:x:0:\nnogroup:x:65534:\n";
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(group.len() as u64);
    layer.append_data(&mut h, "etc/group", &group[..]).unwrap();
    let raw = layer.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let gz = gz.finish().unwrap();
    let sha = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"]
        },
        "rootfs": { "type": "layers", "diff_ids": [sha(&raw)] }
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                     "digest": sha(&gz), "size": gz.len() }]
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": sha(&manifest), "size": manifest.len(),
                        "annotations": { "org.opencontainers.image.ref.name": BUSYBOX } }]
    })
    .to_string()
    .into_bytes();
    let mut archive = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut put = |path: String, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        archive.append_data(&mut h, path, data).unwrap();
    };
    put("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    put("index.json".into(), &index);
    for blob in [&config, &manifest, &gz] {
        put(format!("blobs/sha256/{}", &sha(blob)[7..]), blob);
    }
    archive.finish().unwrap();
}
