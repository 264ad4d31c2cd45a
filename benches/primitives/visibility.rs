//! The **publication → visible** table: the delay from
//! `Publisher::publish` to every other core's spinning `Reader::current()`
//! seeing the new generation, against an `AtomicU64` store, with the
//! reader threads pinned one per core.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use vimanad::pool::{Publisher, Snapshot};

use crate::args::Config;
use crate::fixtures::pool_of;
use crate::report::fmt_ns;
use crate::timing::REPEATS;

/// Publication to visible: how long after the control thread publishes
/// does every reader (one per other core, pinned, spinning on
/// `Reader::current()` as a busy shard would call it) see the new
/// generation? Beside the floor: a plain `AtomicU64` store seen by the
/// same spinning loads. The writer (pinned to the first core) publishes
/// every 200 µs; the two alternate in 5 blocks. Reported per publication
/// as the latest reader's delay, from the call's return (the commit point)
/// and from its start (which includes `Snapshot::build`); `current()`
/// returning includes reading the cell and dropping the reader's previous
/// snapshot, as on a shard's first call after a publication; a third row
/// keeps the old snapshots alive, leaving out that free.
pub fn visibility(config: &Config) {
    let quick = config.budget < Duration::from_millis(500);
    let per_block = if quick { 10 } else { 400 };
    let gap = Duration::from_micros(200);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let readers = cores.len().saturating_sub(1).max(1);
    let mut rows = Vec::new();
    for n in [10, 1_000] {
        let (pool, _) = pool_of(n);
        let publisher = Publisher::new();
        publisher.publish(&pool);
        let floor = std::sync::atomic::AtomicU64::new(0);
        let (mut test, mut kept, mut base) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            test.extend(visibility_block(
                &cores,
                readers,
                per_block,
                gap,
                || publisher.publish(&pool),
                || {
                    let mut r = publisher.reader();
                    move || r.current().generation()
                },
            ));
            // The same, but the reader keeps every snapshot it saw, so the
            // previous one is not freed inside `current()`: what is left
            // is reading the cell.
            kept.extend(visibility_block(
                &cores,
                readers,
                per_block,
                gap,
                || publisher.publish(&pool),
                || {
                    let mut r = publisher.reader();
                    let mut seen: Vec<Arc<Snapshot>> = Vec::with_capacity(per_block + 1);
                    move || {
                        let s = r.current();
                        let g = s.generation();
                        if seen.last().is_none_or(|k| k.generation() != g) {
                            seen.push(Arc::clone(s));
                        }
                        g
                    }
                },
            ));
            base.extend(visibility_block(
                &cores,
                readers,
                per_block,
                gap,
                || {
                    let g = floor.load(std::sync::atomic::Ordering::Relaxed) + 1;
                    floor.store(g, std::sync::atomic::Ordering::Release);
                    g
                },
                || {
                    let floor = &floor;
                    move || floor.load(std::sync::atomic::Ordering::Acquire)
                },
            ));
        }
        rows.push((format!("Publisher::publish, {n} components"), test));
        rows.push((
            format!("Publisher::publish, {n} components, reader keeps old snapshots (no free)"),
            kept,
        ));
        rows.push((
            format!("baseline: AtomicU64::store ({n}-component row's floor)"),
            base,
        ));
    }
    let header = [
        "publication",
        "publications",
        "call, median ns",
        "return → seen by every reader: median / p90 / p99 / max ns",
        "start → seen by every reader: median / p90 / p99 / max ns",
    ];
    let pct = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        (at(50.0), at(90.0), at(99.0), v[v.len() - 1])
    };
    let four = |(a, b, c, d): (f64, f64, f64, f64)| {
        format!(
            "{} / {} / {} / {}",
            fmt_ns(a),
            fmt_ns(b),
            fmt_ns(c),
            fmt_ns(d)
        )
    };
    let cells: Vec<[String; 5]> = rows
        .into_iter()
        .map(|(label, samples)| {
            let call = pct(samples.iter().map(|s| s.0).collect()).0;
            [
                label,
                samples.len().to_string(),
                fmt_ns(call),
                four(pct(samples.iter().map(|s| s.1).collect())),
                four(pct(samples.iter().map(|s| s.2).collect())),
            ]
        })
        .collect();
    println!(
        "\nPublication → visible on every reader ({readers} reader thread(s), pinned; signed: \
         a reader may see the generation before the call returns)"
    );
    if config.markdown {
        println!("\n| {} |\n|---|---:|---:|---:|---:|", header.join(" | "));
        for c in &cells {
            println!("| {} |", c.join(" | "));
        }
    } else {
        for c in &cells {
            println!(
                "{:<52} {:>6} {:>10}   {:>34}   {:>34}",
                c[0], c[1], c[2], c[3], c[4]
            );
        }
        println!("(columns: {})", header[1..].join("; "));
    }
}

/// One block: `readers` threads spin on `watch()` (pinned to cores 1..),
/// the calling thread (pinned to core 0) runs `publish()` `count` times,
/// `gap` apart. Per publication: (call ns, return → seen by the latest
/// reader ns, start → seen ns).
fn visibility_block<P, W, R>(
    cores: &[core_affinity::CoreId],
    readers: usize,
    count: usize,
    gap: Duration,
    mut publish: P,
    make_watch: W,
) -> Vec<(f64, f64, f64)>
where
    P: FnMut() -> u64,
    W: Fn() -> R + Sync,
    R: FnMut() -> u64,
{
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let barrier = Barrier::new(readers + 1);
    let stop = AtomicBool::new(false);
    // Each reader's newest generation seen: the publisher stops them only
    // once all have seen the last one (a descheduled reader catches up).
    let newest: Vec<AtomicU64> = (0..readers).map(|_| AtomicU64::new(0)).collect();
    std::thread::scope(|s| {
        let spinners: Vec<_> = (0..readers)
            .map(|i| {
                let (barrier, stop, make_watch) = (&barrier, &stop, &make_watch);
                let newest = &newest[i];
                s.spawn(move || {
                    if let Some(core) = cores.get(1 + i) {
                        core_affinity::set_for_current(*core);
                    }
                    let mut watch = make_watch();
                    let mut last = watch();
                    let mut seen: Vec<(u64, Instant)> = Vec::with_capacity(count + 1);
                    barrier.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let g = watch();
                        if g != last {
                            seen.push((g, Instant::now()));
                            newest.store(g, Ordering::Relaxed);
                            last = g;
                        }
                    }
                    seen
                })
            })
            .collect();
        if let Some(core) = cores.first() {
            core_affinity::set_for_current(*core);
        }
        barrier.wait();
        let mut published = Vec::with_capacity(count);
        for _ in 0..count {
            let resume = Instant::now() + gap;
            while Instant::now() < resume {
                std::hint::spin_loop();
            }
            let start = Instant::now();
            let generation = publish();
            published.push((generation, start, Instant::now()));
        }
        let last = published.last().map_or(0, |p| p.0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while newest.iter().any(|n| n.load(Ordering::Relaxed) < last) {
            assert!(
                Instant::now() < deadline,
                "a reader did not see generation {last} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        let seen: Vec<Vec<(u64, Instant)>> =
            spinners.into_iter().map(|h| h.join().unwrap()).collect();
        let signed = |a: Instant, b: Instant| match a >= b {
            true => (a - b).as_nanos() as f64,
            false => -((b - a).as_nanos() as f64),
        };
        published
            .into_iter()
            .map(|(generation, start, end)| {
                // The latest reader's first sight of this generation or a
                // later one (a reader may skip a generation).
                let last_seen = seen
                    .iter()
                    .map(|s| {
                        s.iter()
                            .find(|(g, _)| *g >= generation)
                            .expect("never seen")
                            .1
                    })
                    .max()
                    .unwrap();
                (
                    signed(end, start),
                    signed(last_seen, end),
                    signed(last_seen, start),
                )
            })
            .collect()
    })
}
