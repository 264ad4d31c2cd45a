//! Status-call latency while mutating calls run: does a PodSandboxStatus or
//! a ListContainers wait for another pod's database commit?
//!
//! Starts the real `vimanad serve` with the integration tests' harness
//! (tests/common), runs one pod with its component (the pod the status calls
//! ask about), then times N PodSandboxStatus + ListContainers pairs on one
//! CRI connection, first idle, then while a second connection loops
//! RunPodSandbox → CreateContainer → StopPodSandbox → RemovePodSandbox on
//! fresh pods (each a state-database commit, none starting a process).
//! Prints median, p90, p99 and max (nearest rank) of both phases and the
//! mutating calls per second; asserts nothing.
//!
//! ```text
//! cargo bench --bench cri_status -- [--calls N | --quick] [--markdown]
//! ```
//! `--calls N` (default 2000); `--quick` is 200, for CI. Needs
//! target/example/vimana-example.oci.tar (scripts/build-example-image.sh).
//! `VIMANAD_BIN` selects the binary (compare two builds with it).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

const COMPONENT: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");

fn args() -> (usize, bool) {
    let (mut calls, mut markdown) = (2000, false);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--calls" => calls = it.next().and_then(|v| v.parse().ok()).expect("--calls N"),
            "--quick" => calls = 200,
            "--markdown" => markdown = true,
            "--bench" => {}
            other => panic!("unknown argument {other:?}: see the doc of benches/cri_status.rs"),
        }
    }
    (calls, markdown)
}

struct Stats(Vec<f64>);

impl Stats {
    fn of(samples: &[Duration]) -> Stats {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Stats(ms)
    }
    fn pct(&self, p: f64) -> f64 {
        let rank = (p / 100.0 * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
}

/// `calls` status pairs; each sample is one PodSandboxStatus or one
/// ListContainers.
async fn probe(
    client: &mut RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
    calls: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut status, mut list) = (Vec::new(), Vec::new());
    for _ in 0..calls {
        let t = Instant::now();
        client
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.to_owned(),
                verbose: false,
            })
            .await
            .unwrap();
        status.push(t.elapsed());
        let t = Instant::now();
        client
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap();
        list.push(t.elapsed());
    }
    (status, list)
}

/// Mutating calls on fresh pods until `stop`; counts calls.
async fn churn(
    mut client: RuntimeServiceClient<tonic::transport::Channel>,
    log_dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let name = format!("churn-{n}");
        let mut req = run_pod_request(&name, COMPONENT);
        let mut config = req.config.take().unwrap();
        config.log_directory = log_dir.join(&name).display().to_string();
        req.config = Some(config.clone());
        let id = client
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        client
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: id.clone(),
                config: Some(container_config("c", &[])),
                sandbox_config: Some(config),
            })
            .await
            .unwrap();
        client
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .unwrap();
        client
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap();
        count.fetch_add(4, Ordering::Relaxed);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (calls, markdown) = args();
    let mut node = Node::start_configured(1, "warn", &[]).await;
    let pod = node.run_pod("probed", COMPONENT).await;
    let container = node.create(&pod, "c", &[]).await.unwrap();
    node.start_container(&container).await.unwrap();

    let mut probe_client = RuntimeServiceClient::new(uds_channel(node.socket()).await);
    let _ = probe(&mut probe_client, &pod, 50).await; // warm-up
    let (idle_status, idle_list) = probe(&mut probe_client, &pod, calls).await;

    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let churner = tokio::spawn(churn(
        RuntimeServiceClient::new(uds_channel(node.socket()).await),
        node.log_dir(),
        Arc::clone(&stop),
        Arc::clone(&count),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let before = count.load(Ordering::Relaxed);
    let (busy_status, busy_list) = probe(&mut probe_client, &pod, calls).await;
    let rate = (count.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    churner.await.unwrap();

    let rows = [
        ("PodSandboxStatus, idle", Stats::of(&idle_status)),
        ("ListContainers, idle", Stats::of(&idle_list)),
        (
            "PodSandboxStatus, during mutations",
            Stats::of(&busy_status),
        ),
        ("ListContainers, during mutations", Stats::of(&busy_list)),
    ];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    if markdown {
        println!("| {calls} calls each | median ms | p90 ms | p99 ms | max ms |");
        println!("|---|---:|---:|---:|---:|");
    } else {
        println!("\nstatus latency, {calls} calls each; milliseconds");
    }
    for (name, s) in &rows {
        let [m, p90, p99, max] = [50.0, 90.0, 99.0, 100.0].map(|p| s.pct(p));
        if markdown {
            println!("| {name} | {m:.3} | {p90:.3} | {p99:.3} | {max:.3} |");
        } else {
            println!("{name:<38} {m:>8.3} {p90:>8.3} {p99:>8.3} {max:>8.3}");
        }
    }
    println!("\nmutating calls during the probe: {rate:.0}/s (1-minute load average {load})");
}
