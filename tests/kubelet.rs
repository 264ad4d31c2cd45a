//! The stock kubelet (v1.28.4, ../shared/tools/kubelet) runs a component as
//! a static pod on vimanad: it gets past Version and Status although it
//! sends its socket path as `:authority`, the pod serves HTTP/3, a killed
//! component is restarted the kubelet's way (a new container, the previous
//! one listable with its log, restartCount 1), `kill -9` of vimanad changes
//! nothing for the pod, and deleting the manifest stops and removes it.
//! A second pod carries a hostPath and an emptyDir volume and exec probes:
//! it becomes Ready only through its readiness probe, a failing liveness
//! probe makes the kubelet restart it, `/stats/summary` reports its CPU and
//! memory from vimanad's CRI stats, `kubectl logs --previous` (the kubelet's
//! `/containerLogs?previous=true`) reads the exited attempt, and a WebSocket
//! client runs a command in it through the kubelet's own `/exec` handler.

mod common;
mod tools;

use std::time::Duration;

use common::kubelet::Kubelet;
use common::*;
use k8s_cri::v1 as cri;
use serde_json::{json, Value};

const UNARY: &str = "/vimana.example.v1.Echo/Unary";

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels:
    vimana.host/domain: example.com
    vimana.host/service: {SERVICE}
    vimana.host/version: 1.0.0
spec:
  restartPolicy: Always
  containers:
  - name: echo
    image: {IMAGE}
    imagePullPolicy: Never
"
    )
}

/// The kubelet's container status of the pod's one container.
fn container(pod: Option<&Value>) -> Option<&Value> {
    pod?["status"]["containerStatuses"].as_array()?.first()
}

fn running(pod: Option<&Value>) -> bool {
    container(pod).is_some_and(|c| c["state"]["running"].is_object() && c["ready"] == true)
}

/// The CRI container ID behind a kubelet `containerID` (`vimanad://ID`).
fn cri_id(status: &Value) -> String {
    let id = status["containerID"].as_str().unwrap();
    id.strip_prefix("vimanad://")
        .unwrap_or_else(|| panic!("{id}"))
        .to_owned()
}

/// One unary call over HTTP/3 (aioquic): the pod that served it.
fn served_by(node: &Node, message: &str) -> String {
    let echo = hex_of(&vimana_example::pb::EchoRequest {
        message: message.into(),
        ..Default::default()
    });
    let calls = json!([{ "path": UNARY, "messages_hex": [echo] }]);
    let r = &aioquic(node, "example.com", calls, false)[0];
    assert_eq!(r["grpc_status"], 0, "{r}");
    let reply = replies(r);
    assert_eq!(reply[0].message, message);
    reply[0].served_by.clone()
}

#[tokio::test]
async fn the_stock_kubelet_runs_restarts_and_removes_a_static_pod() {
    let mut node = Node::start().await;
    let Some(kubelet) = Kubelet::start(&node.socket()) else {
        return;
    };
    kubelet.add_manifest("echo", &manifest("echo"));
    let pod = kubelet
        .wait_pod("echo", Duration::from_secs(60), "running", running)
        .await
        .unwrap();
    let first = container(Some(&pod)).unwrap().clone();
    assert_eq!(first["restartCount"], 0, "{first}");
    let first_id = cri_id(&first);

    // The pod vimanad runs is the kubelet's, and it serves.
    let sandboxes = node
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    let sandbox = sandboxes[0].id.clone();
    assert_eq!(first_id, sandbox, "the first container's ID is the pod's");
    assert_eq!(
        sandboxes[0].metadata.as_ref().unwrap().uid,
        pod["metadata"]["uid"].as_str().unwrap()
    );
    assert_eq!(served_by(&node, "first"), sandbox);

    // kill -9 of the component: the kubelet makes a new container (attempt
    // 1, its own ID) in the same sandbox.
    let pid = node.pid(&first_id).await;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let pod = kubelet
        .wait_pod("echo", Duration::from_secs(60), "restarted", |p| {
            running(p) && container(p).is_some_and(|c| c["restartCount"] == 1)
        })
        .await
        .unwrap();
    let second = container(Some(&pod)).unwrap().clone();
    let second_id = cri_id(&second);
    assert_eq!(second_id, format!("{sandbox}.1"));
    assert_eq!(
        second["lastState"]["terminated"]["exitCode"], 137,
        "{second}"
    );
    assert_eq!(served_by(&node, "second"), sandbox);
    let second_pid = node.pid(&second_id).await;

    // The previous container stays listable over CRI, exited, with its log.
    let old = node
        .container_status(&first_id)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(old.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(old.exit_code, 137);
    assert!(old.finished_at > 0);
    assert!(
        old.log_path.ends_with("echo/0.log"),
        "the kubelet's log path of attempt 0: {}",
        old.log_path
    );
    assert!(std::path::Path::new(&old.log_path).exists());
    let new = node
        .container_status(&second_id)
        .await
        .unwrap()
        .status
        .unwrap();
    assert!(new.log_path.ends_with("echo/1.log"), "{}", new.log_path);
    assert_eq!(new.metadata.unwrap().attempt, 1);
    assert_eq!(new.image.unwrap().image, IMAGE, "the image's name");

    // kill -9 of vimanad while the kubelet runs changes nothing for the
    // pod: the component keeps running, and once vimanad is back the
    // kubelet sees the same container and HTTP/3 reaches it again.
    node.kill9();
    assert!(is_alive(second_pid));
    node.restart().await;
    assert_eq!(served_by(&node, "runtime back"), sandbox);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pod = kubelet
        .wait_pod("echo", Duration::from_secs(30), "unchanged", running)
        .await
        .unwrap();
    let after = container(Some(&pod)).unwrap();
    assert_eq!(after["restartCount"], 1, "{after}");
    assert_eq!(cri_id(after), second_id);
    assert_eq!(node.pid(&second_id).await, second_pid);

    // Deleting the manifest stops the pod and (the kubelet's garbage
    // collection runs once a minute) removes it.
    kubelet.remove_manifest("echo");
    kubelet
        .wait_pod("echo", Duration::from_secs(60), "deleted", |p| p.is_none())
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while is_alive(second_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the kubelet never stopped the pod\n{}",
            kubelet.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    loop {
        let left = node
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kubelet never removed the pod: {left:?}\n{}",
            kubelet.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let containers = node
        .runtime
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "{containers:?}");
}

const PROBED_IMAGE: &str = "example.com/vimana-probed:1.0.0";

/// The example component with busybox beside it (for the exec probes and
/// the commands run inside), packed and imported into the node's store.
fn import_probed_image(node: &Node) {
    let binary = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-gnu/release/vimana-example");
    assert!(
        binary.exists(),
        "{} is missing: scripts/build-example-image.sh builds it",
        binary.display()
    );
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static (scripts/setup.sh)");
    let applets = ["sh", "cat", "echo", "ls", "test"];
    let links: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    let mut entries = vec![
        tools::image::Entry::Dir("bin"),
        tools::image::Entry::File("bin/busybox", &busybox),
    ];
    entries.extend(
        links
            .iter()
            .map(|l| tools::image::Entry::Symlink(l, "/bin/busybox")),
    );
    let layout = tempfile::tempdir().unwrap();
    tools::image::pack(
        common::vimanad(),
        &binary,
        PROBED_IMAGE,
        "/component",
        &entries,
        None,
        layout.path(),
    );
    tools::image::import(common::vimanad(), layout.path(), &node.state_dir());
}

fn probed_manifest(name: &str, config: &std::path::Path) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels:
    vimana.host/domain: example.com
    vimana.host/service: {SERVICE}
    vimana.host/version: 1.0.0
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 2
  volumes:
  - name: config
    hostPath:
      path: {config}
      type: Directory
  - name: scratch
    emptyDir: {{}}
  containers:
  - name: echo
    image: {PROBED_IMAGE}
    imagePullPolicy: Never
    volumeMounts:
    - name: config
      mountPath: /config
      readOnly: true
    - name: scratch
      mountPath: /scratch
    readinessProbe:
      exec:
        command: [\"/bin/cat\", \"/config/ready\"]
      periodSeconds: 1
      failureThreshold: 1
    livenessProbe:
      exec:
        command: [\"/bin/cat\", \"/config/alive\"]
      initialDelaySeconds: 5
      periodSeconds: 1
      failureThreshold: 2
",
        config = config.display()
    )
}

/// Runs tests/peers/kubelet_https.py (`get` or `exec`) against `url`.
fn kubelet_https(mode: &str, url: &str) -> Value {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/kubelet_https.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([mode, url])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "kubelet_https.py {mode} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn exec_sync(node: &mut Node, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
    node.runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|c| (*c).to_owned()).collect(),
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner()
}

fn started(pod: Option<&Value>) -> bool {
    container(pod).is_some_and(|c| c["state"]["running"].is_object())
}

#[tokio::test]
async fn the_kubelet_probes_mounts_volumes_reads_stats_logs_and_execs() {
    if std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .map_or(true, |s| !s.success())
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 websockets missing (scripts/setup.sh installs it)"
        );
        eprintln!("SKIPPED: python3 websockets missing (pip install websockets)");
        return;
    }
    let mut node = Node::start().await;
    let Some(kubelet) = Kubelet::start(&node.socket()) else {
        return;
    };
    import_probed_image(&node);
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("app.conf"), "greeting: hello\n").unwrap();
    std::fs::write(config.path().join("alive"), "yes\n").unwrap();
    kubelet.add_manifest("probed", &probed_manifest("probed", config.path()));
    let pod_name = format!("probed-{}", kubelet.node_name);

    // Running, but not Ready: its readiness probe (ExecSync `cat
    // /config/ready`) fails while the file is missing.
    let pod = kubelet
        .wait_pod("probed", Duration::from_secs(60), "started", started)
        .await
        .unwrap();
    let id = cri_id(container(Some(&pod)).unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pod = kubelet.pod("probed");
    assert!(started(pod.as_ref()), "{pod:?}");
    assert_eq!(container(pod.as_ref()).unwrap()["ready"], false, "{pod:?}");

    // The volumes, seen from inside and in ContainerStatus.mounts.
    let r = exec_sync(&mut node, &id, &["cat", "/config/app.conf"]).await;
    assert_eq!((r.exit_code, &r.stdout[..]), (0, &b"greeting: hello\n"[..]));
    let r = exec_sync(&mut node, &id, &["sh", "-c", "echo x > /config/new"]).await;
    assert_ne!(r.exit_code, 0, "the hostPath is read-only inside");
    assert!(String::from_utf8_lossy(&r.stderr).contains("Read-only file system"));
    assert!(!config.path().join("new").exists());
    let r = exec_sync(
        &mut node,
        &id,
        &["sh", "-c", "echo scratch > /scratch/f && cat /scratch/f"],
    )
    .await;
    assert_eq!(
        (r.exit_code, &r.stdout[..]),
        (0, &b"scratch\n"[..]),
        "{r:?}"
    );
    let status = node.container_status(&id).await.unwrap().status.unwrap();
    let mount = |path: &str| {
        status
            .mounts
            .iter()
            .find(|m| m.container_path == path)
            .unwrap_or_else(|| panic!("no {path} in {:?}", status.mounts))
            .clone()
    };
    let (config_mount, scratch) = (mount("/config"), mount("/scratch"));
    assert_eq!(config_mount.host_path, config.path().to_str().unwrap());
    assert!(config_mount.readonly);
    assert!(!scratch.readonly);
    assert!(
        scratch
            .host_path
            .ends_with("volumes/kubernetes.io~empty-dir/scratch"),
        "{scratch:?}"
    );
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(&scratch.host_path).join("f")).unwrap(),
        "scratch\n",
        "the emptyDir is the kubelet's directory"
    );

    // Ready only once the probe passes.
    std::fs::write(config.path().join("ready"), "").unwrap();
    kubelet
        .wait_pod("probed", Duration::from_secs(15), "ready", running)
        .await
        .unwrap();

    // /stats/summary: the pod's CPU and memory, from vimanad's CRI stats.
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let (summary_container, summary_pod) = loop {
        let (code, body) = kubelet.get("/stats/summary").unwrap();
        let summary: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let pod = summary["pods"]
            .as_array()
            .and_then(|pods| {
                pods.iter()
                    .find(|p| p["podRef"]["name"] == pod_name.as_str())
            })
            .cloned();
        let ctr = pod.as_ref().and_then(|p| {
            p["containers"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "echo")
                .cloned()
        });
        if code == 200 {
            if let (Some(p), Some(c)) = (&pod, &ctr) {
                // The container's figures come from vimanad's
                // ListContainerStats; the pod's from the kubelet's own
                // cAdvisor on the pod cgroup vimanad put the container under
                // (sampled at its housekeeping interval, 10 s or more).
                let positive = |v: &Value| v.as_u64().unwrap_or(0) > 0;
                if positive(&c["cpu"]["usageCoreNanoSeconds"])
                    && positive(&c["memory"]["workingSetBytes"])
                    && positive(&p["cpu"]["usageCoreNanoSeconds"])
                    && positive(&p["memory"]["workingSetBytes"])
                {
                    break (c.clone(), p.clone());
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/stats/summary never had the pod's stats: HTTP {code} {body}\n{}",
            kubelet.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ours = node
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let our_cpu = ours.cpu.unwrap().usage_core_nano_seconds.unwrap().value;
    let their_cpu = summary_container["cpu"]["usageCoreNanoSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        their_cpu <= our_cpu && their_cpu * 2 > our_cpu / 2,
        "kubelet {their_cpu} ns vs vimanad {our_cpu} ns"
    );
    let our_ws = ours.memory.unwrap().working_set_bytes.unwrap().value;
    let their_ws = summary_container["memory"]["workingSetBytes"]
        .as_u64()
        .unwrap();
    assert!(
        their_ws * 2 > our_ws && their_ws < our_ws * 2,
        "kubelet working set {their_ws} vs vimanad {our_ws}"
    );
    assert!(
        summary_pod["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{summary_pod}"
    );
    assert!(
        summary_pod["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{summary_pod}"
    );

    // WebSocket exec through the kubelet's own /exec handler (kubectl exec's
    // path behind the API server): the kubelet asks vimanad for an Exec URL
    // and proxies the upgraded connection to vimanad's streaming server.
    let port = kubelet.port;
    let exec = kubelet_https(
        "exec",
        &format!(
            "wss://127.0.0.1:{port}/exec/default/{pod_name}/echo?command=cat&command=/config/app.conf&output=1&error=1"
        ),
    );
    assert_eq!(exec["protocol"], "v4.channel.k8s.io", "{exec}");
    assert_eq!(exec["stdout"], "greeting: hello\n", "{exec}");
    assert!(
        exec["error"].as_str().unwrap().contains("Success"),
        "{exec}"
    );
    let failing = kubelet_https(
        "exec",
        &format!(
            "wss://127.0.0.1:{port}/exec/default/{pod_name}/echo?command=sh&command=-c&command=exit%203&output=1&error=1"
        ),
    );
    assert!(
        failing["error"].as_str().unwrap().contains("\"ExitCode\""),
        "{failing}"
    );
    assert!(
        failing["error"].as_str().unwrap().contains("\"3\""),
        "{failing}"
    );

    // A failing liveness probe: the kubelet stops the container (SIGTERM,
    // which the component logs) and starts attempt 1.
    std::fs::remove_file(config.path().join("alive")).unwrap();
    let pod = kubelet
        .wait_pod("probed", Duration::from_secs(60), "restarted", |p| {
            container(p).is_some_and(|c| c["restartCount"].as_u64() >= Some(1))
        })
        .await
        .unwrap();
    std::fs::write(config.path().join("alive"), "yes\n").unwrap();
    let restarted = container(Some(&pod)).unwrap().clone();
    assert_eq!(cri_id(&restarted), format!("{id}.1"), "{restarted}");
    assert!(
        restarted["lastState"]["terminated"].is_object(),
        "{restarted}"
    );
    assert!(
        kubelet.log().contains("failed liveness probe"),
        "{}",
        kubelet.log_tail()
    );

    // `kubectl logs --previous`: the exited attempt's log through the
    // kubelet; the current one has no shutdown line.
    let logs = |previous: bool| {
        let url = format!(
            "https://127.0.0.1:{port}/containerLogs/default/{pod_name}/echo{}",
            if previous { "?previous=true" } else { "" }
        );
        let r = kubelet_https("get", &url);
        assert_eq!(r["status"], 200, "{url}: {r}");
        r["body"].as_str().unwrap().to_owned()
    };
    let previous = logs(true);
    assert!(
        previous.contains("vimana-example listening on"),
        "{previous}"
    );
    assert!(previous.contains("SIGTERM received"), "{previous}");
    let current = logs(false);
    assert!(current.contains("vimana-example listening on"), "{current}");
    assert!(!current.contains("SIGTERM received"), "{current}");
    let old = node.container_status(&id).await.unwrap().status.unwrap();
    assert_eq!(old.state, cri::ContainerState::ContainerExited as i32);
}
