//! Time from `vimanad serve` starting to serving its first HTTP/3 call,
//! with 0, 100 and 1000 pods in its state (issue 5).
//!
//! Each node holds one running example component plus N-1 pods that were
//! run but not started (RunPodSandbox only), so recovery reads N records
//! and re-adopts one live container. The runtime is stopped with SIGTERM
//! and started again; the clock runs from the spawn to the first
//! `vimanad call` that the component answers (for 0 pods: the first call
//! the data plane answers, UNIMPLEMENTED). Poll resolution is one
//! `vimanad call` process (a few ms). Run as root:
//!
//!     cargo bench --bench startup [-- --quick] [--repeats N] [--markdown]

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use common::*;

const V1: (&str, &str, &str) = ("example.com", SERVICE, "1.0.0");
const UNARY: &str = "/vimana.example.v1.Echo/Unary";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let markdown = args.iter().any(|a| a == "--markdown");
    let repeats: usize = args
        .iter()
        .position(|a| a == "--repeats")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 });
    let sizes: &[usize] = if quick { &[0, 10] } else { &[0, 100, 1000] };

    let mut rows = Vec::new();
    for &pods in sizes {
        let mut node = Node::start().await;
        if pods > 0 {
            node.running_pod("p0", V1).await;
            for i in 1..pods {
                node.run_pod(&format!("p{i}"), V1).await;
            }
        }
        let expected = if pods > 0 { 0 } else { 12 };
        let (mut cri_ready, mut serving) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            assert!(node.stop_gracefully().success());
            let start = Instant::now();
            node.restart().await;
            cri_ready.push(start.elapsed().as_secs_f64() * 1e3);
            loop {
                let (code, _, _) = vimanad_call(
                    &node,
                    "example.com",
                    UNARY,
                    &["--text", "x", "--timeout", "2s"],
                );
                if code == expected {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "never served (last code {code})"
                );
            }
            serving.push(start.elapsed().as_secs_f64() * 1e3);
        }
        rows.push((pods, median(cri_ready), median(serving)));
    }
    let baseline = rows[0].2;
    if markdown {
        println!("| pods in state | CRI socket ready, median ms | first HTTP/3 call served, median ms | vs 0 pods |");
        println!("|---:|---:|---:|---:|");
        for (pods, cri, serve) in &rows {
            println!(
                "| {pods} | {cri:.1} | {serve:.1} | {:.2}x |",
                serve / baseline
            );
        }
    } else {
        for (pods, cri, serve) in &rows {
            println!("{pods:>5} pods: CRI ready {cri:8.1} ms, first call served {serve:8.1} ms ({:.2}x of 0 pods)", serve / baseline);
        }
    }
    println!("({repeats} restarts each; medians)");
}
