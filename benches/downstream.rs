//! CRI call latency through vimanad to its downstream containerd, against
//! the same calls to containerd directly, in one run.
//!
//! Starts Debian's containerd on private paths and the real `vimanad serve`
//! with `--downstream-cri` (the integration tests' harnesses,
//! tests/common), runs one component pod and one ordinary (busybox image,
//! node network) pod, then for each call alternates one call through
//! vimanad's socket and one straight to containerd's, N times: Version
//! (vimanad answers it itself), ListPodSandbox (merged: vimanad lists its
//! own pod and asks containerd), PodSandboxStatus of the containerd pod
//! (forwarded by ID). PodSandboxStatus of the component pod shows vimanad's
//! own answer. Prints median and p99 (nearest rank) per call and the added
//! latency; asserts nothing.
//!
//! ```text
//! cargo bench --bench downstream -- [--calls N | --quick] [--markdown]
//! ```
//! `--calls N` (default 2000); `--quick` is 50, for CI. Needs containerd,
//! runc, gcc and busybox-static (scripts/setup.sh), and
//! target/example/vimana-example.oci.tar.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;
#[path = "../tests/common/containerd.rs"]
mod containerd;

use std::time::{Duration, Instant};

use common::*;
use containerd::{prerequisites, Containerd};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

const COMPONENT: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Row {
    call: &'static str,
    through: Vec<Duration>,
    direct: Option<Vec<Duration>>,
}

async fn time<F, Fut>(n: usize, mut f: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        v.push(t.elapsed());
    }
    v
}

/// One call through vimanad and one direct, alternating, `n` times each.
async fn pair(
    n: usize,
    vimana: &mut RuntimeServiceClient<Channel>,
    direct: &mut RuntimeServiceClient<Channel>,
    call: &'static str,
    pod: &str,
) -> Row {
    let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        for (client, out) in [(&mut *vimana, &mut a), (&mut *direct, &mut b)] {
            let t = Instant::now();
            one(client, call, pod).await;
            out.push(t.elapsed());
        }
    }
    Row {
        call,
        through: a,
        direct: Some(b),
    }
}

async fn one(client: &mut RuntimeServiceClient<Channel>, call: &str, pod: &str) {
    match call {
        "Version" => {
            client
                .version(cri::VersionRequest::default())
                .await
                .unwrap();
        }
        "ListPodSandbox" => {
            client
                .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
                .unwrap();
        }
        _ => {
            client
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: pod.to_owned(),
                    verbose: false,
                })
                .await
                .unwrap();
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut calls = 2000;
    let mut markdown = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--calls" => calls = it.next().and_then(|v| v.parse().ok()).expect("--calls N"),
            "--quick" => calls = 50,
            "--markdown" => markdown = true,
            _ => {} // cargo's --bench
        }
    }
    if !prerequisites(&[]) {
        return;
    }
    let ctrd = Containerd::start();
    let uri = ctrd.uri();
    let mut node = Node::start_configured(1, "warn", &["--downstream-cri", uri.as_str()]).await;
    let component = node.running_pod("comp", COMPONENT).await;
    let ordinary = node
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(ctrd.pod_config("bb")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let mut direct = ctrd.client().await;
    let mut vimana = node.runtime.clone();
    // Warm both connections.
    for call in ["Version", "ListPodSandbox", "PodSandboxStatus"] {
        pair(20, &mut vimana, &mut direct, call, &ordinary).await;
    }
    let mut rows = Vec::new();
    for call in ["Version", "ListPodSandbox", "PodSandboxStatus"] {
        rows.push(pair(calls, &mut vimana, &mut direct, call, &ordinary).await);
    }
    let own = time(calls, || {
        let mut c = vimana.clone();
        let id = component.clone();
        async move { one(&mut c, "PodSandboxStatus", &id).await }
    })
    .await;
    rows.push(Row {
        call: "PodSandboxStatus (component pod)",
        through: own,
        direct: None,
    });

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    println!(
        "CRI latency, {calls} calls each, vimanad (1 shard) → containerd 1.6 vs containerd direct, µs (load {load}):"
    );
    if markdown {
        println!("| call | through vimanad p50 | p99 | containerd direct p50 | p99 | added p50 |");
        println!("|---|---:|---:|---:|---:|---:|");
    }
    for mut row in rows {
        row.through.sort();
        let (t50, t99) = (
            percentile(&row.through, 50.0),
            percentile(&row.through, 99.0),
        );
        let (d50, d99) = match row.direct.as_mut() {
            Some(d) => {
                d.sort();
                (Some(percentile(d, 50.0)), Some(percentile(d, 99.0)))
            }
            None => (None, None),
        };
        let f = |d: Option<Duration>| d.map_or("—".to_owned(), |d| format!("{:.0}", us(d)));
        let added = d50.map_or("—".to_owned(), |d| format!("{:+.0}", us(t50) - us(d)));
        if markdown {
            println!(
                "| {} | {:.0} | {:.0} | {} | {} | {added} |",
                row.call,
                us(t50),
                us(t99),
                f(d50),
                f(d99)
            );
        } else {
            println!(
                "{:<34} through p50 {:>7.0} p99 {:>7.0}   direct p50 {:>7} p99 {:>7}   added p50 {added}",
                row.call,
                us(t50),
                us(t99),
                f(d50),
                f(d99)
            );
        }
    }
    node.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: ordinary.clone(),
        })
        .await
        .unwrap();
    node.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: ordinary,
        })
        .await
        .unwrap();
    node.remove_running_pod(&component).await;
    // SIGTERM, as an operator stops it (and a profiler wrapping vimanad
    // then writes its output; see BENCHMARKS.md).
    let status = node.stop_gracefully();
    assert!(status.success(), "vimanad exited with {status}");
}
