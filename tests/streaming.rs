//! The CRI streaming server against real clients: crictl's exec (sync,
//! piped and under a pty) and port-forward over SPDY and WebSocket, ExecSync
//! limits, and the server's answers to bad tokens and to a client that never
//! reads. The example image holds only its component, so each test copies
//! Debian's static busybox into the running container's layer (as an image
//! would carry it) before exec'ing shell commands.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, SERVICE};
use k8s_cri::v1 as cri;

const A: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

/// The tools directory: `$VIMANA_TOOLS`, else `<repo>/../shared/tools`.
fn tool(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("VIMANA_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/tools"));
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing and CI=true",
        path.display()
    );
    eprintln!("SKIP: {} not found (set VIMANA_TOOLS)", path.display());
    None
}

/// A running pod whose container has busybox (and `sh`, `cat`, ... links).
async fn pod_with_busybox(node: &mut Node, name: &str) -> String {
    let id = node.running_pod(name, A).await;
    install_busybox(node, &id).await;
    id
}

/// Creates and starts the pod's container with `config`, then copies busybox
/// into it.
async fn start_with_busybox(node: &mut Node, pod: &str, config: cri::ContainerConfig) {
    let sandbox = node.sandbox_config(pod).await;
    node.runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        })
        .await
        .unwrap();
    node.start_container(pod).await.unwrap();
    install_busybox(node, pod).await;
}

/// Copies busybox (and applet links) into running container `id`'s layer.
async fn install_busybox(node: &mut Node, id: &str) {
    let pid = node.pid(id).await;
    let bin = PathBuf::from(format!("/proc/{pid}/root/bin"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static (scripts/setup.sh)");
    for applet in [
        "sh", "cat", "echo", "sleep", "yes", "id", "head", "ls", "hostname",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
}

fn crictl(node: &Node, crictl: &PathBuf) -> Command {
    let mut c = Command::new(crictl);
    c.arg("--runtime-endpoint")
        .arg(format!("unix://{}", node.socket().display()))
        .arg("--image-endpoint")
        .arg(format!("unix://{}", node.socket().display()))
        .args(["--timeout", "20s"]);
    c
}

async fn exec_sync(
    node: &mut Node,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<cri::ExecSyncResponse, tonic::Status> {
    node.runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The lines of a /proc status file whose key is in `keys`.
fn status_lines(status: &str, keys: &[&str]) -> Vec<String> {
    status
        .lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(&format!("{k}:"))))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn exec_sync_runs_inside_the_container_with_its_sandbox() {
    let mut node = Node::start().await;
    let id = pod_with_busybox(&mut node, "sync").await;

    let out = exec_sync(
        &mut node,
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        10,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            text(&out.stdout).as_str(),
            text(&out.stderr).as_str(),
            out.exit_code
        ),
        ("out\n", "err\n", 3)
    );

    // Same PID namespace (its init is the component), mount namespace
    // (its root), cgroups, credentials, capabilities, seccomp and
    // no_new_privs as the container's own process.
    let keys = [
        "Uid",
        "Gid",
        "Groups",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
    ];
    let mine = exec_sync(&mut node, &id, &["cat", "/proc/self/status"], 10)
        .await
        .unwrap();
    let init = exec_sync(&mut node, &id, &["cat", "/proc/1/status"], 10)
        .await
        .unwrap();
    assert_eq!(
        status_lines(&text(&mine.stdout), &keys),
        status_lines(&text(&init.stdout), &keys)
    );
    assert_eq!(status_lines(&text(&init.stdout), &keys).len(), keys.len());
    // The runtime default, not the root of the node: runc's 14 capabilities
    // and the seccomp filter.
    let mine = text(&mine.stdout);
    assert!(mine.contains("CapEff:\t00000000a80425fb"), "{mine}");
    assert!(mine.contains("Seccomp:\t2"), "{mine}");
    let cmdline = exec_sync(&mut node, &id, &["cat", "/proc/1/cmdline"], 10)
        .await
        .unwrap();
    assert_eq!(text(&cmdline.stdout).trim_end_matches('\0'), "/component");
    let cgroups = exec_sync(
        &mut node,
        &id,
        &[
            "sh",
            "-c",
            "cat /proc/self/cgroup; echo; cat /proc/1/cgroup",
        ],
        10,
    )
    .await
    .unwrap();
    let cgroups = text(&cgroups.stdout);
    let (a, b) = cgroups.split_once("\n\n").unwrap();
    assert_eq!(a.trim(), b.trim());
    let pid = node.pid(&id).await;
    let ns = |p: &str| std::fs::read_link(p).unwrap();
    let ls = exec_sync(&mut node, &id, &["ls", "/"], 10).await.unwrap();
    assert!(
        text(&ls.stdout).contains("component"),
        "{}",
        text(&ls.stdout)
    );
    for kind in ["net", "uts", "ipc"] {
        let inside = exec_sync(
            &mut node,
            &id,
            &["sh", "-c", &format!("ls -l /proc/self/ns/{kind}")],
            10,
        )
        .await
        .unwrap();
        let want = ns(&format!("/proc/{pid}/ns/{kind}"));
        assert!(
            text(&inside.stdout).contains(&*want.to_string_lossy()),
            "{kind}: {}",
            text(&inside.stdout)
        );
    }

    // A command that does not exist: runc's words, and no exit code.
    let missing = exec_sync(&mut node, &id, &["no-such-command"], 10)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unknown, "{missing:?}");
    assert!(
        missing
            .message()
            .contains("exec: \"no-such-command\": executable file not found in $PATH"),
        "{missing:?}"
    );

    // Output is bounded: 20 MiB of "y\n" on each stream comes back as
    // 8 MiB less 32 KiB each, which a kubelet's 16 MiB message limit takes.
    let big = node
        .runtime
        .clone()
        .max_decoding_message_size(16 << 20)
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: [
                "sh",
                "-c",
                "yes | head -c 20971520; yes | head -c 20971520 >&2",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner();
    let limit = (8 << 20) - (32 << 10);
    assert_eq!((big.stdout.len(), big.stderr.len()), (limit, limit));
    assert_eq!(big.exit_code, 0);
    node.remove_running_pod(&id).await;
}

/// A restricted container (uid 1000, every capability dropped,
/// no_new_privs): an exec'd command has exactly that, not more.
#[tokio::test]
async fn exec_in_a_restricted_container_keeps_its_restrictions() {
    let mut node = Node::start().await;
    let pod = node.run_pod("restricted", A).await;
    let mut config = common::container_config("component", &[]);
    config.linux = Some(cri::LinuxContainerConfig {
        resources: None,
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 1000 }),
            no_new_privs: true,
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
    });
    start_with_busybox(&mut node, &pod, config).await;
    let out = exec_sync(
        &mut node,
        &pod,
        &["/bin/busybox", "cat", "/proc/self/status"],
        10,
    )
    .await
    .unwrap();
    let status = text(&out.stdout);
    for line in [
        "Uid:\t1000\t1000\t1000\t1000",
        "Gid:\t1000\t1000\t1000\t1000",
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(status.contains(line), "{line:?} missing in:\n{status}");
    }
    // The seccomp filter holds: unshare is refused inside.
    let out = exec_sync(
        &mut node,
        &pod,
        &["/bin/busybox", "unshare", "-m", "true"],
        10,
    )
    .await
    .unwrap();
    assert_ne!(out.exit_code, 0, "{}", text(&out.stderr));
    node.remove_running_pod(&pod).await;
}

/// A pod in its own user namespace: an exec'd command is in it too (root
/// inside, the mapped uid on the node), never the node's root.
#[tokio::test]
async fn exec_in_a_user_namespace_pod_stays_in_it() {
    let mut node = Node::start().await;
    let pod = node.run_pod("userns", A).await;
    let map = |host_id| cri::IdMapping {
        host_id,
        container_id: 0,
        length: 65536,
    };
    let mut config = common::container_config("component", &[]);
    config.linux = Some(cri::LinuxContainerConfig {
        resources: None,
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Pod as i32,
                    uids: vec![map(165536)],
                    gids: vec![map(165536)],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    start_with_busybox(&mut node, &pod, config).await;
    let pid = node.pid(&pod).await;
    let out = exec_sync(
        &mut node,
        &pod,
        &[
            "/bin/busybox",
            "cat",
            "/proc/self/uid_map",
            "/proc/self/status",
        ],
        10,
    )
    .await
    .unwrap();
    let shown = text(&out.stdout);
    assert_eq!(
        shown
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "165536", "65536"],
        "{shown} {}",
        text(&out.stderr)
    );
    assert!(shown.contains("Uid:\t0\t0\t0\t0"), "{shown}");
    let init = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let caps = |s: &str| status_lines(s, &["CapEff", "CapBnd", "Seccomp", "NoNewPrivs"]);
    assert_eq!(caps(&shown), caps(&init));
    node.remove_running_pod(&pod).await;
}

#[tokio::test]
async fn exec_sync_timeout_kills_the_command() {
    let mut node = Node::start().await;
    let id = pod_with_busybox(&mut node, "timeout").await;
    let started = Instant::now();
    let err = exec_sync(&mut node, &id, &["sleep", "1234"], 1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("timed out") && err.message().contains("killed"),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The command is gone (the helper's death takes it, by parent-death signal).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sleeping = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| c == b"sleep\x001234\x00");
    assert!(!sleeping, "the timed-out command still runs");
    // The container is unaffected.
    let ok = exec_sync(&mut node, &id, &["echo", "still here"], 5)
        .await
        .unwrap();
    assert_eq!(text(&ok.stdout), "still here\n");
    node.remove_running_pod(&id).await;
}

#[tokio::test]
async fn exec_into_an_exited_or_unknown_container_is_refused() {
    let mut node = Node::start().await;
    let id = pod_with_busybox(&mut node, "exited").await;
    node.stop_container(&id, 5).await.unwrap();
    let sync = exec_sync(&mut node, &id, &["echo"], 5).await.unwrap_err();
    assert_eq!(sync.code(), tonic::Code::FailedPrecondition, "{sync:?}");
    assert!(sync.message().contains("not running"), "{sync:?}");
    let stream = node
        .runtime
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stream.code(), tonic::Code::FailedPrecondition);
    let unknown = exec_sync(&mut node, "0123456789abcdef", &["echo"], 5)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let forward = node
        .runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: id.clone(),
            port: vec![50051],
        })
        .await
        .unwrap_err();
    assert_eq!(forward.code(), tonic::Code::FailedPrecondition);
    let bad = node
        .runtime
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec![],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    node.stop_pod(&id).await.unwrap();
    node.remove_container(&id).await.unwrap();
    node.remove_pod(&id).await.unwrap();
}

/// After a kubelet-style restart the pod holds two containers: `…#N`
/// (exited) and `…#N.1` (running). Exec, ExecSync and Attach go to the one
/// named, so the new attempt serves them and the exited one is refused;
/// PortForward (a pod ID) goes to the current container.
#[tokio::test]
async fn streaming_goes_to_the_named_container_after_a_restart() {
    let mut node = Node::start().await;
    let pod = pod_with_busybox(&mut node, "restarted").await;
    node.stop_container(&pod, 5).await.unwrap();
    let second = node.create_attempt(&pod, 1).await.unwrap();
    assert_eq!(second, format!("{pod}.1"));
    node.start_container(&second).await.unwrap();
    install_busybox(&mut node, &second).await;
    let pid = node.pid(&second).await;
    std::fs::write(format!("/proc/{pid}/root/tmp/attempt"), "second\n").unwrap();

    let out = exec_sync(&mut node, &second, &["cat", "/tmp/attempt"], 10)
        .await
        .unwrap();
    assert_eq!((out.exit_code, text(&out.stdout)), (0, "second\n".into()));
    // The command ran in the second container's PID namespace: its init is
    // the second container's process (the same start time as seen from the
    // host).
    let start_time = |stat: &str| {
        let after_comm = stat.rsplit_once(')').unwrap().1;
        after_comm.split_whitespace().nth(19).unwrap().to_owned()
    };
    let out = exec_sync(&mut node, &second, &["cat", "/proc/1/stat"], 10)
        .await
        .unwrap();
    let host = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert_eq!(start_time(&text(&out.stdout)), start_time(&host));

    let old = exec_sync(&mut node, &pod, &["echo"], 5).await.unwrap_err();
    assert_eq!(old.code(), tonic::Code::FailedPrecondition, "{old:?}");
    assert!(old.message().contains(&pod), "{old:?}");
    for id in [&pod, &format!("{pod}.7"), &format!("{pod}.01")] {
        let err = node
            .runtime
            .attach(cri::AttachRequest {
                container_id: id.clone(),
                stdout: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        let want = if id == &pod {
            tonic::Code::FailedPrecondition
        } else {
            tonic::Code::NotFound
        };
        assert_eq!(err.code(), want, "{id}: {err:?}");
    }
    let attach = node
        .runtime
        .attach(cri::AttachRequest {
            container_id: second.clone(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(attach.url.contains("/attach/"), "{attach:?}");
    let exec = node
        .runtime
        .exec(cri::ExecRequest {
            container_id: pod.clone(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(exec.code(), tonic::Code::FailedPrecondition, "{exec:?}");
    let forward = node
        .runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![50051],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(forward.url.contains("/portforward/"), "{forward:?}");
    // A container ID is not a pod sandbox ID.
    let forward = node
        .runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: second.clone(),
            port: vec![50051],
        })
        .await
        .unwrap_err();
    assert_eq!(forward.code(), tonic::Code::NotFound, "{forward:?}");

    node.stop_container(&second, 5).await.unwrap();
    node.stop_pod(&pod).await.unwrap();
    node.remove_container(&second).await.unwrap();
    node.remove_container(&pod).await.unwrap();
    node.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn crictl_exec_over_spdy_and_websocket() {
    let Some(crictl_bin) = tool("crictl") else {
        return;
    };
    let mut node = Node::start().await;
    let id = pod_with_busybox(&mut node, "crictl").await;
    for transport in TRANSPORTS {
        // Sync (ExecSync).
        let out = crictl(&node, &crictl_bin)
            .args(["exec", "-s", &id, "echo", "sync", transport])
            .output()
            .unwrap();
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(&format!("sync {transport}")));

        // Streaming, stdin piped in, stdout and stderr apart, exit code.
        let mut child = crictl(&node, &crictl_bin)
            .args([
                "exec",
                "-i",
                "--transport",
                transport,
                &id,
                "sh",
                "-c",
                "cat; echo to-stderr >&2; exit 7",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("piped over {transport}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            text(&out.stdout),
            format!("piped over {transport}\n"),
            "{transport}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("to-stderr"),
            "{transport}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("exit code 7"),
            "{transport}: {}",
            text(&out.stderr)
        );
        assert!(!out.status.success());

        // Success: exit 0.
        let out = crictl(&node, &crictl_bin)
            .args([
                "exec",
                "--transport",
                transport,
                &id,
                "sh",
                "-c",
                "echo fine",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "fine\n");

        // A command that does not exist.
        let out = crictl(&node, &crictl_bin)
            .args(["exec", "--transport", transport, &id, "no-such-command"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("executable file not found in $PATH"),
            "{transport}: {}",
            text(&out.stderr)
        );
    }
    node.remove_running_pod(&id).await;
}

/// crictl exec -it under a pseudo-terminal (Python's pty module gives it
/// one), typing a command, reading the echo and the terminal's size.
#[tokio::test]
async fn crictl_exec_interactive_tty_over_spdy_and_websocket() {
    let Some(crictl_bin) = tool("crictl") else {
        return;
    };
    let mut node = Node::start().await;
    let id = pod_with_busybox(&mut node, "tty").await;
    let script = r#"
import os, pty, sys, time, select, struct, fcntl, termios
argv = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
out = b""
def pump(until, seconds):
    global out
    end = time.time() + seconds
    while time.time() < end and until not in out:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                return
            if not data:
                return
            out += data
time.sleep(1.0)
os.write(fd, b"tty -s && echo is-a-tty; stty size; echo $((6*7))-done; exit 4\r")
pump(b"42-done", 15)
pump(b"\xff", 3)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
sys.stdout.write("\nEXIT=%d\n" % os.waitstatus_to_exitcode(status))
"#;
    for applet in ["tty", "stty"] {
        let pid = node.pid(&id).await;
        let _ = std::os::unix::fs::symlink("busybox", format!("/proc/{pid}/root/bin/{applet}"));
    }
    for transport in TRANSPORTS {
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&crictl_bin)
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", node.socket().display()))
            .args(["exec", "-it", "--transport", transport, &id, "sh"])
            .output()
            .unwrap();
        let shown = text(&out.stdout);
        assert!(
            shown.contains("is-a-tty"),
            "{transport}: {shown} {}",
            text(&out.stderr)
        );
        assert!(
            shown.contains("33 111"),
            "{transport}: the terminal size: {shown}"
        );
        assert!(shown.contains("42-done"), "{transport}: {shown}");
        assert!(
            !shown.contains("EXIT=0"),
            "{transport}: exit 4 must fail crictl: {shown}"
        );
    }
    node.remove_running_pod(&id).await;
}

#[tokio::test]
async fn crictl_port_forward_reaches_the_component_over_spdy_and_websocket() {
    let Some(crictl_bin) = tool("crictl") else {
        return;
    };
    let mut node = Node::start().await;
    let id = node.running_pod("forward", A).await;
    // Whatever port is asked, the forwarded connection reaches the
    // component's gRPC socket: 50051 beside another number each time (80,
    // 65535), two ports in one forwarding session.
    for (transport, other) in TRANSPORTS.into_iter().zip([80u16, 65535]) {
        let ports = [common::free_tcp_port(), common::free_tcp_port()];
        let mut forward = crictl(&node, &crictl_bin)
            .args([
                "port-forward",
                "--transport",
                transport,
                &id,
                &format!("{}:50051", ports[0]),
                &format!("{}:{other}", ports[1]),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        for port in ports {
            let mut ready = false;
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    ready = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                ready,
                "{transport}: crictl port-forward did not listen on {port}"
            );
        }
        // Any HTTP/2 client: a gRPC call through each forwarded port, twice
        // (two forwarded connections each).
        for (port, remote) in ports.into_iter().zip([50051, other]) {
            for round in 0..2 {
                let channel =
                    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                        .unwrap()
                        .connect()
                        .await
                        .unwrap_or_else(|e| panic!("{transport} {remote}: connect: {e}"));
                let message = format!("through {transport} to {remote}, {round}");
                let reply = vimana_example::pb::echo_client::EchoClient::new(channel)
                    .unary(vimana_example::pb::EchoRequest {
                        message: message.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{transport} {remote}: call: {e}"))
                    .into_inner();
                assert_eq!(reply.message, message);
            }
        }
        let _ = forward.kill();
        let _ = forward.wait();
    }
    node.remove_running_pod(&id).await;
}

/// Sends a raw HTTP request and returns the status line and body.
fn http_get(url: &str, headers: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

#[tokio::test]
async fn unknown_reused_and_misdirected_tokens_get_404() {
    let mut node = Node::start().await;
    let id = pod_with_busybox(&mut node, "tokens").await;
    let url = node
        .runtime
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "hi".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    // Used once (not even a valid upgrade: the token is spent anyway).
    let first = http_get(&url, "");
    assert!(first.starts_with("HTTP/1.1 400"), "{first}");
    let again = http_get(&url, "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n");
    assert!(
        again.starts_with("HTTP/1.1 404") && again.contains("expired"),
        "{again}"
    );
    let (base, _) = url.rsplit_once("/exec/").unwrap();
    let unknown = http_get(&format!("{base}/exec/00112233445566778899aabbccddeeff"), "");
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    // A token used on another verb's path is spent and refused.
    let url = node
        .runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: id.clone(),
            port: vec![1],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let token = url.rsplit('/').next().unwrap();
    let wrong = http_get(&format!("{base}/exec/{token}"), "");
    assert!(wrong.starts_with("HTTP/1.1 404"), "{wrong}");
    assert!(http_get(&url, "").starts_with("HTTP/1.1 404"));
    let garbage = http_get(&format!("{base}/../../etc/passwd"), "");
    assert!(garbage.starts_with("HTTP/1.1 404"), "{garbage}");
    node.remove_running_pod(&id).await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A WebSocket client that starts `yes` and never reads: vimanad's memory
/// stays flat (the command blocks on its pipe) and the container serves on.
#[tokio::test]
async fn a_client_that_never_reads_gets_backpressure() {
    use futures::StreamExt;
    let mut node = Node::start().await;
    let id = pod_with_busybox(&mut node, "slow").await;
    let url = node
        .runtime
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["yes".into(), "0123456789abcdef0123456789abcdef".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.replace("http://", "ws://"),
        )
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    // A tiny receive buffer so the kernel holds little for us.
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "v5.channel.k8s.io"
    );
    // Read a little, to see output flows, then stop reading.
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(first.into_data()[..], [1u8]);
    let data = ws.next().await.unwrap().unwrap().into_data();
    assert_eq!(data[0], 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = node.process.id();
    let before = rss_kib(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    assert!(
        after < before + 8 * 1024,
        "vimanad grew from {before} KiB to {after} KiB"
    );
    // The container is unaffected and exec still works.
    let ok = exec_sync(&mut node, &id, &["echo", "alive"], 5)
        .await
        .unwrap();
    assert_eq!(text(&ok.stdout), "alive\n");
    assert_eq!(node.state(&id).await, cri::ContainerState::ContainerRunning);
    // The client leaving ends the command (no orphan left writing).
    drop(ws);
    let yes = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|c| c == b"yes\x000123456789abcdef0123456789abcdef\x00")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while yes() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!yes(), "the exec'd command outlived its client");
    node.remove_running_pod(&id).await;
}

/// A pod whose container was created with `stdin: true`, with busybox.
async fn stdin_pod(node: &mut Node, name: &str, tty: bool) -> String {
    let pod = node.run_pod(name, A).await;
    let mut config = common::container_config("component", &[]);
    config.stdin = true;
    config.tty = tty;
    start_with_busybox(node, &pod, config).await;
    pod
}

/// Reads from `reader` on a thread until `needle` shows up (or 15 s).
fn wait_for(
    reader: impl Read + Send + 'static,
    needle: &'static str,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(needle) {
                break;
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
    });
    rx
}

/// crictl attach to a component's own stdio: what it is given on stdin
/// reaches the container's stdin, what the container prints reaches the
/// attached client and still the CRI log; then vimanad restarts and a new
/// attach still works (the shim's relay holds the streams).
#[tokio::test]
async fn crictl_attach_with_stdin_over_spdy_and_websocket_survives_a_restart() {
    let Some(crictl_bin) = tool("crictl") else {
        return;
    };
    let mut node = Node::start().await;
    let id = stdin_pod(&mut node, "attach", false).await;
    for (round, transport) in TRANSPORTS.iter().enumerate() {
        if round == 1 {
            node.kill9();
            node.restart().await;
        }
        let mut attach = crictl(&node, &crictl_bin)
            .args(["attach", "-i", "--transport", transport, &id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let seen = wait_for(attach.stdout.take().unwrap(), "pong-");
        let mut stdin = attach.stdin.take().unwrap();
        // Input typed into the attached client reaches the container's stdin.
        let line = format!("ping-{transport}\n");
        let reader = tokio::spawn({
            let mut runtime = node.runtime.clone();
            let id = id.clone();
            async move {
                runtime
                    .exec_sync(cri::ExecSyncRequest {
                        container_id: id,
                        cmd: vec![
                            "head".into(),
                            "-n".into(),
                            "1".into(),
                            "/proc/1/fd/0".into(),
                        ],
                        timeout: 15,
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.flush().unwrap();
        let got = reader.await.unwrap().unwrap().into_inner();
        assert_eq!(
            text(&got.stdout),
            line,
            "{transport}: {}",
            text(&got.stderr)
        );
        // The container's output reaches the client, and the log.
        let say = format!("echo pong-{transport} > /proc/1/fd/1");
        exec_sync(&mut node, &id, &["sh", "-c", &say], 10)
            .await
            .unwrap();
        let shown = seen
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_default();
        assert!(
            shown.contains(&format!("pong-{transport}")),
            "{transport}: attach showed {shown:?}"
        );
        let _ = attach.kill();
        let _ = attach.wait();
        let log = node
            .container_status(&id)
            .await
            .unwrap()
            .status
            .unwrap()
            .log_path;
        let log = std::fs::read_to_string(log).unwrap();
        assert!(log.contains(&format!("stdout F pong-{transport}")), "{log}");
    }
    // stdin was not enabled for this one: attach -i is refused.
    let plain = node.running_pod("plain", A).await;
    let refused = node
        .runtime
        .attach(cri::AttachRequest {
            container_id: plain.clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    node.remove_running_pod(&plain).await;
    node.remove_running_pod(&id).await;
}

/// A container with a tty: attach -ti under a pty types into the
/// container's terminal and sees its echo (crictl's own terminal is raw, so
/// the echo can only come from the container's pty), which also reaches the
/// CRI log. (Another process cannot write to the container's pty: the
/// devices cgroup allows no /dev/pts open.)
#[tokio::test]
async fn crictl_attach_tty() {
    let Some(crictl_bin) = tool("crictl") else {
        return;
    };
    let mut node = Node::start().await;
    let id = stdin_pod(&mut node, "attachtty", true).await;
    let script = r#"
import os, pty, sys, time, select
argv = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
out = b""
time.sleep(1.5)
os.write(fd, b"tty-pong\r")
end = time.time() + 15
while time.time() < end and b"tty-pong" not in out:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            out += os.read(fd, 4096)
        except OSError:
            break
os.kill(pid, 9)
sys.stdout.write(out.decode("utf-8", "replace"))
"#;
    for transport in TRANSPORTS {
        let child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&crictl_bin)
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", node.socket().display()))
            .args(["attach", "-t", "-i", "--transport", transport, &id])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            text(&out.stdout).contains("tty-pong"),
            "{transport}: {}",
            text(&out.stdout)
        );
    }
    let log = node
        .container_status(&id)
        .await
        .unwrap()
        .status
        .unwrap()
        .log_path;
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("tty-pong"), "{log}");
    node.remove_running_pod(&id).await;
}
