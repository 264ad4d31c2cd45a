//! Section C: from a pod's publication to routable on each shard, by
//! probe connections calling its domain while it is started.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::client::{Event, Worker};
use crate::common::{Node, SERVICE};
use crate::measure::median;
use crate::node::{log_time_us, now_unix_us};
use crate::report::{cell, table};
use crate::request::Request;

/// The trial under way (its index and request), if any.
type CurrentTrial = Arc<Mutex<Option<(usize, Arc<Request>)>>>;

/// One probe call's outcome.
struct Probe {
    trial: usize,
    started: Instant,
    finished: Instant,
    ok: bool,
}

/// A probe thread: one connection keeping `streams` calls in flight to
/// the current trial's domain while there is one.
fn probe_worker(
    mut w: Worker,
    slot: usize,
    streams: usize,
    current: CurrentTrial,
    stop: Arc<AtomicBool>,
) -> Vec<Probe> {
    let mut out = Vec::new();
    let mut events = Vec::new();
    while !stop.load(Ordering::Acquire) && w.open > 0 {
        let trial = current.lock().unwrap().clone();
        if let Some((trial, request)) = trial {
            while w.in_flight(slot) < streams {
                if w.call_tagged(slot, &request, trial).is_err() {
                    break;
                }
                // Each call in a datagram of its own, sent at once.
                w.step(Instant::now(), &mut events);
            }
        }
        let wait = match w.in_flight(slot) {
            0 => Duration::from_micros(200),
            _ => Duration::from_millis(50),
        };
        w.step(Instant::now() + wait, &mut events);
        for event in events.drain(..) {
            if let Event::Done {
                tag,
                started,
                finished,
                result,
                ..
            } = event
            {
                out.push(Probe {
                    trial: tag,
                    started,
                    finished,
                    ok: result.is_ok(),
                });
            }
        }
    }
    w.close_all();
    out
}

/// The shard that accepted the connection from `port`, per vimanad's
/// debug log (`connection accepted shard=N peer=127.0.0.1:PORT`).
fn shard_of(log: &str, port: u16) -> Option<usize> {
    let peer = format!("peer=127.0.0.1:{port}");
    log.lines()
        .filter(|l| l.contains("connection accepted") && l.split_whitespace().any(|w| w == peer))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("shard="))
                .and_then(|s| s.parse().ok())
        })
}

pub async fn section(args: &Args, trouble: &mut Vec<String>) {
    const SHARDS: usize = 2;
    let log = "info,vimanad::shard::endpoint=debug,vimanad::control::runtime=debug";
    let mut node = Node::start_configured(SHARDS, log, &[]).await;
    // Probe connections until every shard has enough.
    let mut probes: Vec<(usize, Worker, usize)> = Vec::new();
    let mut counts = [0usize; SHARDS];
    for _ in 0..64 {
        if counts.iter().all(|&c| c >= args.probes_per_shard) {
            break;
        }
        let mut w = Worker::new(node.listen, Duration::from_secs(120));
        let slot = w.connect();
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut ready = false;
        while !ready && w.open > 0 && Instant::now() < deadline {
            w.step(deadline, &mut events);
            ready = events.iter().any(|e| matches!(e, Event::Ready { .. }));
            events.clear();
        }
        assert!(ready, "a probe connection could not be set up");
        std::thread::sleep(Duration::from_millis(5)); // the log line lands
        let Some(shard) = shard_of(&node.log(), w.local.port()) else {
            panic!("no `connection accepted ... shard=N peer=...` debug line for the probe");
        };
        if counts[shard] < args.probes_per_shard {
            counts[shard] += 1;
            probes.push((shard, w, slot));
        } else {
            w.close_all();
        }
    }
    eprintln!("capacity: publication: probe connections per shard {counts:?}");
    let current = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = probes
        .into_iter()
        .map(|(shard, w, slot)| {
            let (current, stop) = (current.clone(), stop.clone());
            let streams = args.probe_streams;
            (
                shard,
                std::thread::spawn(move || probe_worker(w, slot, streams, current, stop)),
            )
        })
        .collect();
    // Per trial: (instant of publication, instant StartContainer returned).
    let mut trials = Vec::new();
    for trial in 0..args.trials {
        let domain = format!("fresh{trial}.example.com");
        let pod = node
            .run_pod(&format!("fresh{trial}"), (&domain, SERVICE, "1.0.0"))
            .await;
        node.create(&pod, "component", &[]).await.unwrap();
        *current.lock().unwrap() = Some((trial, Request::new(&domain)));
        tokio::time::sleep(Duration::from_millis(20)).await; // refused calls pile up
        node.start_container(&pod).await.unwrap();
        let (returned, returned_unix) = (Instant::now(), now_unix_us());
        tokio::time::sleep(Duration::from_millis(30)).await;
        *current.lock().unwrap() = None;
        let log = node.log();
        let published_unix = log
            .lines()
            .filter(|l| l.contains("pod pool published"))
            .filter_map(log_time_us)
            .rfind(|&t| t <= returned_unix)
            .expect("a `pod pool published` debug line");
        let published =
            returned - Duration::from_micros((returned_unix - published_unix).max(0) as u64);
        trials.push((published, returned));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Release);
    let results: Vec<(usize, Vec<Probe>)> = threads
        .into_iter()
        .map(|(shard, t)| (shard, t.join().expect("a probe panicked")))
        .collect();
    let us = |a: Instant, b: Instant| match a >= b {
        true => (a - b).as_secs_f64() * 1e6,
        false => -(b - a).as_secs_f64() * 1e6,
    };
    let mut rows = Vec::new();
    let max = |v: &[f64]| {
        v.iter()
            .copied()
            .filter(|x| !x.is_nan())
            .fold(f64::NAN, f64::max)
    };
    let both = |v: &[f64]| format!("{} / {}", cell(median(v.to_vec()), 0), cell(max(v), 0));
    for shard in 0..SHARDS {
        // µs after publication, per trial: last refused call sent, first
        // successful call sent, first successful call completed; the first
        // success after StartContainer returned; later calls' latency.
        let mut per: [Vec<f64>; 4] = Default::default();
        let mut steady = Vec::new();
        for (trial, &(published, returned)) in trials.iter().enumerate() {
            let mine: Vec<&Probe> = results
                .iter()
                .filter(|(s, _)| *s == shard)
                .flat_map(|(_, p)| p.iter())
                .filter(|p| p.trial == trial)
                .collect();
            let last_refused = mine.iter().filter(|p| !p.ok).map(|p| p.started).max();
            let first_sent = mine.iter().filter(|p| p.ok).map(|p| p.started).min();
            let first_done = mine.iter().filter(|p| p.ok).map(|p| p.finished).min();
            let (Some(first_sent), Some(first_done)) = (first_sent, first_done) else {
                trouble.push(format!(
                    "publication: shard {shard} never served trial {trial}"
                ));
                continue;
            };
            per[0].push(last_refused.map_or(f64::NAN, |t| us(t, published)));
            per[1].push(us(first_sent, published));
            per[2].push(us(first_done, published));
            per[3].push(us(first_done, returned));
            // Calls sent after the first success: the pod routed and connected.
            steady.extend(
                mine.iter()
                    .filter(|p| p.ok && p.started > first_done)
                    .map(|p| (p.finished - p.started).as_secs_f64() * 1e6),
            );
        }
        rows.push(vec![
            format!("shard {shard}"),
            per[2].len().to_string(),
            both(&per[0]),
            both(&per[1]),
            both(&per[2]),
            cell(median(per[3].clone()), 0),
            cell(median(steady), 0),
        ]);
    }
    let returned_after: Vec<f64> = trials.iter().map(|&(p, r)| us(r, p)).collect();
    println!(
        "\n### C2. From publication to routable on each shard ({SHARDS} shards, {} new pods, \
         {} probe connections per shard with {} calls in flight each; µs after the \
         `pod pool published` log line; StartContainer returned a median {} µs after it)\n",
        args.trials,
        args.probes_per_shard,
        args.probe_streams,
        cell(median(returned_after), 0)
    );
    table(
        args.markdown,
        &[
            "shard",
            "trials",
            "last refused call sent (lower bound), median / max µs",
            "first successful call sent, median / max µs",
            "first successful call completed, median / max µs",
            "first success after StartContainer returned, median µs",
            "baseline: later calls to the pod, median latency µs",
        ],
        &rows,
    );
}
