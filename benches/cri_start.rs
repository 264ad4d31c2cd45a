//! StartContainer latency: how long a pod takes from RunPodSandbox to a
//! component answering `grpc.health.v1` SERVING, against a plain process.
//!
//! Starts the real `vimanad serve` with the integration tests' harness
//! (tests/common: as root, in a private root under /tmp, with the example
//! image imported; here on one data-plane shard, logging warnings), warms
//! up with one pod, then starts N pods one after another (RunPodSandbox →
//! CreateContainer → StartContainer; StartContainer returns once the
//! component serves), keeping them all running. Alternating with each pod it starts the same component binary as
//! a plain child process and times it from spawn to SERVING, probing the way
//! the runtime does: the floor the runtime's overhead (shim, namespaces,
//! overlay mount, cgroups, CRI round-trips) sits on. Prints median, p90, p99
//! and max (nearest rank) of both and the ratio of medians; asserts nothing.
//!
//! ```text
//! scripts/bench-cri.sh --pods 100 --markdown   # builds the image first
//! cargo bench --bench cri_start -- [--pods N | --quick] [--gap-ms N] [--markdown]
//! ```
//! `--pods N` (or env `BENCH_PODS`, default 100); `--quick` is 5 pods, for CI;
//! `--gap-ms N` pauses N ms (untimed) before each pod, as a kubelet's
//! sporadic starts would: back-to-back starts share kernel work (the RCU
//! grace period of a cgroup v1 attach) that spaced ones each pay in full;
//! `--markdown` prints the table for BENCHMARKS.md. Needs
//! target/example/vimana-example.oci.tar (scripts/build-example-image.sh),
//! or the image `VIMANA_EXAMPLE_IMAGE` names.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1 as cri;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const COMPONENT: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");

struct Args {
    pods: usize,
    gap: Duration,
    markdown: bool,
}

fn args() -> Args {
    let number = |name: &str, v: Option<String>| -> u64 {
        let v = v.unwrap_or_else(|| panic!("{name} takes a number"));
        v.parse().expect(name)
    };
    let env = std::env::var("BENCH_PODS").ok();
    let mut pods = env.map(|v| number("BENCH_PODS", Some(v)));
    let (mut gap, mut markdown) = (0, false);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--pods" => pods = Some(number("--pods", it.next())),
            "--quick" => pods = Some(5),
            "--gap-ms" => gap = number("--gap-ms", it.next()),
            "--markdown" => markdown = true,
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other:?}: see the doc of benches/cri_start.rs"),
        }
    }
    let pods = pods.unwrap_or(100).max(1) as usize;
    let gap = Duration::from_millis(gap);
    Args {
        pods,
        gap,
        markdown,
    }
}

/// The node under test (the integration tests' harness) and the baseline's
/// processes. Dropping it kills those, then the node: vimanad, the shims
/// (and so their containers), and removes its cgroups.
struct Bench {
    node: Node,
    plain: Vec<Child>,
}

impl Bench {
    async fn start() -> Bench {
        // The data plane (HTTP/3) is not measured: one shard; vimanad logs
        // only warnings.
        let node = Node::start_configured(1, "warn", &[]).await;
        let plain = Vec::new();
        Bench { node, plain }
    }

    /// RunPodSandbox, CreateContainer, StartContainer: the pod ID and the
    /// time of each call.
    async fn start_pod(&mut self, name: &str) -> (String, [Duration; 3]) {
        let sandbox = sandbox_config(&self.node, name);
        let t0 = Instant::now();
        let run = cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: "vimana".to_owned(),
        };
        let run = self
            .node
            .runtime
            .run_pod_sandbox(run)
            .await
            .expect("RunPodSandbox");
        let id = run.into_inner().pod_sandbox_id;
        let t1 = Instant::now();
        let create = cri::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(container()),
            sandbox_config: Some(sandbox),
        };
        let create = self.node.runtime.create_container(create).await;
        let container_id = create.expect("CreateContainer").into_inner().container_id;
        let t2 = Instant::now();
        let start = cri::StartContainerRequest { container_id };
        self.node
            .runtime
            .start_container(start)
            .await
            .expect("StartContainer");
        let t3 = Instant::now();
        (id, [t1 - t0, t2 - t1, t3 - t2])
    }

    /// The baseline: `binary` as a plain child process serving on `socket`,
    /// timed from spawn until Health/Check answers SERVING. Probes like the
    /// runtime's readiness check: connect, then HTTP/2 and Check, backing
    /// off from 250 µs, doubling up to 20 ms.
    async fn start_plain(&mut self, binary: &Path, socket: &Path) -> Duration {
        let t0 = Instant::now();
        let child = Command::new(binary)
            .env_clear()
            .env("VIMANA_GRPC_ADDRESS", format!("unix:{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        self.plain.push(child);
        let mut backoff = Duration::from_micros(250);
        while !serving(socket).await {
            let child = self.plain.last_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{} exited during start: {status}", binary.display());
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "never served");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(20));
        }
        t0.elapsed()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for child in &mut self.plain {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The harness's pod and container configs, less the labels and annotations
/// its tests look for: these requests carry none.
fn sandbox_config(node: &Node, name: &str) -> cri::PodSandboxConfig {
    let mut config = node.pod_config(name, COMPONENT);
    config.annotations.clear();
    config
}

fn container() -> cri::ContainerConfig {
    let mut config = container_config("component", &[]);
    config.labels.clear();
    config.annotations.clear();
    config
}

/// A gRPC channel over a Unix socket (with the readiness probe's timeouts).
async fn probe_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    uds_connect(endpoint, path).await
}

/// One readiness probe: a cheap connect first, then Health/Check.
async fn serving(socket: &Path) -> bool {
    if UnixStream::connect(socket).await.is_err() {
        return false;
    }
    let Ok(channel) = probe_channel(socket).await else {
        return false;
    };
    let mut health = HealthClient::new(channel);
    let check = health.check(HealthCheckRequest::default()).await;
    matches!(check, Ok(r) if r.get_ref().status() == ServingStatus::Serving)
}

/// The component binary: the one unpacked from the image (identical to what
/// the containers run), else the one scripts/build-example.sh builds.
fn component_binary(state: &Path) -> PathBuf {
    let rootfs = std::fs::read_dir(state.join("images/rootfs"))
        .into_iter()
        .flatten();
    let mut unpacked = rootfs.flatten().map(|d| d.path().join("component"));
    let built = "target/x86_64-unknown-linux-gnu/release/vimana-example";
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(built);
    unpacked.find(|p| p.is_file()).unwrap_or(built)
}

/// Sorted samples in milliseconds.
struct Stats(Vec<f64>);

impl Stats {
    fn of(samples: impl IntoIterator<Item = Duration>) -> Stats {
        let mut ms: Vec<f64> = samples.into_iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Stats(ms)
    }
    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> f64 {
        let rank = (p / 100.0 * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
}

fn report(title: &str, rows: &[(&str, Stats)], markdown: bool) {
    let ratio = rows[0].1.pct(50.0) / rows[1].1.pct(50.0);
    let cells = |s: &Stats| [50.0, 90.0, 99.0, 100.0].map(|p| s.pct(p));
    if markdown {
        println!("| {title} | median ms | p90 ms | p99 ms | max ms |");
        println!("|---|---:|---:|---:|---:|");
        for (name, stats) in rows {
            let [m, p90, p99, max] = cells(stats);
            println!("| {name} | {m:.2} | {p90:.2} | {p99:.2} | {max:.2} |");
        }
        println!("\nRatio of medians (vimanad / baseline): **{ratio:.2}×**");
    } else {
        println!("\n{title}; milliseconds");
        let head = ["median", "p90", "p99", "max"];
        println!(
            "{:<38} {:>8} {:>8} {:>8} {:>8}",
            "", head[0], head[1], head[2], head[3]
        );
        for (name, stats) in rows {
            let [m, p90, p99, max] = cells(stats);
            println!("{name:<38} {m:>8.2} {p90:>8.2} {p99:>8.2} {max:>8.2}");
        }
        println!("ratio of medians (vimanad / baseline): {ratio:.2}x");
    }
}

/// The 1-minute load average: other work on the machine skews the figures.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_owned()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = args();
    let mut bench = Bench::start().await;
    let plain_dir = bench.node.root.path().join("plain");
    std::fs::create_dir(&plain_dir).unwrap();

    // Warm-up: unpacks the image's rootfs, fills the page cache.
    let (warm, _) = bench.start_pod("warmup").await;
    bench.node.remove_running_pod(&warm).await;
    let binary = component_binary(&bench.node.state_dir());
    let warm = plain_dir.join("warmup.sock");
    bench.start_plain(&binary, &warm).await;
    let mut warm = bench.plain.pop().unwrap();
    let _ = (warm.kill(), warm.wait());
    eprintln!("cri_start: baseline is {}", binary.display());

    let load_before = loadavg();
    let (mut pods, mut calls, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.pods {
        tokio::time::sleep(args.gap).await;
        // Alternate which goes first, so drift and noise hit both alike.
        for ours in [i % 2 == 0, i % 2 != 0] {
            if ours {
                let (id, t) = bench.start_pod(&format!("bench-{i}")).await;
                pods.push(id);
                calls.push(t);
            } else {
                let socket = plain_dir.join(format!("{i}.sock"));
                floor.push(bench.start_plain(&binary, &socket).await);
            }
        }
    }
    let load_after = loadavg();

    let t0 = Instant::now();
    for id in &pods {
        bench.node.remove_running_pod(id).await;
    }
    eprintln!("cri_start: teardown took {:.2?}", t0.elapsed());
    drop(bench);

    let call = |k: usize| Stats::of(calls.iter().map(|t| t[k]));
    let total = Stats::of(calls.iter().map(|t| t.iter().sum()));
    let rows = [
        ("vimanad: run + create + start (CRI)", total),
        ("baseline: plain process to SERVING", Stats::of(floor)),
        ("  of which RunPodSandbox", call(0)),
        ("  of which CreateContainer", call(1)),
        ("  of which StartContainer", call(2)),
    ];
    let spacing = match args.gap {
        Duration::ZERO => "back to back".to_owned(),
        gap => format!("{gap:?} apart"),
    };
    let title = format!("{} pods, {spacing}, all kept running", args.pods);
    report(&title, &rows, args.markdown);
    println!("(1-minute load average {load_before} before, {load_after} after)");
}
