//! The measured window and its figures: what client threads tallied
//! (calls, latencies, errors, stalls), vimanad's CPU over the window by
//! thread kind, and the medians over rounds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::system::{cpu_ticks, thread_ticks, tick_secs};

/// How long after a window calls may take before they count as stalled.
pub const DRAIN: Duration = Duration::from_secs(5);
const MAX_ERROR_KINDS: usize = 20;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    values.sort_by(f64::total_cmp);
    percentile(&values, 50.0)
}

/// What client threads saw.
#[derive(Default)]
pub struct Tally {
    pub ok: u64,
    /// Latencies of the successful calls within the window, µs.
    pub latencies: Vec<f64>,
    pub errors: BTreeMap<String, u64>,
    pub stalled: u64,
}

impl Tally {
    pub fn done(&mut self, started: Instant, finished: Instant, window: &Window) {
        if finished >= window.start && finished < window.end {
            self.ok += 1;
            self.latencies
                .push((finished - started).as_secs_f64() * 1e6);
        }
    }

    pub fn error(&mut self, kind: String) {
        let kind = match self.errors.len() >= MAX_ERROR_KINDS && !self.errors.contains_key(&kind) {
            true => "other errors".to_owned(),
            false => kind,
        };
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.latencies.extend(other.latencies);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.stalled += other.stalled;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The measured window; a warm-up runs before `start`.
#[derive(Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn after(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
        }
    }
}

/// One window's figures.
pub struct Sample {
    pub per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// vimanad's CPU µs per counted operation, and its cores busy.
    pub vimanad_us: f64,
    /// The shard threads' CPU µs per operation, and their cores busy.
    pub shard_us: f64,
    pub shard_cores: f64,
    /// The control thread's cores busy.
    pub control_cores: f64,
    pub client_us: f64,
    pub client_cores: f64,
    pub tally: Tally,
}

#[derive(Clone, Copy)]
pub struct Cpu {
    vimanad: u64,
    /// vimanad's shard threads (`vimanad-shard-N`) and control thread.
    shards: u64,
    control: u64,
    client: u64,
}

fn sample_cpu(vimanad: u32) -> Cpu {
    let pid = vimanad.to_string();
    Cpu {
        vimanad: cpu_ticks(&pid),
        shards: thread_ticks(&pid, "vimanad-shard"),
        control: thread_ticks(&pid, "vimanad-control"),
        client: cpu_ticks("self"),
    }
}

/// Sleeps to the window's start, samples CPU, sleeps to its end, samples.
pub fn cpu_over(window: &Window, vimanad: u32) -> (Cpu, Cpu) {
    std::thread::sleep(window.start.saturating_duration_since(Instant::now()));
    let before = sample_cpu(vimanad);
    std::thread::sleep(window.end.saturating_duration_since(Instant::now()));
    (before, sample_cpu(vimanad))
}

impl Sample {
    pub fn of(mut tally: Tally, duration: Duration, (before, after): (Cpu, Cpu)) -> Sample {
        tally.latencies.sort_by(f64::total_cmp);
        let secs = duration.as_secs_f64();
        let ops = if tally.ok == 0 {
            f64::NAN
        } else {
            tally.ok as f64
        };
        let used = |b: u64, a: u64| (a - b) as f64 * tick_secs();
        Sample {
            per_s: tally.ok as f64 / secs,
            p50_us: percentile(&tally.latencies, 50.0),
            p99_us: percentile(&tally.latencies, 99.0),
            vimanad_us: used(before.vimanad, after.vimanad) * 1e6 / ops,
            shard_us: used(before.shards, after.shards) * 1e6 / ops,
            shard_cores: used(before.shards, after.shards) / secs,
            control_cores: used(before.control, after.control) / secs,
            client_us: used(before.client, after.client) * 1e6 / ops,
            client_cores: used(before.client, after.client) / secs,
            tally,
        }
    }
}
