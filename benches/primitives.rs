//! Micro-benchmarks of the data plane's primitives, one primitive per
//! measurement, each beside a baseline measured in the same run (the two
//! alternate repeat by repeat, so machine noise hits both alike).
//!
//! - **route**: `Snapshot::route(domain, service, None)` in a snapshot of
//!   10, 1,000 and 100,000 components (one running pod each), against a
//!   plain `HashMap<String, usize>` lookup of the same `domain/service` key.
//!   Keys are visited in a scrambled order, so at 100,000 the lookups miss
//!   the cache as a busy shard's would.
//! - **RCU read**: `Reader::current()` (one acquire load of the generation,
//!   no refcount write) and `Reader::read_through()` (an `rcu_cell` read:
//!   an `Arc` clone, dropped at once) against a plain `Arc::clone` + drop of
//!   an `Arc` in hand; on one thread, then on two threads at once, each with
//!   its own `Reader` (the cross-core case, where a refcount write bounces
//!   the cache line; in the two-thread `Arc::clone` baseline both threads
//!   clone the same `Arc`).
//! - **RCU publish**: `Publisher::publish(&pool)` (what the control thread
//!   pays per pod change) at 10 and 1,000 components, against
//!   `Snapshot::build` alone (built and dropped).
//!
//! Each figure is the median over 5 repeats of ns per operation; the ratio
//! is test / baseline. Timings are printed, never asserted.
//!
//! ```text
//! cargo bench --bench primitives -- [--quick] [--markdown]
//! cargo test --bench primitives -- --quick     # CI: ~50 ms per primitive
//! ```

use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use vimanad::pool::{ComponentName, Endpoint, PodId, PodPool, Publisher, Reader, Route, Snapshot};

const REPEATS: usize = 5;

struct Config {
    /// Time per primitive (test + baseline, all repeats).
    budget: Duration,
    markdown: bool,
}

struct Row {
    group: &'static str,
    test: String,
    test_ns: f64,
    baseline: String,
    baseline_ns: f64,
}

fn main() {
    let mut quick = false;
    let mut markdown = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "--markdown" => markdown = true,
            // `cargo bench` passes --bench; ignore the rest of libtest's flags.
            _ => {}
        }
    }
    let config = Config {
        budget: if quick {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(2)
        },
        markdown,
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    route_rows(&config, &mut rows);
    read_rows(&config, &mut rows);
    publish_rows(&config, &mut rows);
    print(&config, &rows);
    eprintln!(
        "primitives: {} measurements in {:.1} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------- timing

/// Runs `op` repeatedly for about `window`, in batches sized so the clock
/// is read rarely; returns ns per call.
fn ns_per_op(window: Duration, mut op: impl FnMut()) -> f64 {
    let mut batch: u64 = 1;
    let mut calls: u64 = 0;
    let started = Instant::now();
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        calls += batch;
        let elapsed = started.elapsed();
        if elapsed >= window {
            return elapsed.as_nanos() as f64 / calls as f64;
        }
        // Grow the batch until one takes about 1/50 of the window.
        if t.elapsed() < window / 50 {
            batch *= 2;
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The medians (test, baseline) over `REPEATS`, the two alternating.
fn side_by_side(
    config: &Config,
    mut test: impl FnMut(Duration) -> f64,
    mut baseline: impl FnMut(Duration) -> f64,
) -> (f64, f64) {
    let window = config.budget / (2 * REPEATS as u32);
    // One untimed warm-up of each.
    test(window / 4);
    baseline(window / 4);
    let (mut t, mut b) = (Vec::new(), Vec::new());
    for _ in 0..REPEATS {
        t.push(test(window));
        b.push(baseline(window));
    }
    (median(t), median(b))
}

/// Runs `make()`'s operation on `threads` threads at once, started
/// together; returns the mean over threads of ns per call.
fn concurrently<F, O>(threads: usize, window: Duration, make: F) -> f64
where
    F: Fn() -> O + Sync,
    O: FnMut(),
{
    let barrier = Barrier::new(threads);
    let results: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let op = make();
                    barrier.wait();
                    ns_per_op(window, op)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    results.iter().sum::<f64>() / threads as f64
}

// ---------------------------------------------------------------- fixtures

/// A pool of `n` components, one running pod each: `n / 10` domains of up
/// to 10 services, version 1.0.0. Returns the pool and the (domain,
/// service) pairs in a scrambled order.
fn pool_of(n: usize) -> (PodPool, Vec<(String, String)>) {
    let mut pool = PodPool::default();
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let domain = format!("tenant{}.example.com", i / 10);
        let service = format!("pkg.v1.Service{}", i % 10);
        let component = ComponentName::new(&domain, &service, "1.0.0").expect("valid name");
        let id = PodId::new(component, i as u64);
        pool.insert_pod(&id);
        pool.set_running(&id, PathBuf::from(format!("/run/vimanad/pods/{i}.sock")), 1);
        keys.push((domain, service));
    }
    // Scramble (multiplicative step coprime with n), so consecutive
    // lookups land far apart in the tables.
    let step = (0..).map(|k| 7919 + k).find(|s| gcd(*s, n) == 1).unwrap();
    let keys = (0..n).map(|i| keys[(i * step) % n].clone()).collect();
    (pool, keys)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn served(route: Route<'_>) -> &Endpoint {
    match route {
        Route::Serve(v) => &v.endpoints[0],
        other => panic!("not served: {other:?}"),
    }
}

// ---------------------------------------------------------------- route

fn route_rows(config: &Config, rows: &mut Vec<Row>) {
    for n in [10, 1_000, 100_000] {
        let (pool, keys) = pool_of(n);
        let snapshot = Snapshot::build(&pool, 1);
        let joined: Vec<String> = keys.iter().map(|(d, s)| format!("{d}/{s}")).collect();
        let map: HashMap<String, usize> = joined
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        // Sanity: both answer every key.
        for ((d, s), k) in keys.iter().zip(&joined) {
            served(snapshot.route(d, s, None));
            assert!(map.contains_key(k.as_str()));
        }
        let (t, b) = side_by_side(
            config,
            |w| {
                let mut i = 0;
                ns_per_op(w, || {
                    let (d, s) = &keys[i];
                    i = if i + 1 == keys.len() { 0 } else { i + 1 };
                    black_box(snapshot.route(black_box(d), black_box(s), None));
                })
            },
            |w| {
                let mut i = 0;
                ns_per_op(w, || {
                    let k = &joined[i];
                    i = if i + 1 == joined.len() { 0 } else { i + 1 };
                    black_box(map.get(black_box(k.as_str())));
                })
            },
        );
        rows.push(Row {
            group: "route",
            test: format!("Snapshot::route, {n} components"),
            test_ns: t,
            baseline: "HashMap<String, _>::get".into(),
            baseline_ns: b,
        });
    }
}

// ---------------------------------------------------------------- RCU read

fn read_rows(config: &Config, rows: &mut Vec<Row>) {
    let (pool, _) = pool_of(10);
    let publisher = Publisher::new();
    publisher.publish(&pool);
    let arc = Arc::new(Snapshot::build(&pool, 1));

    // One thread.
    let mut reader = publisher.reader();
    let clone_arc = |w: Duration, arc: &Arc<Snapshot>| {
        ns_per_op(w, || {
            black_box(Arc::clone(black_box(arc)));
        })
    };
    let current = |w: Duration, r: &mut Reader| {
        ns_per_op(w, || {
            black_box(black_box(&mut *r).current());
        })
    };
    let through = |w: Duration, r: &Reader| {
        ns_per_op(w, || {
            black_box(black_box(r).read_through());
        })
    };
    let (t, b) = side_by_side(config, |w| current(w, &mut reader), |w| clone_arc(w, &arc));
    rows.push(Row {
        group: "RCU read",
        test: "Reader::current, 1 thread".into(),
        test_ns: t,
        baseline: "Arc::clone + drop, 1 thread".into(),
        baseline_ns: b,
    });
    let (t, b) = side_by_side(config, |w| through(w, &reader), |w| clone_arc(w, &arc));
    rows.push(Row {
        group: "RCU read",
        test: "Reader::read_through, 1 thread".into(),
        test_ns: t,
        baseline: "Arc::clone + drop, 1 thread".into(),
        baseline_ns: b,
    });

    // Two threads at once, each with its own Reader (as two shards), the
    // baseline cloning one shared Arc from both.
    let shared_clone = |w: Duration| {
        concurrently(2, w, || {
            let arc = &arc;
            move || {
                black_box(Arc::clone(black_box(arc)));
            }
        })
    };
    let (t, b) = side_by_side(
        config,
        |w| {
            concurrently(2, w, || {
                let mut r = publisher.reader();
                move || {
                    black_box(black_box(&mut r).current());
                }
            })
        },
        shared_clone,
    );
    rows.push(Row {
        group: "RCU read",
        test: "Reader::current, 2 threads".into(),
        test_ns: t,
        baseline: "Arc::clone + drop of one Arc, 2 threads".into(),
        baseline_ns: b,
    });
    let (t, b) = side_by_side(
        config,
        |w| {
            concurrently(2, w, || {
                let r = publisher.reader();
                move || {
                    black_box(black_box(&r).read_through());
                }
            })
        },
        shared_clone,
    );
    rows.push(Row {
        group: "RCU read",
        test: "Reader::read_through, 2 threads".into(),
        test_ns: t,
        baseline: "Arc::clone + drop of one Arc, 2 threads".into(),
        baseline_ns: b,
    });
}

// ---------------------------------------------------------------- RCU publish

fn publish_rows(config: &Config, rows: &mut Vec<Row>) {
    for n in [10, 1_000] {
        let (pool, _) = pool_of(n);
        let publisher = Publisher::new();
        // A reader that keeps up, as a shard would (it releases each old
        // snapshot on its next call, so publish frees the one before).
        let mut reader = publisher.reader();
        let mut generation = 0;
        let (t, b) = side_by_side(
            config,
            |w| {
                ns_per_op(w, || {
                    black_box(publisher.publish(black_box(&pool)));
                    black_box(reader.current());
                })
            },
            |w| {
                ns_per_op(w, || {
                    generation += 1;
                    black_box(Snapshot::build(black_box(&pool), generation));
                })
            },
        );
        rows.push(Row {
            group: "RCU publish",
            test: format!("Publisher::publish (+ one Reader::current), {n} components"),
            test_ns: t,
            baseline: "Snapshot::build + drop".into(),
            baseline_ns: b,
        });
    }
}

// ---------------------------------------------------------------- output

fn fmt_ns(ns: f64) -> String {
    if ns >= 100_000.0 {
        format!("{:.0}", ns)
    } else if ns >= 100.0 {
        format!("{:.1}", ns)
    } else {
        format!("{:.2}", ns)
    }
}

fn print(config: &Config, rows: &[Row]) {
    if config.markdown {
        println!(
            "| primitive | median ns/op | baseline | median ns/op | ratio (test / baseline) |"
        );
        println!("|---|---:|---|---:|---:|");
        for r in rows {
            println!(
                "| {}: {} | {} | {} | {} | {:.2}× |",
                r.group,
                r.test,
                fmt_ns(r.test_ns),
                r.baseline,
                fmt_ns(r.baseline_ns),
                r.test_ns / r.baseline_ns
            );
        }
    } else {
        for r in rows {
            println!(
                "{:<12} {:<58} {:>10} ns   vs {:<40} {:>10} ns   ratio {:>6.2}x",
                r.group,
                r.test,
                fmt_ns(r.test_ns),
                r.baseline,
                fmt_ns(r.baseline_ns),
                r.test_ns / r.baseline_ns
            );
        }
    }
}
