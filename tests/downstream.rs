//! vimanad with a downstream CRI runtime: Debian's real containerd + runc
//! (tests/common/containerd.rs) behind vimanad's CRI socket, driven by the
//! stock crictl and by CRI calls, beside real component pods.

mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::time::{Duration, Instant};

use common::*;
use containerd::{crictl, prerequisites, Containerd, BUSYBOX, PAUSE};
use k8s_cri::v1 as cri;
use serde_json::json;
use tonic::Code;
use vimana_example::pb;

const A: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");

fn is_containerd_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A node whose downstream is `ctrd`.
async fn node_with(ctrd: &Containerd, extra: &[&str]) -> Node {
    let uri = ctrd.uri();
    let mut args = vec!["--downstream-cri", uri.as_str()];
    args.extend_from_slice(extra);
    Node::start_with(&args).await
}

/// An ordinary pod through vimanad on handler `""`, with a running busybox
/// container printing `greeting`; returns (pod, container).
async fn busybox_pod(
    node: &mut Node,
    ctrd: &Containerd,
    name: &str,
    greeting: &str,
) -> (String, String) {
    let config = ctrd.pod_config(name);
    let pod = node
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox of an ordinary pod through vimanad")
        .into_inner()
        .pod_sandbox_id;
    assert!(is_containerd_id(&pod), "containerd made it: {pod}");
    let container = node
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(Containerd::busybox(name, &format!("echo {greeting}"))),
            sandbox_config: Some(config),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    node.runtime
        .start_container(cri::StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .expect("StartContainer");
    (pod, container)
}

/// A component pod whose component logs `lines` lines at start.
async fn component_pod(node: &mut Node, name: &str) -> String {
    let pod = node.run_pod(name, A).await;
    node.create(&pod, "component", &[("EXAMPLE_LOG_LINES", "2")])
        .await
        .unwrap();
    node.start_container(&pod).await.unwrap();
    pod
}

/// Waits until every thread of `pid` is stopped (SIGSTOP lands on each
/// thread as it next runs: slow on a loaded machine).
fn wait_stopped(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                state.starts_with('T') || state.starts_with('t')
            });
        if stopped {
            return;
        }
        assert!(Instant::now() < deadline, "containerd {pid} did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Polls `crictl logs ID` until it holds `needle`.
fn wait_for_log(socket: &std::path::Path, id: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, out, err) = crictl(socket, &["logs", id]);
        if ok && (out.contains(needle) || err.contains(needle)) {
            return out + &err;
        }
        assert!(Instant::now() < deadline, "crictl logs {id}: {out}{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn pod_ids(node: &mut Node, filter: Option<cri::PodSandboxFilter>) -> Vec<String> {
    let mut ids: Vec<String> = node
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter })
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn a_busybox_pod_runs_through_vimanad_beside_a_component() {
    if !prerequisites(&["crictl"]) {
        return;
    }
    let ctrd = Containerd::start();
    let mut node = node_with(&ctrd, &[]).await;
    let component = component_pod(&mut node, "comp").await;
    let (bb, bb_ctr) = busybox_pod(&mut node, &ctrd, "bb", "hello-from-busybox").await;

    // containerd holds the ordinary pod; vimanad's own store does not.
    let theirs = ctrd
        .client()
        .await
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(theirs.iter().map(|p| &p.id).collect::<Vec<_>>(), [&bb]);

    // The stock crictl against vimanad's socket sees both.
    let socket = node.socket();
    let (ok, out, err) = crictl(&socket, &["pods", "-q", "--no-trunc"]);
    assert!(ok, "crictl pods: {err}");
    assert_eq!(
        sorted(lines(&out)),
        sorted(vec![component.clone(), bb.clone()])
    );
    let (ok, out, err) = crictl(&socket, &["ps", "-q", "--no-trunc"]);
    assert!(ok, "crictl ps: {err}");
    assert_eq!(
        sorted(lines(&out)),
        sorted(vec![component.clone(), bb_ctr.clone()])
    );
    let (ok, out, _) = crictl(&socket, &["ps", "--no-trunc"]);
    assert!(ok && out.contains(BUSYBOX) && out.contains(IMAGE), "{out}");

    // Both logs, through crictl (it reads the paths ContainerStatus names).
    wait_for_log(&socket, &bb_ctr, "hello-from-busybox");
    wait_for_log(&socket, &component, "vimana-example log line 1 of 2");

    // The images of both sides, one list.
    let (ok, out, err) = crictl(&socket, &["images"]);
    assert!(ok, "crictl images: {err}");
    for image in [
        "localhost/vimana-test/busybox",
        "localhost/vimana-test/pause",
        "example.com/vimana-example",
    ] {
        assert!(out.contains(image), "{image} in {out}");
    }

    // Exec of a downstream container: containerd runs it; streaming URLs
    // are containerd's own.
    let sync = node
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: bb_ctr.clone(),
            cmd: vec!["echo".into(), "exec-through-vimanad".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync of a downstream container")
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&sync.stdout),
        "exec-through-vimanad\n"
    );
    let exec = |c: &mut k8s_cri::v1::runtime_service_client::RuntimeServiceClient<_>| {
        let req = cri::ExecRequest {
            container_id: bb_ctr.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        };
        let mut c = c.clone();
        async move { c.exec(req).await.unwrap().into_inner().url }
    };
    let through = exec(&mut node.runtime).await;
    let direct = exec(&mut ctrd.client().await).await;
    let origin = |u: &str| u.rsplit_once('/').unwrap().0.to_owned();
    assert_eq!(origin(&through), origin(&direct), "{through} vs {direct}");

    // Stopped and removed, both, through crictl.
    for (pod, ctr) in [(&component, &component), (&bb, &bb_ctr)] {
        let (ok, _, err) = crictl(&socket, &["stop", "--timeout", "5", ctr]);
        assert!(ok, "crictl stop {ctr}: {err}");
        let (ok, _, err) = crictl(&socket, &["rm", ctr]);
        assert!(ok, "crictl rm {ctr}: {err}");
        let (ok, _, err) = crictl(&socket, &["stopp", pod]);
        assert!(ok, "crictl stopp {pod}: {err}");
        let (ok, _, err) = crictl(&socket, &["rmp", pod]);
        assert!(ok, "crictl rmp {pod}: {err}");
    }
    let (ok, out, err) = crictl(&socket, &["pods", "-q"]);
    assert!(ok && out.trim().is_empty(), "no pods left: {out}{err}");
    let left = ctrd
        .client()
        .await
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(
        left.is_empty(),
        "containerd has no containers left: {left:?}"
    );
}

#[tokio::test]
async fn mixed_lists_apply_filters_on_each_side_and_images_are_one_service() {
    if !prerequisites(&[]) {
        return;
    }
    let ctrd = Containerd::start();
    let mut node = node_with(&ctrd, &[]).await;
    let comp = node.run_pod("comp", A).await;
    let (bb1, bb1_ctr) = busybox_pod(&mut node, &ctrd, "bb1", "one").await;
    let (bb2, _) = busybox_pod(&mut node, &ctrd, "bb2", "two").await;
    node.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: bb2.clone(),
        })
        .await
        .unwrap();

    let all = pod_ids(&mut node, None).await;
    assert_eq!(all, sorted(vec![comp.clone(), bb1.clone(), bb2.clone()]));
    let by_id = |id: &str| cri::PodSandboxFilter {
        id: id.to_owned(),
        ..Default::default()
    };
    assert_eq!(
        pod_ids(&mut node, Some(by_id(&comp))).await,
        [comp.as_str()]
    );
    assert_eq!(pod_ids(&mut node, Some(by_id(&bb1))).await, [bb1.as_str()]);
    let ready = cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxReady as i32,
        }),
        ..Default::default()
    };
    assert_eq!(
        pod_ids(&mut node, Some(ready)).await,
        sorted(vec![comp.clone(), bb1.clone()]),
        "the state filter applies on both sides"
    );
    let labelled = |app: &str| cri::PodSandboxFilter {
        label_selector: [("app".to_owned(), app.to_owned())].into(),
        ..Default::default()
    };
    assert_eq!(
        pod_ids(&mut node, Some(labelled("bb2"))).await,
        [bb2.as_str()]
    );
    assert_eq!(
        pod_ids(&mut node, Some(labelled("comp"))).await,
        [comp.as_str()]
    );
    // A container filter naming a downstream pod asks only containerd.
    let in_bb1 = node
        .runtime
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: bb1.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(in_bb1.iter().map(|c| &c.id).collect::<Vec<_>>(), [&bb1_ctr]);

    // Images: both stores in one list, by ID.
    let images = node.list_images().await;
    for name in [IMAGE, BUSYBOX, PAUSE] {
        assert_eq!(
            images
                .iter()
                .filter(|i| i.repo_tags.iter().any(|t| t == name))
                .count(),
            1,
            "{name} once in {images:?}"
        );
    }
    let busybox = node
        .image_status(BUSYBOX)
        .await
        .expect("ImageStatus answers for containerd's image");
    assert!(busybox.id.starts_with("sha256:"));
    assert!(node.image_status(IMAGE).await.is_some());
    // The kubelet's GC cannot remove an image a container still uses.
    let refused = node
        .images
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: busybox.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains(&bb1_ctr) || refused.message().contains("in use"),
        "{refused:?}"
    );
    assert!(node.image_status(BUSYBOX).await.is_some(), "still there");
    let fs = node
        .images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!fs.image_filesystems.is_empty(), "{fs:?}");
    // A pull for a downstream pod goes to containerd (which cannot reach a
    // registry here: its own error says so).
    let pull = node
        .images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: "127.0.0.1:1/absent:1".into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: Some(ctrd.pod_config("bb1")),
        })
        .await
        .unwrap_err();
    assert!(
        pull.message().contains("failed to pull and unpack image"),
        "containerd's own error: {pull:?}"
    );

    // Once no container uses it, the image goes from every side.
    for pod in [&bb1, &bb2] {
        node.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            })
            .await
            .unwrap();
        node.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            })
            .await
            .unwrap();
    }
    node.images
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: busybox.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage of an unused image");
    assert!(node.image_status(BUSYBOX).await.is_none());
    assert!(!ctrd.ctr(&["images", "ls", "-q"]).contains(BUSYBOX));
    assert!(
        node.image_status(IMAGE).await.is_some(),
        "vimanad's image stays"
    );
}

#[tokio::test]
async fn containerd_slow_killed_and_restarted_leaves_vimana_pods_serving() {
    if !prerequisites(&[]) {
        return;
    }
    let mut ctrd = Containerd::start();
    let mut node = node_with(&ctrd, &["--downstream-timeout", "1s"]).await;
    let comp = node.running_pod("comp", A).await;
    let (bb, bb_ctr) = busybox_pod(&mut node, &ctrd, "bb", "hi").await;
    let both = sorted(vec![comp.clone(), bb.clone()]);
    assert_eq!(pod_ids(&mut node, None).await, both);
    let unary = json!({ "path": "/vimana.example.v1.Echo/Unary",
        "messages_hex": [hex_of(&pb::EchoRequest { message: "during".into(), ..Default::default() })] });

    // Slow: containerd frozen. Lists answer within the deadline, with the
    // last good downstream answer; its own calls are UNAVAILABLE.
    let pid = ctrd.pid();
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_stopped(pid);
    let started = Instant::now();
    assert_eq!(
        pod_ids(&mut node, None).await,
        both,
        "the frozen side's pods stay listed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let slow = node.pod_status(&bb).await.unwrap_err();
    assert_eq!(slow.code(), Code::Unavailable, "{slow:?}");
    assert!(
        slow.message().contains("did not answer PodSandboxStatus"),
        "{slow:?}"
    );
    node.pod_status(&comp)
        .await
        .expect("vimana pods answer at once");
    unsafe { libc::kill(pid, libc::SIGCONT) };

    // Killed.
    ctrd.kill9();
    let r = &aioquic(&node, "example.com:443", json!([unary]), false)[0];
    assert_eq!(
        r["grpc_status"], 0,
        "a vimana pod serves HTTP/3 with containerd down: {r}"
    );
    assert_eq!(replies(r)[0].served_by, comp);
    node.pod_status(&comp)
        .await
        .expect("PodSandboxStatus of a vimana pod");
    assert_eq!(
        node.state(&comp).await,
        cri::ContainerState::ContainerRunning
    );
    assert_eq!(pod_ids(&mut node, None).await, both, "stale, not vanished");
    let socket = ctrd.socket().display().to_string();
    let down = node.pod_status(&bb).await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert!(
        down.message().contains("downstream") && down.message().contains(&socket),
        "{down:?}"
    );
    let refused = node
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(ctrd.pod_config("late")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains(&socket), "{refused:?}");
    let status = node
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let condition = |t: &str| status.conditions.iter().find(|c| c.r#type == t).cloned();
    assert!(condition("RuntimeReady").unwrap().status);
    assert!(condition("NetworkReady").unwrap().status);
    let d = condition("DownstreamRuntimeReady").expect("the downstream's condition");
    assert!(!d.status && d.reason == "DownstreamUnavailable", "{d:?}");
    assert!(
        node.log()
            .contains("merged lists serve its last good (stale) answers"),
        "the outage is logged: {}",
        node.log()
    );

    // Restarted: vimanad reconnects by itself; the pod kept running.
    ctrd.spawn();
    let deadline = Instant::now() + Duration::from_secs(15);
    let bb_status = loop {
        match node.pod_status(&bb).await {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < deadline, "after restart: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        bb_status.status.unwrap().state,
        cri::PodSandboxState::SandboxReady as i32
    );
    assert_eq!(
        node.state(&bb_ctr).await,
        cri::ContainerState::ContainerRunning
    );

    // vimanad restarting touches nothing of containerd's.
    node.kill9();
    node.restart().await;
    assert_eq!(pod_ids(&mut node, None).await, both);
    assert_eq!(
        node.state(&bb_ctr).await,
        cri::ContainerState::ContainerRunning
    );
    let direct = ctrd
        .client()
        .await
        .container_status(cri::ContainerStatusRequest {
            container_id: bb_ctr.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(direct.state, cri::ContainerState::ContainerRunning as i32);

    node.remove_running_pod(&comp).await;
    node.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: bb.clone(),
        })
        .await
        .unwrap();
    node.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: bb.clone(),
        })
        .await
        .unwrap();
    assert!(pod_ids(&mut node, None).await.is_empty());
}

#[tokio::test]
async fn without_a_downstream_other_handlers_are_refused_as_before() {
    let mut node = Node::start().await;
    let mut req = run_pod_request("other", A);
    req.runtime_handler = "runc".into();
    let refused = node.runtime.run_pod_sandbox(req).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("runc"), "{refused:?}");
}

/// Runs `tool` (critest or critest-vimana) against `socket` with `args`;
/// prints and returns (passed, summary), the log in /tmp/critest-downstream-NAME.txt.
fn critest(tool: &str, socket: &std::path::Path, name: &str, args: &[&str]) -> (usize, String) {
    let endpoint = format!("unix://{}", socket.display());
    let out = std::process::Command::new(containerd::tools_dir().join(tool))
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(args)
        .arg("-ginkgo.no-color")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    std::fs::write(format!("/tmp/critest-downstream-{name}.txt"), &text).unwrap();
    let summary = text
        .lines()
        .rfind(|l| l.contains("Passed") && l.contains("Failed"))
        .unwrap_or("no summary")
        .to_owned();
    let passed: usize = summary
        .split_whitespace()
        .take_while(|w| *w != "Passed")
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let ran = text
        .lines()
        .find(|l| l.starts_with("Ran "))
        .unwrap_or("")
        .to_owned();
    println!("{tool} {name}: {ran} — {summary}");
    (passed, summary)
}

/// critest-vimana (component pods, handler `vimana`) against vimanad with
/// and without a downstream: the component specs pass the same. Minutes
/// long: `cargo test --test downstream -- --ignored critest_vimana --nocapture`.
#[tokio::test]
#[ignore]
async fn critest_vimana_component_specs_pass_the_same_with_a_downstream() {
    if !prerequisites(&["critest-vimana"]) {
        return;
    }
    let registry = Registry::start();
    let image = format!("{}/vimana-example:1.0.0", registry.host);
    skopeo_copy(&example_image_tar(), &image, None);
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images.yaml");
    std::fs::write(
        &images,
        format!("defaultTestContainerImage: {image}\nwebServerTestImage: {image}\n"),
    )
    .unwrap();
    let images = images.display().to_string();
    let args = ["--runtime-handler", "vimana", "--test-images-file", &images];
    let alone = {
        let node = Node::start_with(&["--insecure-registry", &registry.host]).await;
        critest("critest-vimana", &node.socket(), "vimana-alone", &args).0
    };
    let ctrd = Containerd::start();
    let node = node_with(&ctrd, &["--insecure-registry", &registry.host]).await;
    let with = critest(
        "critest-vimana",
        &node.socket(),
        "vimana-with-downstream",
        &args,
    )
    .0;
    assert!(
        with >= alone,
        "with a downstream {with} passed, alone {alone}"
    );
}

/// The stock critest against containerd directly, then against vimanad
/// with the same (fresh) containerd as its downstream, on the same local
/// images (a plain-HTTP registry serving the busybox image as critest's
/// default test image; its other images cannot be fetched here, for either
/// run). Prints both summaries; vimanad must pass at least as many specs.
/// Minutes long: `cargo test --test downstream -- --ignored critest
/// --nocapture` (README records the table).
#[tokio::test]
#[ignore]
async fn critest_through_vimanad_scores_what_containerd_scores() {
    if !prerequisites(&["critest"]) {
        return;
    }
    let registry = Registry::start();
    let image = format!("{}/e2e-test-images/busybox:1.29-2", registry.host);
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("busybox.tar");
    containerd::busybox_image(&archive);
    skopeo_copy(&archive, &image, None);
    let images = work.path().join("images.yaml");
    std::fs::write(
        &images,
        format!(
            "defaultTestContainerImage: {image}\nwebServerTestImage: {}/e2e-test-images/httpd:2.4.39-4\n",
            registry.host
        ),
    )
    .unwrap();
    let images = images.display().to_string();
    let args = ["--test-images-file", images.as_str()];
    let direct = {
        let ctrd = Containerd::start_with_registry(Some(&registry.host));
        critest("critest", &ctrd.socket(), "containerd", &args).0
    };
    let ctrd = Containerd::start_with_registry(Some(&registry.host));
    let node = node_with(&ctrd, &["--insecure-registry", &registry.host]).await;
    let through = critest("critest", &node.socket(), "vimanad", &args).0;
    assert!(
        through >= direct,
        "critest through vimanad passed {through}, containerd directly {direct} (logs in /tmp/critest-downstream-*.txt)"
    );
}

#[tokio::test]
async fn default_handler_components_keeps_labelled_pods_on_default_with_vimanad() {
    if !prerequisites(&[]) {
        return;
    }
    let ctrd = Containerd::start();
    let mut node = node_with(&ctrd, &["--default-handler-components"]).await;
    let mut req = run_pod_request("comp", A);
    req.runtime_handler = String::new();
    req.config = Some(node.pod_config("comp", A));
    let comp = node
        .runtime
        .run_pod_sandbox(req)
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    assert!(comp.contains('#'), "a component: {comp}");
    node.create(&comp, "component", &[]).await.unwrap();
    node.start_container(&comp).await.unwrap();
    let (bb, _) = busybox_pod(&mut node, &ctrd, "bb", "plain").await;
    assert!(is_containerd_id(&bb));
    assert_eq!(
        pod_ids(&mut node, None).await,
        sorted(vec![comp.clone(), bb.clone()])
    );
    node.remove_running_pod(&comp).await;
}

/// The real, stock kubelet 1.28 (standalone, static pods; it sends its
/// socket path as `:authority`, which vimanad accepts) on vimanad's socket only, with
/// containerd downstream: a component static pod (labelled, on `""`, kept
/// by `--default-handler-components`) and an ordinary one run side by side.
/// Eviction and image GC are off: this shared machine's disk is often
/// nearly full, and the kubelet would evict the pods and remove the images.
#[tokio::test]
async fn the_kubelet_runs_a_component_and_an_ordinary_static_pod_side_by_side() {
    if !prerequisites(&["kubelet", "crictl"]) {
        return;
    }
    let ctrd = Containerd::start();
    let mut node = node_with(&ctrd, &["--default-handler-components"]).await;
    let work = tempfile::Builder::new()
        .prefix("kds")
        .tempdir_in("/tmp")
        .unwrap();
    let manifests = work.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let node_name = format!("kds-{}", std::process::id());
    std::fs::write(
        manifests.join("comp.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: comp\n  namespace: default\n  labels:\n    vimana.host/domain: example.com\n    vimana.host/service: {SERVICE}\n    vimana.host/version: 1.0.0\nspec:\n  containers:\n  - name: component\n    image: {IMAGE}\n    imagePullPolicy: Never\n    env:\n    - name: EXAMPLE_LOG_LINES\n      value: \"2\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        manifests.join("bb.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bb\n  namespace: default\nspec:\n  hostNetwork: true\n  containers:\n  - name: bb\n    image: {BUSYBOX}\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; echo kubelet-busybox; while true; do sleep 1; done\"]\n"
        ),
    )
    .unwrap();
    let endpoint = format!("unix://{}", node.socket().display());
    let config = work.path().join("kubelet.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPath: {}\ncontainerRuntimeEndpoint: {endpoint}\nimageServiceEndpoint: {endpoint}\ncgroupDriver: cgroupfs\ncgroupsPerQOS: false\nenforceNodeAllocatable: []\nfailSwapOn: false\nport: {}\nhealthzPort: {}\nreadOnlyPort: 0\nauthentication:\n  anonymous:\n    enabled: true\n  webhook:\n    enabled: false\nauthorization:\n  mode: AlwaysAllow\nfileCheckFrequency: 1s\nevictionHard:\n  memory.available: 1Mi\n  nodefs.available: 1Mi\n  imagefs.available: 1Mi\nimageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\n",
            manifests.display(),
            free_tcp_port(),
            free_tcp_port()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(work.path().join("kubelet.log")).unwrap();
    let kubelet = std::process::Command::new(containerd::tools_dir().join("kubelet"))
        .arg("--config")
        .arg(&config)
        .arg("--root-dir")
        .arg(work.path().join("root"))
        .args(["--hostname-override", &node_name, "--v", "2"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut kubelet = KubeletGuard {
        child: kubelet,
        work,
        node_name: node_name.clone(),
    };
    let work = kubelet.work.path().to_owned();
    let socket = node.socket();
    let deadline = Instant::now() + Duration::from_secs(120);
    let running = loop {
        let (_, out, _) = crictl(&socket, &["ps", "--state", "Running", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let names: Vec<(String, String)> = v["containers"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        (
                            c["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                            c["podSandboxId"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if names.iter().any(|(n, _)| n == "component") && names.iter().any(|(n, _)| n == "bb") {
            break names;
        }
        if Instant::now() > deadline || kubelet.child.try_wait().unwrap().is_some() {
            let text = std::fs::read_to_string(work.join("kubelet.log")).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            panic!(
                "the kubelet did not run both pods: {names:?}\n{}\nvimanad:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                node.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let pod_of = |name: &str| running.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert!(pod_of("component").contains('#'), "{running:?}");
    assert!(is_containerd_id(&pod_of("bb")), "{running:?}");
    // Both pods' logs, where the kubelet asked each runtime to write them.
    let (_, out, _) = crictl(&socket, &["ps", "--state", "Running", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let id_of = |name: &str| {
        v["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["metadata"]["name"] == name)
            .and_then(|c| c["id"].as_str())
            .unwrap_or_else(|| panic!("{name} in {out}"))
            .to_owned()
    };
    wait_for_log(&socket, &id_of("bb"), "kubelet-busybox");
    wait_for_log(&socket, &id_of("component"), "log line 1 of 2");
    let _ = kubelet.child.kill();
    let _ = kubelet.child.wait();
    // Its pods, through vimanad (the guard removes the rest).
    let pods = node
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    for pod in pods {
        let (_, out, _) = crictl(&socket, &["ps", "-a", "-q", "--pod", &pod.id]);
        for c in lines(&out) {
            let _ = crictl(&socket, &["stop", "--timeout", "5", &c]);
            let _ = crictl(&socket, &["rm", &c]);
        }
        let _ = crictl(&socket, &["stopp", &pod.id]);
        let _ = crictl(&socket, &["rmp", &pod.id]);
    }
}

/// Kills the kubelet and removes what it made: its root-dir bind mount,
/// its processes, its pods' log directories.
struct KubeletGuard {
    child: std::process::Child,
    work: tempfile::TempDir,
    node_name: String,
}

impl Drop for KubeletGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_processes_mentioning(self.work.path());
        let root = self.work.path().display().to_string();
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
        for dir in ["/var/log/pods", "/var/log/containers"] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .contains(&self.node_name)
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// A plain HTTP/1.1 GET of the operator's endpoint; the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// The value of `vimanad_cri_calls_total` for `method` and `code`.
fn cri_calls(exposition: &str, method: &str, code: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with("vimanad_cri_calls_total{"))
        .find(|l| {
            l.contains(&format!("method=\"{method}\"")) && l.contains(&format!("code=\"{code}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The IDs of a `crictl stats -o json` / `statsp -o json` answer.
fn stats_ids(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let mut ids: Vec<String> = v["stats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["attributes"]["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// Stats, streaming, metrics and the image filesystems with both sides:
/// ListContainerStats / ListPodSandboxStats merge both (filters on each),
/// the stock crictl's `stats`/`statsp` show both; Exec/Attach/PortForward
/// of the downstream pod answer containerd's own streaming URLs (and the
/// stock crictl execs through them), the component's answer vimanad's own
/// streaming server; the metrics layer counts the forwarded calls;
/// ImageFsInfo counts both stores.
#[tokio::test]
async fn stats_streams_metrics_and_image_filesystems_cover_both_sides() {
    if !prerequisites(&["crictl"]) {
        return;
    }
    let ctrd = Containerd::start();
    let stream_port = free_tcp_port();
    let stream = format!("127.0.0.1:{stream_port}");
    let mut node = node_with(&ctrd, &["--stream-address", &stream]).await;
    let comp = node.running_pod("comp", A).await;
    let (bb, bb_ctr) = busybox_pod(&mut node, &ctrd, "bb", "stats").await;
    let socket = node.socket();

    // Stats of both sides in one list; a filter naming one side's ID
    // asks only that side.
    let container_stats = |filter: Option<cri::ContainerStatsFilter>| {
        let mut c = node.runtime.clone();
        async move {
            let mut ids: Vec<String> = c
                .list_container_stats(cri::ListContainerStatsRequest { filter })
                .await
                .expect("ListContainerStats")
                .into_inner()
                .stats
                .into_iter()
                .filter_map(|s| s.attributes.map(|a| a.id))
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        container_stats(None).await,
        sorted(vec![comp.clone(), bb_ctr.clone()])
    );
    let in_pod = |pod: &str| cri::ContainerStatsFilter {
        pod_sandbox_id: pod.to_owned(),
        ..Default::default()
    };
    assert_eq!(
        container_stats(Some(in_pod(&bb))).await,
        std::slice::from_ref(&bb_ctr)
    );
    assert_eq!(
        container_stats(Some(in_pod(&comp))).await,
        std::slice::from_ref(&comp)
    );
    let pod_stats = node
        .runtime
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await
        .expect("ListPodSandboxStats")
        .into_inner()
        .stats;
    let mut ids: Vec<String> = pod_stats
        .iter()
        .filter_map(|s| s.attributes.as_ref().map(|a| a.id.clone()))
        .collect();
    ids.sort();
    assert_eq!(ids, sorted(vec![comp.clone(), bb.clone()]));
    for id in [&comp, &bb_ctr] {
        let one = node
            .runtime
            .container_stats(cri::ContainerStatsRequest {
                container_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStats {id}: {e:?}"))
            .into_inner()
            .stats
            .unwrap();
        assert_eq!(&one.attributes.unwrap().id, id);
    }
    let busybox_cpu = node
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: bb_ctr.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .memory
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |w| w.value);
    assert!(busybox_cpu > 0, "containerd's own numbers come through");
    let (ok, out, err) = crictl(&socket, &["stats", "-o", "json"]);
    assert!(ok, "crictl stats: {err}");
    assert_eq!(stats_ids(&out), sorted(vec![comp.clone(), bb_ctr.clone()]));
    let (ok, out, err) = crictl(&socket, &["statsp", "-o", "json"]);
    assert!(ok, "crictl statsp: {err}");
    assert_eq!(stats_ids(&out), sorted(vec![comp.clone(), bb.clone()]));

    // Streaming: the downstream's URLs unchanged, the component's on
    // vimanad's own streaming server.
    let mut direct = ctrd.client().await;
    let exec = |id: &str| cri::ExecRequest {
        container_id: id.to_owned(),
        cmd: vec!["true".into()],
        stdout: true,
        ..Default::default()
    };
    let attach = |id: &str| cri::AttachRequest {
        container_id: id.to_owned(),
        stdout: true,
        ..Default::default()
    };
    let forward = |id: &str| cri::PortForwardRequest {
        pod_sandbox_id: id.to_owned(),
        port: vec![80],
    };
    let origin = |u: &str| u.rsplitn(3, '/').nth(2).unwrap_or("").to_owned();
    let theirs = direct.exec(exec(&bb_ctr)).await.unwrap().into_inner().url;
    let through = node.runtime.exec(exec(&bb_ctr)).await.unwrap().into_inner();
    assert_eq!(
        origin(&through.url),
        origin(&theirs),
        "{through:?} {theirs}"
    );
    assert!(!through.url.contains(&stream), "{through:?}");
    let theirs = direct
        .attach(attach(&bb_ctr))
        .await
        .unwrap()
        .into_inner()
        .url;
    let through = node
        .runtime
        .attach(attach(&bb_ctr))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        origin(&through.url),
        origin(&theirs),
        "{through:?} {theirs}"
    );
    let theirs = direct
        .port_forward(forward(&bb))
        .await
        .unwrap()
        .into_inner()
        .url;
    let through = node
        .runtime
        .port_forward(forward(&bb))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        origin(&through.url),
        origin(&theirs),
        "{through:?} {theirs}"
    );
    for url in [
        node.runtime
            .exec(exec(&comp))
            .await
            .unwrap()
            .into_inner()
            .url,
        node.runtime
            .attach(attach(&comp))
            .await
            .unwrap()
            .into_inner()
            .url,
        node.runtime
            .port_forward(forward(&comp))
            .await
            .unwrap()
            .into_inner()
            .url,
    ] {
        assert!(
            url.starts_with(&format!("http://{stream}/")),
            "a component's stream is vimanad's own: {url}"
        );
    }
    // The stock crictl streams an exec of the busybox container through
    // containerd's URL (not ExecSync: no -s).
    let (ok, out, err) = crictl(
        &socket,
        &["exec", &bb_ctr, "echo", "streamed-by-containerd"],
    );
    assert!(ok && out.contains("streamed-by-containerd"), "{out}{err}");

    // The metrics layer counts calls of both sides.
    let metrics = http_get(node.metrics_addr(), "/metrics");
    assert!(
        cri_calls(&metrics, "ListContainerStats", "OK") >= 3.0,
        "{metrics}"
    );
    assert!(
        cri_calls(&metrics, "ContainerStats", "OK") >= 3.0,
        "{metrics}"
    );
    assert!(cri_calls(&metrics, "Exec", "OK") >= 3.0, "{metrics}");
    assert!(
        cri_calls(&metrics, "RunPodSandbox", "OK") >= 2.0,
        "{metrics}"
    );

    // ImageFsInfo: both stores. vimanad's entry first; containerd's usage
    // added to it when they share a device, else listed after it.
    let mut direct_images = k8s_cri::v1::image_service_client::ImageServiceClient::new(
        uds_channel(ctrd.socket()).await,
    );
    // containerd sums its snapshots every 10 s: wait for a first count.
    let deadline = Instant::now() + Duration::from_secs(30);
    let theirs = loop {
        let theirs = direct_images
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .image_filesystems;
        let counted = theirs
            .iter()
            .any(|f| f.used_bytes.as_ref().is_some_and(|u| u.value > 0));
        if counted || Instant::now() > deadline {
            break theirs;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let merged = node
        .images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .image_filesystems;
    let mount = |f: &cri::FilesystemUsage| f.fs_id.clone().unwrap_or_default().mountpoint;
    let used = |f: &cri::FilesystemUsage| f.used_bytes.unwrap_or_default().value;
    let first = &merged[0];
    assert!(
        mount(first).starts_with(&node.state_dir().display().to_string()),
        "vimanad's store first: {merged:?}"
    );
    let own = node.image_status(IMAGE).await.unwrap().size;
    let dev = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).map(|m| m.dev()).ok()
    };
    let their_used: u64 = theirs.iter().map(used).sum();
    assert!(
        their_used > 0,
        "containerd's store holds busybox and pause: {theirs:?}"
    );
    if theirs.iter().all(|t| dev(&mount(t)) == dev(&mount(first))) {
        assert_eq!(merged.len(), 1, "one disk, one entry: {merged:?}");
        assert!(
            used(first) >= own + their_used,
            "both stores counted: {merged:?} vs containerd's {theirs:?}"
        );
    } else {
        for t in &theirs {
            assert!(merged.iter().any(|m| mount(m) == mount(t)), "{merged:?}");
        }
    }

    let _ = crictl(&socket, &["stop", "--timeout", "2", &bb_ctr]);
    let _ = crictl(&socket, &["rmp", "-f", &bb]);
    node.remove_running_pod(&comp).await;
}
