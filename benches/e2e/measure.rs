//! The measured window, what each worker saw, and what the processes spent:
//! CPU time from /proc/PID/stat and the proxy's peak RSS.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after a window calls may take to finish before they count as
/// stalled.
pub const DRAIN: Duration = Duration::from_secs(5);
/// A call slower than this is worth a line of its own.
pub const SLOW: Duration = Duration::from_secs(1);
/// Distinct error descriptions kept per window (the rest are "other").
const MAX_ERROR_KINDS: usize = 20;

/// One window's load, the same along every path.
#[derive(Clone, Copy)]
pub struct Load {
    /// Calls in flight.
    pub streams: usize,
    /// Connections they are spread over.
    pub connections: usize,
    /// HTTP/3 only: each request's FIN in a packet of its own.
    pub fin_apart: bool,
    pub duration: Duration,
    pub warmup: Duration,
}

/// The measured window; the warm-up runs before `start`.
#[derive(Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub end: Instant,
}

impl Schedule {
    pub fn after_warmup(warmup: Duration, duration: Duration) -> Schedule {
        let start = Instant::now() + warmup;
        Schedule {
            start,
            end: start + duration,
        }
    }
}

/// What one worker (a QUIC connection, or one ceiling stream) saw.
#[derive(Default)]
pub struct Tally {
    /// Successful calls completed within the window.
    pub ok: u64,
    /// Response messages of those calls.
    pub messages: u64,
    /// Their latencies (request sent → end of the response), µs.
    pub latencies: Vec<u32>,
    /// Failed calls (any time: warm-up, window or drain), by kind.
    pub errors: BTreeMap<String, u64>,
    /// Calls still in flight when the drain deadline passed (also counted
    /// in `errors`).
    pub stalled: u64,
    /// Calls (successful or not) slower than [`SLOW`].
    pub slow: u64,
    pub slowest: Duration,
    /// UDP datagrams sent to and received from the proxy within the window
    /// (HTTP/3 only).
    pub datagrams: (u64, u64),
}

impl Tally {
    pub fn done(
        &mut self,
        started: Instant,
        finished: Instant,
        messages: u64,
        schedule: &Schedule,
    ) {
        let took = finished - started;
        self.note_latency(took);
        if finished >= schedule.start && finished < schedule.end {
            self.ok += 1;
            self.messages += messages;
            self.latencies
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        }
    }

    pub fn note_latency(&mut self, took: Duration) {
        self.slowest = self.slowest.max(took);
        if took > SLOW {
            self.slow += 1;
        }
    }

    pub fn error(&mut self, kind: String) {
        let kind = if self.errors.len() >= MAX_ERROR_KINDS && !self.errors.contains_key(&kind) {
            "other errors".to_owned()
        } else {
            kind
        };
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.messages += other.messages;
        self.latencies.extend(other.latencies);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.stalled += other.stalled;
        self.slow += other.slow;
        self.slowest = self.slowest.max(other.slowest);
        self.datagrams.0 += other.datagrams.0;
        self.datagrams.1 += other.datagrams.1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

pub use crate::procfs::{cpu_ticks, tick_secs};

/// The processes a window watches: the proxy under test (none for the
/// ceiling) and the component.
#[derive(Clone, Copy)]
pub struct Watched {
    pub proxy: Option<u32>,
    pub component: u32,
}

#[derive(Clone, Copy)]
pub struct CpuSample {
    proxy: Option<u64>,
    component: u64,
    generator: u64,
}

impl CpuSample {
    pub fn proxy(&self) -> Option<u64> {
        self.proxy
    }
    pub fn component(&self) -> u64 {
        self.component
    }
}

pub fn sample_cpu(watched: Watched) -> CpuSample {
    CpuSample {
        proxy: watched.proxy.map(|pid| cpu_ticks(&pid.to_string())),
        component: cpu_ticks(&watched.component.to_string()),
        generator: cpu_ticks("self"),
    }
}

/// CPU before and after a window, and the proxy's peak RSS in it (KiB).
pub struct WindowCost {
    pub before: CpuSample,
    pub after: CpuSample,
    pub proxy_peak_kib: Option<u64>,
}

/// Watches from now until `end`: CPU, and the proxy's peak RSS.
pub fn watch_until(end: Instant, watched: Watched) -> WindowCost {
    let peak = watched.proxy.map(PeakRss::start);
    let before = sample_cpu(watched);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let after = sample_cpu(watched);
    WindowCost {
        before,
        after,
        proxy_peak_kib: peak.map(PeakRss::finish),
    }
}

/// Sleeps until the window starts, then [`watch_until`] its end.
pub fn sample_window(schedule: &Schedule, watched: Watched) -> WindowCost {
    std::thread::sleep(schedule.start.saturating_duration_since(Instant::now()));
    watch_until(schedule.end, watched)
}

/// (VmHWM, VmRSS) of a process, KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// How peak RSS was measured: 0 not yet, 1 VmHWM reset by clear_refs,
/// 2 VmRSS sampled.
static RSS_METHOD: AtomicU8 = AtomicU8::new(0);

pub fn rss_method() -> &'static str {
    match RSS_METHOD.load(Ordering::Relaxed) {
        1 => "VmHWM after writing 5 to /proc/PID/clear_refs at the window's start",
        2 => "the largest VmRSS sampled every 10 ms (clear_refs does not reset VmHWM here)",
        _ => "not measured",
    }
}

/// The peak resident set of a process over a window.
enum PeakRss {
    /// The kernel's high-water mark, reset at the start.
    HighWater(u32),
    /// A thread sampling VmRSS every 10 ms.
    Sampler(Arc<AtomicBool>, std::thread::JoinHandle<u64>),
}

impl PeakRss {
    fn start(pid: u32) -> PeakRss {
        if RSS_METHOD.load(Ordering::Relaxed) != 2
            && std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
        {
            // After the reset the high-water mark is the resident set.
            if let Some((hwm, rss)) = memory_kib(pid) {
                if hwm <= rss + rss / 20 + 1024 {
                    RSS_METHOD.store(1, Ordering::Relaxed);
                    return PeakRss::HighWater(pid);
                }
            }
        }
        RSS_METHOD.store(2, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let sampler = std::thread::Builder::new()
            .name("e2e-rss".into())
            .spawn(move || {
                let mut peak = 0;
                while !flag.load(Ordering::Relaxed) {
                    peak = peak.max(memory_kib(pid).map_or(0, |m| m.1));
                    std::thread::sleep(Duration::from_millis(10));
                }
                peak.max(memory_kib(pid).map_or(0, |m| m.1))
            })
            .unwrap();
        PeakRss::Sampler(stop, sampler)
    }

    fn finish(self) -> u64 {
        match self {
            PeakRss::HighWater(pid) => memory_kib(pid).map_or(0, |m| m.0),
            PeakRss::Sampler(stop, sampler) => {
                stop.store(true, Ordering::Relaxed);
                sampler.join().unwrap()
            }
        }
    }
}

/// One window's figures.
pub struct Sample {
    pub calls_per_s: f64,
    pub messages_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// CPU µs per call of the proxy (NaN for the ceiling).
    pub proxy_us: f64,
    pub component_us: f64,
    pub generator_us: f64,
    /// The proxy's peak RSS in the window, MiB (NaN for the ceiling).
    pub proxy_rss_mib: f64,
    /// UDP datagrams per call, to and from the proxy (HTTP/3 only).
    pub datagrams: (f64, f64),
    pub tally: Tally,
}

/// The `p`th percentile (nearest rank) of sorted values, NaN if none.
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let rank = (p / 100.0 * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1] as f64
}

impl Sample {
    pub fn of(mut tally: Tally, duration: Duration, cost: WindowCost) -> Sample {
        tally.latencies.sort_unstable();
        let pct = |p| percentile(&tally.latencies, p);
        let (before, after) = (cost.before, cost.after);
        // No call completed: no per-call figure (NaN prints as a dash).
        let calls = if tally.ok == 0 {
            f64::NAN
        } else {
            tally.ok as f64
        };
        let per_call = |b: u64, a: u64| (a - b) as f64 * tick_secs() * 1e6 / calls;
        let secs = duration.as_secs_f64();
        Sample {
            calls_per_s: tally.ok as f64 / secs,
            messages_per_s: tally.messages as f64 / secs,
            p50_us: pct(50.0),
            p99_us: pct(99.0),
            p999_us: pct(99.9),
            proxy_us: match (before.proxy, after.proxy) {
                (Some(b), Some(a)) => per_call(b, a),
                _ => f64::NAN,
            },
            component_us: per_call(before.component, after.component),
            generator_us: per_call(before.generator, after.generator),
            proxy_rss_mib: cost
                .proxy_peak_kib
                .map_or(f64::NAN, |kib| kib as f64 / 1024.0),
            datagrams: (
                tally.datagrams.0 as f64 / calls,
                tally.datagrams.1 as f64 / calls,
            ),
            tally,
        }
    }
}
