//! The stock kubelet (../shared/tools/kubelet, v1.28) run standalone
//! against a test node: static pod manifests, no API server, its read-only
//! HTTP port for what it sees. Everything it makes is private to the test
//! (root dir, cgroup root, ports, node name) or removed when it stops
//! (/var/log/pods and /var/log/containers entries of its pods, mounts).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory of the prebuilt test tools: `$VIMANA_TOOLS`, else
/// `<repo>/../shared/tools`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("VIMANA_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools"))
}

/// A tool from the tools directory. Missing: `None` with a message (the
/// test skips), or a panic under CI (`CI=true`), where it must be there.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = tools_dir().join(name);
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "{} not found (set VIMANA_TOOLS to the directory of the test tools)",
        path.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// The v1 cgroup hierarchies (controller directories) of this machine.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists() && !p.is_symlink())
        .collect();
    dirs.sort();
    dirs
}

/// Removes a cgroup tree, deepest first (a cgroup with processes stays).
fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

pub struct Kubelet {
    pub dir: tempfile::TempDir,
    pub process: Child,
    /// Its node name: static pods are named `<manifest name>-<node name>`.
    pub node_name: String,
    /// The read-only HTTP port (`/pods`, `/healthz`, `/stats/summary`).
    pub read_only_port: u16,
    /// The authenticated HTTPS port (anonymous, AlwaysAllow here).
    pub port: u16,
    /// The cgroup root of its pods, in every hierarchy.
    cgroup_root: String,
}

impl Kubelet {
    /// Starts the stock kubelet on `cri_socket`, or `None` when it is not
    /// available (see [`tool`]).
    pub fn start(cri_socket: &Path) -> Option<Kubelet> {
        let binary = tool("kubelet")?;
        let dir = tempfile::Builder::new()
            .prefix("vk")
            .tempdir_in("/tmp")
            .unwrap();
        let tag = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_lowercase();
        let node_name = format!(
            "node-{}",
            tag.replace(|c: char| !c.is_ascii_alphanumeric(), "")
        );
        let cgroup_root = format!("vimanad-kubelet-{node_name}");
        for hierarchy in cgroup_hierarchies() {
            let root = hierarchy.join(&cgroup_root);
            let _ = std::fs::create_dir_all(&root);
            // A new v1 cpuset starts empty: give it the machine's.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                    let _ = std::fs::write(root.join(file), value.trim());
                }
            }
        }
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        let (port, read_only_port, healthz) = (
            super::free_tcp_port(),
            super::free_tcp_port(),
            super::free_tcp_port(),
        );
        let config = format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {manifests}
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
failSwapOn: false
address: 127.0.0.1
port: {port}
readOnlyPort: {read_only_port}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
fileCheckFrequency: 1s
syncFrequency: 2s
resolvConf: \"\"
# The test machine's shared disk may sit below the default thresholds
# (imagefs.available 15%): the kubelet, which now sees the image filesystem
# through vimanad's ImageFsInfo, would then evict and garbage-collect the
# test's images. Only a nearly full disk counts here.
evictionHard:
  imagefs.available: \"1%\"
  nodefs.available: \"1%\"
  nodefs.inodesFree: \"1%\"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
",
            manifests = manifests.display(),
            socket = cri_socket.display(),
        );
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("kubelet.log")).unwrap();
        let process = Command::new(binary)
            .arg("--config")
            .arg(dir.path().join("config.yaml"))
            .arg("--root-dir")
            .arg(dir.path().join("root"))
            .arg("--hostname-override")
            .arg(&node_name)
            .arg("--v=2")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the kubelet");
        let kubelet = Kubelet {
            dir,
            process,
            node_name,
            read_only_port,
            port,
            cgroup_root,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while kubelet
            .get("/healthz")
            .is_none_or(|(status, _)| status != 200)
        {
            assert!(
                Instant::now() < deadline,
                "the kubelet did not become healthy:\n{}",
                kubelet.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(kubelet)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kubelet.log")).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Writes a static pod manifest (`name.yaml`).
    pub fn add_manifest(&self, name: &str, yaml: &str) {
        let path = self
            .dir
            .path()
            .join("manifests")
            .join(format!("{name}.yaml"));
        std::fs::write(path, yaml).unwrap();
    }

    pub fn remove_manifest(&self, name: &str) {
        let path = self
            .dir
            .path()
            .join("manifests")
            .join(format!("{name}.yaml"));
        std::fs::remove_file(path).unwrap();
    }

    /// `GET path` on the read-only port: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.read_only_port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    }

    /// The kubelet's view of the static pod made from manifest `name`.
    pub fn pod(&self, name: &str) -> Option<serde_json::Value> {
        let (status, body) = self.get("/pods")?;
        if status != 200 {
            return None;
        }
        let pods: serde_json::Value = serde_json::from_str(&body).ok()?;
        let full = format!("{name}-{}", self.node_name);
        pods["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["name"] == full.as_str())
            .cloned()
    }

    /// Waits until the kubelet's view of pod `name` satisfies `ready` (it
    /// gets `None` while the kubelet does not list the pod).
    pub async fn wait_pod(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        ready: impl Fn(Option<&serde_json::Value>) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let pod = self.pod(name);
            if ready(pod.as_ref()) {
                return pod;
            }
            assert!(
                Instant::now() < deadline,
                "pod {name}: never {what}; the kubelet sees {}\n{}",
                pod.map(|p| p["status"].to_string()).unwrap_or_default(),
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the kubelet and removes what it made (idempotent; also on
    /// drop).
    pub fn stop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        // It bind-mounts its root dir onto itself (and may mount below).
        let root = self.dir.path().join("root");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(&root))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in under {
            let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
        }
        for hierarchy in cgroup_hierarchies() {
            remove_cgroup_tree(&hierarchy.join(&self.cgroup_root));
        }
        // Its pods' logs: /var/log/pods/<ns>_<pod>_<uid>, and the symlinks
        // /var/log/containers/<pod>_<ns>_<container>-<id>.log.
        let suffix = format!("-{}_", self.node_name);
        for dir in ["/var/log/pods", "/var/log/containers"] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().contains(&suffix) {
                    let path = entry.path();
                    if path.is_symlink() || path.is_file() {
                        let _ = std::fs::remove_file(&path);
                    } else {
                        let _ = std::fs::remove_dir_all(&path);
                    }
                }
            }
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
    }
}
