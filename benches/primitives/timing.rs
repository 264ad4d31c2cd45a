//! The timing harness: ns per call over a window, the median over
//! `REPEATS`, test and baseline alternating repeat by repeat, and an
//! operation run on several threads at once.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::args::Config;

pub const REPEATS: usize = 5;

/// Runs `op` repeatedly for about `window`, in batches sized so the clock
/// is read rarely; returns ns per call.
pub fn ns_per_op(window: Duration, mut op: impl FnMut()) -> f64 {
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

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The medians (test, baseline) over `REPEATS`, the two alternating.
pub fn side_by_side(
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
pub fn concurrently<F, O>(threads: usize, window: Duration, make: F) -> f64
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
