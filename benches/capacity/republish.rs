//! Section D: unary p99 while the control thread publishes every
//! millisecond, beside the same load with no publishing.

use std::time::Duration;

use crate::args::Args;
use crate::common::SERVICE;
use crate::load;
use crate::measure::{median, Sample};
use crate::node::{check, log_time_us, now_unix_us, Target};
use crate::report::{cell, table};

/// The node of the republish section: one running pod plus `pool - 1`
/// pods run but not started (components in the snapshot, not routable).
async fn pool_target(pool: usize, extra: &[&str]) -> Target {
    let mut target = Target::start(1, "info", extra).await;
    for i in 1..pool {
        let domain = format!("idle{i}.example.com");
        target
            .node
            .run_pod(&format!("idle{i}"), (&domain, SERVICE, "1.0.0"))
            .await;
    }
    target
}

/// Publications per second by vimanad's `republished the pod pool
/// count=N elapsed_ms=M` lines (one a second) that lie wholly within
/// [`from`, `to`] (µs since the Unix epoch).
fn republish_rate(target: &Target, from: i64, to: i64) -> f64 {
    let (mut count, mut ms) = (0u64, 0u64);
    for line in target.node.log().lines() {
        if !line.contains("republished the pod pool") {
            continue;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (n, elapsed) = (field("count="), field("elapsed_ms="));
        let Some(at) = log_time_us(line) else {
            continue;
        };
        if at - (elapsed as i64) * 1000 >= from && at <= to {
            count += n;
            ms += elapsed;
        }
    }
    match ms {
        0 => f64::NAN,
        _ => count as f64 * 1e3 / ms as f64,
    }
}

pub async fn section(args: &Args, trouble: &mut Vec<String>) {
    let every = args.republish_every.as_str();
    let mut quiet = pool_target(args.pool, &[]).await;
    let mut busy = pool_target(args.pool, &["--republish-every", every]).await;
    eprintln!(
        "capacity: republish: vimanad pids {} (no republishing), {} (--republish-every {every}); \
         pool of {} components",
        quiet.pid(),
        busy.pid(),
        args.pool
    );
    quiet.set_running(false);
    busy.set_running(false);
    let warmup = (args.duration / 10).clamp(Duration::from_millis(100), Duration::from_millis(500));
    let conns = args.load_connections.min(args.streams);
    let labels = [
        "no republishing".to_owned(),
        format!("--republish-every {every}"),
    ];
    let mut samples: Vec<Vec<(Sample, f64)>> = vec![Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for arm in order {
            let target = if arm == 0 { &mut quiet } else { &mut busy };
            target.set_running(true);
            let from = now_unix_us();
            // `streams` spread over `conns` connections, a thread each.
            let sample = {
                let per = args.streams / conns;
                load::window(target, conns, 1, per.max(1), args.duration, warmup, &[])
            };
            let rate = match arm {
                1 => republish_rate(target, from, now_unix_us()),
                _ => 0.0,
            };
            target.set_running(false);
            eprintln!(
                "capacity: round {round} {:<26} {:>8.0} calls/s  p50 {:>6.0} µs  p99 {:>6.0} µs  \
                 vimanad {:>5.1} µs/call (shard {:>5.1})  control {:.3} cores  \
                 publications {:>5.0}/s",
                labels[arm],
                sample.per_s,
                sample.p50_us,
                sample.p99_us,
                sample.vimanad_us,
                sample.shard_us,
                sample.control_cores,
                rate
            );
            check(trouble, &labels[arm], target, &sample.tally);
            samples[arm].push((sample, rate));
        }
    }
    let m = |arm: usize, f: &dyn Fn(&(Sample, f64)) -> f64| {
        median(samples[arm].iter().map(f).collect())
    };
    // calls/s, p50, p99, vimanad µs/call, shard µs/call, control cores.
    let figures = |arm: usize| -> [f64; 6] {
        [
            m(arm, &|s| s.0.per_s),
            m(arm, &|s| s.0.p50_us),
            m(arm, &|s| s.0.p99_us),
            m(arm, &|s| s.0.vimanad_us),
            m(arm, &|s| s.0.shard_us),
            m(arm, &|s| s.0.control_cores),
        ]
    };
    let errors = |arm: usize| {
        samples[arm]
            .iter()
            .map(|s| s.0.tally.error_count())
            .sum::<u64>()
            .to_string()
    };
    let row = |arm: usize, rate: String| {
        let f = figures(arm);
        let mut r = vec![labels[arm].clone(), rate];
        r.extend([0, 0, 0, 1, 1, 2].iter().zip(f).map(|(&d, x)| cell(x, d)));
        r.push(errors(arm));
        r
    };
    let (q, b) = (figures(0), figures(1));
    let mut ratio = vec!["ratio (republishing / not)".to_owned(), "".to_owned()];
    ratio.extend((0..5).map(|i| format!("{:.2}×", b[i] / q[i])));
    ratio.extend(["".to_owned(), "".to_owned()]);
    let rows = vec![row(0, "0".into()), row(1, cell(m(1, &|s| s.1), 0)), ratio];
    println!(
        "\n### D. Unary load while the control thread publishes (1 shard, {} streams over {} \
         connections, pool of {} components, {:?} windows, {} rounds, medians)\n",
        args.streams, conns, args.pool, args.duration, args.rounds
    );
    table(
        args.markdown,
        &[
            "control thread",
            "publications/s",
            "calls/s",
            "p50 µs",
            "p99 µs",
            "vimanad CPU µs/call",
            "of which the shard thread",
            "control thread cores busy",
            "errors",
        ],
        &rows,
    );
    quiet.remove().await;
    busy.remove().await;
}
