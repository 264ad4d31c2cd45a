//! Section B2: vimanad's memory holding running pods (2 shards), idle and
//! after one call to each, and what each pod costs outside vimanad (its
//! shim and its component).

use std::time::{Duration, Instant};

use crate::args::Args;
use crate::client::{Event, Worker};
use crate::common::{Node, SERVICE};
use crate::measure::{median, Tally};
use crate::report::{cell, mib, table};
use crate::request::Request;
use crate::system::{kib_field, pss_kib, status_kib};

/// vimanad's RSS with 0 and `--pods` running pods, then after one call to
/// each; the shims' and components' own RSS and PSS.
pub async fn section(args: &Args, trouble: &mut Vec<String>) {
    let settle = args.settle();
    let mut node = Node::start_configured(2, "info", &[]).await;
    let pid = node.process.id().to_string();
    std::thread::sleep(settle);
    let before = (status_kib(&pid, "VmRSS"), status_kib(&pid, "RssAnon"));
    let t = Instant::now();
    let mut pods = Vec::new();
    for i in 0..args.pods {
        let domain = format!("pod{i}.example.com");
        pods.push(
            node.running_pod(&format!("mem{i}"), (&domain, SERVICE, "1.0.0"))
                .await,
        );
    }
    eprintln!(
        "capacity: memory: {} pods started in {:.1?}",
        args.pods,
        t.elapsed()
    );
    std::thread::sleep(settle);
    let with_pods = (status_kib(&pid, "VmRSS"), status_kib(&pid, "RssAnon"));
    // The shims (cmdline `vimanad shim ...` under this node's root) and
    // their children (the components).
    let root = node.root.path().to_string_lossy().into_owned();
    let (mut shims, mut components) = (Vec::new(), Vec::new());
    let procs: Vec<(u32, u32, String)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let ppid = kib_field(
                &std::fs::read_to_string(e.path().join("status")).ok()?,
                "PPid",
            );
            Some((
                pid,
                ppid as u32,
                String::from_utf8_lossy(&cmd).replace('\0', " "),
            ))
        })
        .collect();
    for (pid, _, cmd) in &procs {
        if cmd.contains(" shim ") && cmd.contains(&root) {
            shims.push(*pid);
        }
    }
    for (pid, ppid, _) in &procs {
        if shims.contains(ppid) {
            components.push(*pid);
        }
    }
    let per = |pids: &[u32], f: &dyn Fn(&str) -> u64| {
        median(pids.iter().map(|p| f(&p.to_string()) as f64).collect())
    };
    // One call to each pod, through one shard.
    let mut w = Worker::new(node.listen, Duration::from_secs(30));
    let mut events = Vec::new();
    let slot = w.connect();
    let mut tally = Tally::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = 0;
    let mut ready = false;
    while next <= args.pods && Instant::now() < deadline && w.open > 0 {
        w.step(deadline, &mut events);
        for event in events.drain(..) {
            match event {
                Event::Ready { .. } => ready = true,
                Event::Done { result, .. } => {
                    match result {
                        Ok(()) => tally.ok += 1,
                        Err(e) => tally.error(e),
                    }
                    ready = true;
                }
                Event::Closed { why, .. } => tally.error(why),
            }
        }
        if ready {
            ready = false;
            next += 1;
            if next <= args.pods {
                let _ = w.call(slot, &Request::new(&format!("pod{}.example.com", next - 1)));
            }
        }
    }
    w.close_all();
    std::thread::sleep(settle);
    let called = (status_kib(&pid, "VmRSS"), status_kib(&pid, "RssAnon"));
    if tally.ok as usize != args.pods {
        tally.error(format!("{} of {} pods answered", tally.ok, args.pods));
    }
    let rows = vec![
        vec!["0 pods".into(), mib(before.0), mib(before.1), "—".into()],
        vec![
            format!("{} running pods, idle", args.pods),
            mib(with_pods.0),
            mib(with_pods.1),
            format!(
                "{:.0}",
                (with_pods.0 as f64 - before.0 as f64) / args.pods as f64
            ),
        ],
        vec![
            format!(
                "{} running pods, after one call to each (one shard)",
                args.pods
            ),
            mib(called.0),
            mib(called.1),
            format!(
                "{:.0}",
                (called.0 as f64 - before.0 as f64) / args.pods as f64
            ),
        ],
    ];
    println!("\n### B2. vimanad's memory holding running pods (2 shards)\n");
    table(
        args.markdown,
        &[
            "node",
            "vimanad VmRSS MiB",
            "RssAnon MiB",
            "KiB per pod (VmRSS)",
        ],
        &rows,
    );
    let rows = vec![
        vec![
            format!("`vimanad shim` ({} found)", shims.len()),
            cell(per(&shims, &|p| status_kib(p, "VmRSS")), 0),
            cell(per(&shims, &|p| status_kib(p, "RssAnon")), 0),
            cell(per(&shims, &|p| pss_kib(p)), 0),
        ],
        vec![
            format!("example component ({} found)", components.len()),
            cell(per(&components, &|p| status_kib(p, "VmRSS")), 0),
            cell(per(&components, &|p| status_kib(p, "RssAnon")), 0),
            cell(per(&components, &|p| pss_kib(p)), 0),
        ],
    ];
    table(
        args.markdown,
        &[
            "per pod, not in vimanad's RSS",
            "VmRSS KiB (median)",
            "RssAnon KiB",
            "PSS KiB",
        ],
        &rows,
    );
    if tally.error_count() > 0 {
        trouble.push(format!("calls to the pods: {:?}", tally.errors));
    }
    let _ = pods;
    drop(node);
}
