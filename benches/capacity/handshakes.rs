//! Section A: new QUIC handshakes per second on one shard, plain and with
//! Retry forced, beside the same calls on kept connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::client::{Event, Worker};
use crate::load;
use crate::measure::{cpu_over, median, Sample, Tally, Window, DRAIN};
use crate::node::{check, Target, DOMAIN};
use crate::report::{cell, table};
use crate::request::Request;
use crate::system::{client_cores, pin_to};

/// One client thread of the handshake window: `concurrency` connections in
/// flight, each a handshake, one call and a close, then the next.
fn handshake_worker(
    peer: SocketAddr,
    concurrency: usize,
    request: Arc<Request>,
    window: Window,
    core: Option<core_affinity::CoreId>,
) -> Tally {
    pin_to(core);
    let mut w = Worker::new(peer, Duration::from_secs(10));
    let mut tally = Tally::default();
    let mut events = Vec::new();
    for _ in 0..concurrency {
        w.connect();
    }
    let deadline = window.end + DRAIN;
    loop {
        let now = Instant::now();
        if w.open == 0 && now >= window.end {
            break;
        }
        if now >= deadline {
            tally.stalled += w.open as u64;
            for _ in 0..w.open {
                tally.error("stalled: connection unfinished".into());
            }
            w.close_all();
            break;
        }
        w.step(deadline.min(now + Duration::from_millis(100)), &mut events);
        for event in events.drain(..) {
            let reopen = match event {
                Event::Ready { slot } => {
                    if let Err(e) = w.call(slot, &request) {
                        tally.error(e);
                        w.close(slot);
                        true
                    } else {
                        false
                    }
                }
                Event::Done {
                    slot,
                    opened,
                    finished,
                    result,
                    ..
                } => {
                    match result {
                        Ok(()) => tally.done(opened, finished, &window),
                        Err(e) => tally.error(e),
                    }
                    w.close(slot);
                    true
                }
                Event::Closed { why, .. } => {
                    tally.error(why);
                    true
                }
            };
            if reopen && Instant::now() < window.end {
                w.connect();
            }
        }
    }
    tally
}

fn handshake_window(
    target: &Target,
    args: &Args,
    warmup: Duration,
    cores: &[core_affinity::CoreId],
) -> Sample {
    let request = Request::new(DOMAIN);
    let window = Window::after(warmup, args.duration);
    let workers = args.hs_workers;
    let threads: Vec<_> = (0..workers)
        .map(|i| {
            let share =
                args.hs_concurrency / workers + usize::from(i < args.hs_concurrency % workers);
            let (peer, request) = (target.node.listen, request.clone());
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            std::thread::spawn(move || handshake_worker(peer, share.max(1), request, window, core))
        })
        .collect();
    let cpu = cpu_over(&window, target.pid());
    let mut tally = Tally::default();
    for t in threads {
        tally.merge(t.join().expect("a handshake thread panicked"));
    }
    Sample::of(tally, args.duration, cpu)
}

pub async fn section(args: &Args, trouble: &mut Vec<String>) {
    let cores = client_cores(1, args.pin);
    let mut plain = Target::start(1, "info", &[]).await;
    let mut retry = Target::start(1, "info", &["--retry-above", "0"]).await;
    eprintln!(
        "capacity: handshakes: vimanad pids {} (plain), {} (--retry-above 0); \
         {} client threads, {} in flight, client cores {:?}",
        plain.pid(),
        retry.pid(),
        args.hs_workers,
        args.hs_concurrency,
        cores.iter().map(|c| c.id).collect::<Vec<_>>()
    );
    plain.set_running(false);
    retry.set_running(false);
    let warmup = (args.duration / 10).clamp(Duration::from_millis(100), Duration::from_millis(500));
    let kinds = [
        "new connection per call",
        "new connection per call, Retry forced",
        "baseline: calls on kept connections",
    ];
    let mut samples: Vec<Vec<Sample>> = (0..3).map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        let mut order = [0, 1, 2];
        order.rotate_left(round % 3);
        for kind in order {
            let target = if kind == 1 { &mut retry } else { &mut plain };
            target.set_running(true);
            let sample = match kind {
                2 => {
                    let per = args.hs_concurrency / args.hs_workers;
                    load::window(
                        target,
                        args.hs_workers,
                        per.max(1),
                        1,
                        args.duration,
                        warmup,
                        &cores,
                    )
                }
                _ => handshake_window(target, args, warmup, &cores),
            };
            target.set_running(false);
            eprintln!(
                "capacity: round {round} {:<40} {:>8.0}/s  p50 {:>6.0} µs  p99 {:>6.0} µs  \
                 vimanad {:>6.1} µs/op (shard {:>6.1}, {:.2} cores)  \
                 client {:>6.1} µs/op ({:.2} cores)",
                kinds[kind],
                sample.per_s,
                sample.p50_us,
                sample.p99_us,
                sample.vimanad_us,
                sample.shard_us,
                sample.shard_cores,
                sample.client_us,
                sample.client_cores
            );
            check(trouble, kinds[kind], target, &sample.tally);
            samples[kind].push(sample);
        }
    }
    let base_us = median(samples[2].iter().map(|s| s.shard_us).collect());
    let rows: Vec<Vec<String>> = samples
        .iter()
        .enumerate()
        .map(|(kind, s)| {
            let m = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
            let cpu = m(|s| s.shard_us);
            let net = match kind {
                2 => "—".to_owned(),
                _ => cell(cpu - base_us, 1),
            };
            vec![
                kinds[kind].to_owned(),
                cell(m(|s| s.per_s), 0),
                cell(m(|s| s.p50_us), 0),
                cell(m(|s| s.p99_us), 0),
                cell(m(|s| s.vimanad_us), 1),
                cell(cpu, 1),
                cell(m(|s| s.shard_cores), 2),
                cell(1e6 / cpu, 0),
                net,
                format!(
                    "{} / {:.2}",
                    cell(m(|s| s.client_us), 1),
                    m(|s| s.client_cores)
                ),
                s.iter()
                    .map(|s| s.tally.error_count())
                    .sum::<u64>()
                    .to_string(),
            ]
        })
        .collect();
    println!(
        "\n### A. Handshakes per second, 1 shard ({} in flight over {} client threads, \
         {:?} windows, {} rounds, medians)\n",
        args.hs_concurrency, args.hs_workers, args.duration, args.rounds
    );
    table(
        args.markdown,
        &[
            "each call on",
            "connections (calls)/s",
            "p50 µs",
            "p99 µs",
            "vimanad CPU µs per connection (call)",
            "of which the shard thread",
            "shard cores busy",
            "per fully busy shard /s (10⁶ / shard µs)",
            "shard µs beyond a kept-connection call",
            "client CPU µs / cores",
            "errors",
        ],
        &rows,
    );
    plain.remove().await;
    retry.remove().await;
}
