//! Test harness: a real `vimanad serve` in a private root, driven over its
//! real CRI Unix socket, with the example component image imported.

#![allow(dead_code)]

pub mod kubelet;
pub mod matrix;
pub mod peers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub const IMAGE: &str = "example.com/vimana-example:1.0.0";
pub const SERVICE: &str = "vimana.example.v1.Echo";

/// The example component image built by scripts/build-example.sh.
pub fn example_image_tar() -> PathBuf {
    let path = std::env::var_os("VIMANA_EXAMPLE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/example/vimana-example.oci.tar")
        });
    assert!(
        path.exists(),
        "{} is missing: build it with scripts/build-example-image.sh \
         (scripts/test.sh and scripts/bench-*.sh do)",
        path.display()
    );
    path
}

/// The binary under test: `VIMANAD_BIN` if set (benchmarks compare builds
/// with it), else the one cargo built.
pub fn vimanad() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("VIMANAD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vimanad").to_owned())
    })
}

/// One running node runtime.
pub struct Node {
    pub root: tempfile::TempDir,
    /// The data plane's UDP address (HTTP/3).
    pub listen: std::net::SocketAddr,
    pub process: Child,
    pub cgroup_parent: String,
    /// `serve` arguments after the common ones (`--shards` first).
    extra: Vec<String>,
    /// vimanad's RUST_LOG.
    rust_log: String,
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Node {
    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.path().join("run")
    }
    pub fn socket(&self) -> PathBuf {
        self.root.path().join("cri.sock")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.root.path().join("logs")
    }

    /// The address of the operator's endpoint (`/metrics`, ...), from the
    /// log line `serving metrics` of the running process (after a restart
    /// the log also holds the previous process's line, whose port is
    /// gone: only lines after the last `configuration:` line count); waits
    /// for it up to 10 s.
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log =
                std::fs::read_to_string(self.root.path().join("vimanad.log")).unwrap_or_default();
            let current = log
                .rfind(" configuration: ")
                .map_or(log.as_str(), |at| &log[at..]);
            let found = current
                .lines()
                .filter(|l| l.contains("serving metrics"))
                .find_map(|l| l.split("address=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok());
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no `serving metrics` line in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts vimanad with the example image in its store.
    pub async fn start() -> Node {
        Self::start_with(&[]).await
    }

    /// Starts vimanad with more `serve` arguments.
    pub async fn start_with(extra: &[&str]) -> Node {
        Self::start_configured(2, "info", extra).await
    }

    /// `start_with` on `shards` data-plane shards, with vimanad's RUST_LOG
    /// set to `rust_log` (the tests run 2 shards at `info`).
    pub async fn start_configured(shards: usize, rust_log: &str, extra: &[&str]) -> Node {
        let root = tempfile::Builder::new()
            .prefix("vt")
            .tempdir_in("/tmp")
            .unwrap();
        let state = root.path().join("state");
        let import = Command::new(vimanad())
            .args(["image", "import"])
            .arg(example_image_tar())
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert!(
            import.status.success(),
            "image import: {}",
            String::from_utf8_lossy(&import.stderr)
        );
        let cgroup_parent = format!(
            "vimanad-test-{}",
            root.path().file_name().unwrap().to_string_lossy()
        );
        let listen = free_udp_port();
        let shards = shards.to_string();
        let extra: Vec<String> = ["--shards", &shards]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        let rust_log = rust_log.to_owned();
        let mut process = spawn_server(root.path(), listen, &cgroup_parent, &extra, &rust_log);
        let channel = connect_cri(root.path(), &mut process).await;
        Node {
            root,
            listen,
            process,
            cgroup_parent,
            extra,
            rust_log,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    /// `kill -9` the runtime (its containers keep running).
    pub fn kill9(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// SIGTERM, and wait for a graceful exit.
    pub fn stop_gracefully(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.process.id() as i32, libc::SIGTERM) };
        self.process.wait().unwrap()
    }

    /// Starts the runtime again on the same state, socket and port.
    pub async fn restart(&mut self) {
        self.process = spawn_server(
            self.root.path(),
            self.listen,
            &self.cgroup_parent,
            &self.extra,
            &self.rust_log,
        );
        let channel = connect_cri(self.root.path(), &mut self.process).await;
        self.runtime = RuntimeServiceClient::new(channel.clone());
        self.images = ImageServiceClient::new(channel);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("vimanad.log")).unwrap_or_default()
    }

    /// RunPodSandbox for a pod of `component` = (domain, service, version).
    pub async fn run_pod(&mut self, name: &str, component: (&str, &str, &str)) -> String {
        let mut req = run_pod_request(name, component);
        req.config = Some(self.pod_config(name, component));
        self.runtime
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id
    }

    pub async fn create(
        &mut self,
        pod_id: &str,
        name: &str,
        envs: &[(&str, &str)],
    ) -> Result<String, tonic::Status> {
        let sandbox = self.sandbox_config(pod_id).await;
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_owned(),
            config: Some(container_config(name, envs)),
            sandbox_config: Some(sandbox),
        };
        self.runtime
            .create_container(req)
            .await
            .map(|r| r.into_inner().container_id)
    }

    /// CreateContainer as the kubelet restarts one: `attempt` in the
    /// metadata and the log path (`component/ATTEMPT.log`).
    pub async fn create_attempt(
        &mut self,
        pod_id: &str,
        attempt: u32,
    ) -> Result<String, tonic::Status> {
        let sandbox = self.sandbox_config(pod_id).await;
        let mut config = container_config("component", &[]);
        config.metadata.as_mut().unwrap().attempt = attempt;
        config.log_path = format!("component/{attempt}.log");
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        };
        self.runtime
            .create_container(req)
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::StartContainerRequest {
            container_id: id.to_owned(),
        };
        self.runtime.start_container(req).await.map(|_| ())
    }

    pub async fn stop_container(&mut self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let req = cri::StopContainerRequest {
            container_id: id.to_owned(),
            timeout,
        };
        self.runtime.stop_container(req).await.map(|_| ())
    }

    pub async fn remove_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        self.runtime.remove_container(req).await.map(|_| ())
    }

    pub async fn stop_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.runtime.stop_pod_sandbox(req).await.map(|_| ())
    }

    pub async fn remove_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.runtime.remove_pod_sandbox(req).await.map(|_| ())
    }

    pub async fn pod_status(
        &mut self,
        id: &str,
    ) -> Result<cri::PodSandboxStatusResponse, tonic::Status> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: true,
        };
        self.runtime
            .pod_sandbox_status(req)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn container_status(
        &mut self,
        id: &str,
    ) -> Result<cri::ContainerStatusResponse, tonic::Status> {
        let req = cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        };
        self.runtime
            .container_status(req)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn state(&mut self, id: &str) -> cri::ContainerState {
        let status = self.container_status(id).await.unwrap().status.unwrap();
        cri::ContainerState::try_from(status.state).unwrap()
    }

    /// Waits until the container reaches `state`.
    pub async fn wait_state(
        &mut self,
        id: &str,
        state: cri::ContainerState,
    ) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.container_status(id).await.unwrap().status.unwrap();
            if status.state == state as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} never reached {state:?}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn sandbox_config(&mut self, pod_id: &str) -> cri::PodSandboxConfig {
        // The kubelet passes the config it ran the pod with; rebuild it from
        // the status the way a test client can.
        let status = self.pod_status(pod_id).await.unwrap().status.unwrap();
        let meta = status.metadata.unwrap();
        let component = (
            status.labels["vimana.host/domain"].as_str(),
            status.labels["vimana.host/service"].as_str(),
            status.labels["vimana.host/version"].as_str(),
        );
        self.pod_config(&meta.name, component)
    }

    /// The config `run_pod` runs a pod with (its logs under `log_dir()`).
    pub fn pod_config(&self, name: &str, component: (&str, &str, &str)) -> cri::PodSandboxConfig {
        let mut config = run_pod_request(name, component).config.unwrap();
        config.log_directory = self.log_dir().join(name).display().to_string();
        config
    }

    /// The host path of a pod's component socket.
    pub async fn component_socket(&mut self, pod_id: &str) -> PathBuf {
        PathBuf::from(&self.pod_status(pod_id).await.unwrap().info["socket"])
    }

    /// The host PID of a running container.
    pub async fn pid(&mut self, id: &str) -> i32 {
        self.container_status(id).await.unwrap().info["pid"]
            .parse()
            .unwrap()
    }

    /// A full pod, running: RunPodSandbox, CreateContainer, StartContainer.
    pub async fn running_pod(&mut self, name: &str, component: (&str, &str, &str)) -> String {
        let id = self.run_pod(name, component).await;
        self.create(&id, "component", &[]).await.unwrap();
        self.start_container(&id).await.unwrap();
        id
    }

    /// Undoes `running_pod`: StopContainer (10 s grace), StopPodSandbox,
    /// RemoveContainer, RemovePodSandbox (the container ID is the pod ID).
    pub async fn remove_running_pod(&mut self, id: &str) {
        self.stop_container(id, 10).await.expect("StopContainer");
        self.stop_pod(id).await.expect("StopPodSandbox");
        self.remove_container(id).await.expect("RemoveContainer");
        self.remove_pod(id).await.expect("RemovePodSandbox");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Shims outlive vimanad by design; a test's must not outlive it.
        let _ = self.process.kill();
        let _ = self.process.wait();
        kill_processes_mentioning(self.root.path());
        remove_cgroups(&self.cgroup_parent);
    }
}

fn spawn_server(
    root: &Path,
    listen: std::net::SocketAddr,
    cgroup_parent: &str,
    extra: &[String],
    rust_log: &str,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("vimanad.log"))
        .unwrap();
    Command::new(vimanad())
        .arg("serve")
        .arg("--state-dir")
        .arg(root.join("state"))
        .arg("--run-dir")
        .arg(root.join("run"))
        .arg("--cri-socket")
        .arg(root.join("cri.sock"))
        .args(["--pod-ip", "127.0.0.1", "--cgroup-parent", cgroup_parent])
        .args(["--listen", &listen.to_string()])
        // Tests run in parallel: each node's endpoint on a port of its own
        // (`Node::metrics_addr` reads it from the log).
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Waits for the CRI socket under `root` to accept and connects to it.
/// Should vimanad exit first, or not open it within 20 s: kills it and
/// fails with its log.
async fn connect_cri(root: &Path, process: &mut Child) -> Channel {
    let socket = root.join("cri.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if Instant::now() > deadline || process.try_wait().unwrap().is_some() {
            let _ = process.kill();
            let _ = process.wait();
            let log = std::fs::read_to_string(root.join("vimanad.log")).unwrap_or_default();
            panic!("vimanad did not open its CRI socket:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    uds_channel(socket).await
}

/// SIGKILLs every process whose command line mentions `path` (the shims of
/// one test node; their containers follow by parent-death signal).
pub fn kill_processes_mentioning(path: &Path) {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn remove_cgroups(parent: &str) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for controller in controllers.flatten() {
        let group = controller.path().join(parent);
        for _ in 0..100 {
            if let Ok(children) = std::fs::read_dir(&group) {
                for child in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            if std::fs::remove_dir(&group).is_ok() || !group.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn run_pod_request(
    name: &str,
    (domain, service, version): (&str, &str, &str),
) -> cri::RunPodSandboxRequest {
    let labels: HashMap<String, String> = [
        ("vimana.host/domain", domain),
        ("vimana.host/service", service),
        ("vimana.host/version", version),
        ("app", name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("uid-{name}"),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            log_directory: String::new(),
            labels,
            annotations: [("note".to_owned(), format!("pod {name}"))]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        runtime_handler: "vimana".to_owned(),
    }
}

pub fn container_config(name: &str, envs: &[(&str, &str)]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: IMAGE.to_owned(),
            ..Default::default()
        }),
        envs: envs
            .iter()
            .map(|(k, v)| cri::KeyValue {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        labels: [("container".to_owned(), name.to_owned())]
            .into_iter()
            .collect(),
        annotations: [("kind".to_owned(), "example".to_owned())]
            .into_iter()
            .collect(),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

/// A gRPC channel over a Unix socket.
pub async fn uds_channel(path: PathBuf) -> Channel {
    uds_connect(Endpoint::from_static("http://localhost"), path)
        .await
        .expect("connect over unix socket")
}

/// `endpoint` (with its timeouts) connected over the Unix socket `path`.
pub async fn uds_connect(
    endpoint: Endpoint,
    path: impl Into<PathBuf>,
) -> Result<Channel, tonic::transport::Error> {
    let path = path.into();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

pub fn is_alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// A port nobody uses now on UDP nor TCP (the node serves HTTP/3 and
/// HTTP/2 on the same port; SO_REUSEPORT would let two nodes share one).
pub fn free_udp_port() -> std::net::SocketAddr {
    loop {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// Runs the aioquic peer (tests/peers/aioquic_grpc.py): an HTTP/3 client
/// nobody here wrote. `calls` share one QUIC connection.
pub fn aioquic(
    node: &Node,
    authority: &str,
    calls: serde_json::Value,
    concurrent: bool,
) -> Vec<serde_json::Value> {
    let spec = serde_json::json!({
        "connect": node.listen.to_string(),
        "authority": authority,
        "calls": calls,
        "concurrent": concurrent,
        "timeout_s": 20,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/aioquic_grpc.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with aioquic (scripts/setup.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "aioquic peer failed");
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("aioquic peer prints JSON");
    result["calls"].as_array().unwrap().clone()
}

/// A protobuf message as the hex the peer takes.
pub fn hex_of(message: &impl prost::Message) -> String {
    hex::encode(message.encode_to_vec())
}

/// The reply messages of a peer call.
pub fn replies(call: &serde_json::Value) -> Vec<vimana_example::pb::EchoReply> {
    call["messages_hex"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|m| prost::Message::decode(&hex::decode(m.as_str().unwrap()).unwrap()[..]).unwrap())
        .collect()
}

/// A header or trailer of a peer call's response.
pub fn header<'a>(call: &'a serde_json::Value, section: &str, name: &str) -> Option<&'a str> {
    call[section]
        .as_array()?
        .iter()
        .find(|h| h[0].as_str() == Some(name))
        .and_then(|h| h[1].as_str())
}

/// Runs `vimanad call` against the node; returns (exit code, stdout, stderr).
pub fn vimanad_call(
    node: &Node,
    authority: &str,
    path: &str,
    args: &[&str],
) -> (i32, String, String) {
    let out = Command::new(vimanad())
        .arg("call")
        .arg("--connect")
        .arg(node.listen.to_string())
        .arg(format!("https://{authority}{path}"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---- Registries (tests/registry.rs) ----

/// A TCP port nobody listens on now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's `docker-registry` (the CNCF distribution registry) on loopback,
/// plain HTTP, with its own storage; optionally behind htpasswd basic auth.
/// Killed when dropped.
pub struct Registry {
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`, as written in image names.
    pub host: String,
    process: Child,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_inner(None)
    }

    /// With htpasswd auth: `user` / `password` (bcrypt, made by `htpasswd`).
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Self::start_inner(Some((user, password)))
    }

    fn start_inner(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("vreg")
            .tempdir_in("/tmp")
            .unwrap();
        let port = free_tcp_port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils; scripts/setup.sh installs it)");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: vimana-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let process = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (scripts/setup.sh installs it)");
        let registry = Registry { dir, host, process };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {}: {}",
                registry.host,
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many times the registry served `GET` of this blob.
    pub fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest} HTTP");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// `skopeo copy` of an OCI archive to `docker://DEST` over plain HTTP.
pub fn skopeo_copy(archive: &Path, dest: &str, creds: Option<&str>) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--dest-tls-verify=false"]);
    if let Some(creds) = creds {
        cmd.args(["--dest-creds", creds]);
    }
    let out = cmd
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo copy to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The manifest digest a registry serves for `reference`, by `skopeo inspect`.
pub fn skopeo_digest(reference: &str, creds: Option<&str>) -> String {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if let Some(creds) = creds {
        cmd.args(["--creds", creds]);
    }
    let out = cmd.arg(format!("docker://{reference}")).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Digest"].as_str().unwrap().to_owned()
}

impl Node {
    /// Starts vimanad with an empty image store.
    pub async fn start_empty(extra: &[&str]) -> Node {
        let mut node = Self::start_with(extra).await;
        node.images
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: IMAGE.to_owned(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        assert!(node.list_images().await.is_empty());
        node
    }

    pub async fn pull(
        &mut self,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String, tonic::Status> {
        self.images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.to_owned(),
                    ..Default::default()
                }),
                auth,
                sandbox_config: None,
            })
            .await
            .map(|r| r.into_inner().image_ref)
    }

    pub async fn list_images(&mut self) -> Vec<cri::Image> {
        self.images
            .list_images(cri::ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images
    }

    pub async fn image_status(&mut self, image: &str) -> Option<cri::Image> {
        self.images
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.to_owned(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image
    }

    pub async fn image_fs_used(&mut self) -> u64 {
        self.images
            .image_fs_info(cri::ImageFsInfoRequest::default())
            .await
            .unwrap()
            .into_inner()
            .image_filesystems[0]
            .used_bytes
            .as_ref()
            .unwrap()
            .value
    }

    /// Everything under the image store but its lock file: blobs, index,
    /// root filesystems, work dirs.
    pub fn store_files(&self) -> Vec<String> {
        let root = self.state_dir().join("images");
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let rel = path.strip_prefix(&root).unwrap().display().to_string();
                if rel == "lock" {
                    continue;
                }
                // A root filesystem counts, not its contents.
                if entry.file_type().unwrap().is_dir() && !rel.starts_with("rootfs/") {
                    stack.push(path);
                }
                out.push(rel);
            }
        }
        out.sort();
        out
    }

    /// CreateContainer with `image` instead of the example image's name.
    pub async fn create_with_image(
        &mut self,
        pod_id: &str,
        image: &str,
    ) -> Result<String, tonic::Status> {
        let sandbox = self.sandbox_config(pod_id).await;
        let mut config = container_config("component", &[]);
        config.image = Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        });
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        };
        self.runtime
            .create_container(req)
            .await
            .map(|r| r.into_inner().container_id)
    }
}

/// vimanad's (or any process's) resident set, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The sum of the node's samples of `series` (`name`, or `name{label` to
/// keep the samples whose labels include `label`), scraped from /metrics.
pub fn metric(node: &Node, series: &str) -> f64 {
    use std::io::{Read, Write};
    let (name, label) = series.split_once('{').unwrap_or((series, ""));
    let mut s = std::net::TcpStream::connect(node.metrics_addr()).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
