//! Section B1: vimanad's memory per idle QUIC connection, on one shard,
//! beside the bench's own (quiche client) memory per connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::client::{Event, Worker};
use crate::measure::Tally;
use crate::node::{check, Target, DOMAIN};
use crate::report::{mib, table};
use crate::request::Request;
use crate::system::{status_kib, udp_drops};

/// Holds `count` idle connections over `workers` threads; `stage` steps
/// them: 0 connect, 1 one call on each, 2 close. Each thread adds to
/// `progress` once per connection set up, then once per call answered.
fn idle_worker(
    peer: SocketAddr,
    count: usize,
    stage: Arc<AtomicUsize>,
    progress: Arc<AtomicUsize>,
    request: Arc<Request>,
) -> Tally {
    // Handshakes (then calls) in flight per thread: more overflow vimanad's
    // socket buffer, and a lost Initial costs a 1 s retransmission timeout.
    const PENDING: usize = 8;
    let mut w = Worker::new(peer, Duration::from_secs(600));
    let mut tally = Tally::default();
    let mut events = Vec::new();
    let (mut started, mut ready, mut called, mut pending) = (0, Vec::new(), 0, 0);
    loop {
        match stage.load(Ordering::Acquire) {
            0 => {
                while started < count && pending < PENDING {
                    w.connect();
                    started += 1;
                    pending += 1;
                }
            }
            1 => {
                while called < ready.len() && pending < PENDING {
                    if let Err(e) = w.call(ready[called], &request) {
                        tally.error(e);
                    } else {
                        pending += 1;
                    }
                    called += 1;
                }
            }
            _ => {
                // Paced: a burst of CONNECTION_CLOSEs would overflow
                // vimanad's socket buffer, and a lost one leaves the
                // connection open until its idle timeout.
                if ready.is_empty() {
                    break;
                }
                for slot in ready.drain(..ready.len().min(2)) {
                    w.close(slot);
                }
            }
        }
        w.step(Instant::now() + Duration::from_millis(1), &mut events);
        for event in events.drain(..) {
            match event {
                Event::Ready { slot } => {
                    ready.push(slot);
                    pending -= 1;
                    progress.fetch_add(1, Ordering::AcqRel);
                }
                Event::Done { result, .. } => {
                    pending -= 1;
                    match result {
                        Ok(()) => {
                            tally.ok += 1;
                            progress.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => tally.error(e),
                    }
                }
                Event::Closed { slot, lost, why } => {
                    tally.error(why);
                    pending -= if ready.contains(&slot) { lost } else { 1 };
                    ready.retain(|&s| s != slot);
                }
            }
        }
    }
    w.close_all();
    tally
}

/// `n` connections with one call each, closed as soon as it is answered.
fn warm_up(peer: SocketAddr, request: &Arc<Request>, n: usize) -> Tally {
    let mut w = Worker::new(peer, Duration::from_secs(10));
    let mut tally = Tally::default();
    let mut events = Vec::new();
    for _ in 0..n {
        w.connect();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.open > 0 && Instant::now() < deadline {
        w.step(deadline, &mut events);
        for event in events.drain(..) {
            match event {
                Event::Ready { slot } => {
                    if let Err(e) = w.call(slot, request) {
                        tally.error(e);
                    }
                }
                Event::Done { slot, result, .. } => {
                    if let Err(e) = result {
                        tally.error(e);
                    }
                    w.close(slot);
                }
                Event::Closed { why, .. } => tally.error(why),
            }
        }
    }
    w.close_all();
    tally
}

fn wait_progress(progress: &AtomicUsize, goal: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    while progress.load(Ordering::Acquire) < goal && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    progress.load(Ordering::Acquire)
}

/// B1: vimanad's RSS with no connections, then idle ones open, then after
/// a call on each, closed, and opened again.
pub async fn section(args: &Args, trouble: &mut Vec<String>) {
    let n = args.idle_connections;
    let limit = (2 * n + 100).to_string();
    let target = Target::start(
        1,
        "info",
        &[
            "--max-connections",
            &limit,
            "--retry-above",
            &limit,
            "--idle-timeout",
            "600s",
        ],
    )
    .await;
    let pid = target.pid().to_string();
    let peer = target.node.listen;
    eprintln!("capacity: memory: vimanad pid {pid}");
    if let Some(secs) = std::env::var("CAPACITY_HOLD_S")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // Time to attach a profiler (heaptrack -p PID) before any connection.
        std::thread::sleep(Duration::from_secs(secs));
    }
    let request = Request::new(DOMAIN);
    let settle = args.settle();
    // Warm-up: a few connections with a call each, closed again, so the
    // 0-connection figure is a shard that has served (allocator arenas,
    // the upstream HTTP/2 connection to the pod).
    let warm = warm_up(peer, &request, 50);
    check(trouble, "memory warm-up", &target, &warm);
    std::thread::sleep(settle + Duration::from_millis(500)); // closing connections drain
    let drops = std::cell::Cell::new(udp_drops());
    let sample = |label: &str, conns: usize| {
        let dropped = udp_drops() - drops.replace(udp_drops());
        (
            label.to_owned(),
            conns,
            status_kib(&pid, "VmRSS"),
            status_kib(&pid, "RssAnon"),
            status_kib("self", "VmRSS"),
            dropped,
        )
    };
    let mut rows = vec![sample("after a warm-up of 50 connections, all closed", 0)];
    let spawn_idle = || {
        let workers = 4usize;
        let stage = Arc::new(AtomicUsize::new(0));
        let progress = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..workers)
            .map(|i| {
                let count = n / workers + usize::from(i < n % workers);
                let (stage, progress) = (stage.clone(), progress.clone());
                let request = request.clone();
                std::thread::spawn(move || idle_worker(peer, count, stage, progress, request))
            })
            .collect();
        (stage, progress, threads)
    };
    let (stage, progress, threads) = spawn_idle();
    let t = Instant::now();
    let set_up = wait_progress(&progress, n, Duration::from_secs(120));
    eprintln!(
        "capacity: memory: {set_up} of {n} connections set up in {:.1?}",
        t.elapsed()
    );
    std::thread::sleep(settle);
    rows.push(sample("HTTP/3 set up (SETTINGS exchanged), idle", set_up));
    stage.store(1, Ordering::Release);
    let answered = wait_progress(&progress, 2 * n, Duration::from_secs(120)) - set_up;
    eprintln!("capacity: memory: {answered} calls answered");
    std::thread::sleep(settle);
    rows.push(sample("after one call on each, idle", set_up));
    stage.store(2, Ordering::Release);
    let mut tally = Tally::default();
    for t in threads {
        tally.merge(t.join().expect("an idle-connection thread panicked"));
    }
    std::thread::sleep(settle + Duration::from_millis(500));
    rows.push(sample("all closed again", 0));
    // As many again: flat RSS says the freed memory is reused.
    let (stage, progress, threads) = spawn_idle();
    let again = wait_progress(&progress, n, Duration::from_secs(120));
    std::thread::sleep(settle);
    rows.push(sample(
        "opened again after closing (HTTP/3 set up), idle",
        again,
    ));
    stage.store(2, Ordering::Release);
    for t in threads {
        tally.merge(t.join().expect("an idle-connection thread panicked"));
    }
    check(trouble, "idle connections", &target, &tally);
    let (_, _, base_rss, base_anon, base_self, _) = rows[0].clone();
    let per_conn = |rss: u64, base: u64, conns: usize| match conns {
        0 => "—".to_owned(),
        c => format!("{:.1}", (rss as f64 - base as f64) / c as f64),
    };
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(label, conns, rss, anon, own, dropped)| {
            vec![
                label.clone(),
                conns.to_string(),
                mib(*rss),
                mib(*anon),
                per_conn(*rss, base_rss, *conns),
                per_conn(*anon, base_anon, *conns),
                per_conn(*own, base_self, *conns),
                dropped.to_string(),
            ]
        })
        .collect();
    println!("\n### B1. vimanad's memory per idle QUIC connection (1 shard)\n");
    table(
        args.markdown,
        &[
            "state",
            "connections",
            "vimanad VmRSS MiB",
            "RssAnon MiB",
            "vimanad KiB / connection (VmRSS)",
            "(RssAnon)",
            "bench's quiche client KiB / connection",
            "UDP datagrams dropped (machine-wide) since the row before",
        ],
        &table_rows,
    );
    target.remove().await;
}
