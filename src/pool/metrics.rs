//! The data plane's counters, as both planes see them.
//!
//! Each shard owns one [`ShardMetrics`]: only that shard's thread writes it,
//! with a relaxed load and store (no read-modify-write, no lock, no line
//! shared with another writer), and the metrics endpoint on the control
//! thread reads every shard's block when it is scraped. A block is aligned
//! to its own cache lines, so a scrape is the only cross-core traffic.
//!
//! Per-component counters live in a fixed array of slots per shard. The
//! publisher gives each component version a slot when it first appears in
//! a snapshot ([`ComponentSlots`]); slots are never reused, so counters
//! stay monotonic, and past [`MAX_COMPONENT_SLOTS`] components share the
//! "other" slot, which bounds the endpoint's cardinality.
//!
//! Per-endpoint outstanding calls (what the shard's least-outstanding
//! balancer counts) are mirrored into [`EndpointCell`]s of the shard's
//! block: the shard takes a free cell when it first opens an upstream to an
//! endpoint, stores the count on every change (its own lines, one writer),
//! and frees the cell when it drops that upstream; `/debug/pool` reads them.
//! Owns no policy:
//! what to count is the shard's business, how to expose it the control
//! plane's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::ComponentName;

/// Component slots per shard, the "none" and "other" slots included.
pub const MAX_COMPONENT_SLOTS: usize = 256;
/// Calls that matched no component (unknown domain, service or version,
/// or not gRPC).
pub const SLOT_NONE: u32 = 0;
/// Components past the cap.
pub const SLOT_OTHER: u32 = 1;

/// False in a build with the `metrics-off` feature (benchmarks only: the
/// same binary without any counting, to measure what counting costs).
const COUNTING: bool = !cfg!(feature = "metrics-off");

/// A counter with one writer: `add` is a plain load and store.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        if !COUNTING {
            return;
        }
        // One writer (the owning shard): no read-modify-write needed.
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge with one writer.
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        if !COUNTING {
            return;
        }
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(1), Ordering::Relaxed);
    }
    #[inline]
    pub fn dec(&self) {
        if !COUNTING {
            return;
        }
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_sub(1), Ordering::Relaxed);
    }
    #[inline]
    pub fn set(&self, v: u64) {
        if !COUNTING {
            return;
        }
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the call-latency buckets, in seconds (the last bucket,
/// +Inf, is implicit).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// A latency histogram with one writer: per-bucket (not cumulative)
/// counts, made cumulative when read.
#[derive(Default)]
pub struct Histogram {
    buckets: [Counter; LATENCY_BUCKETS.len() + 1],
    sum_nanos: Counter,
}

impl Histogram {
    #[inline]
    pub fn observe(&self, d: std::time::Duration) {
        if !COUNTING {
            return;
        }
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].inc();
        self.sum_nanos
            .add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Cumulative counts per bucket (the last is +Inf, i.e. the count).
    pub fn cumulative(&self) -> [u64; LATENCY_BUCKETS.len() + 1] {
        let mut out = [0; LATENCY_BUCKETS.len() + 1];
        let mut total = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            total += b.get();
            *o = total;
        }
        out
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos.get() as f64 / 1e9
    }
}

/// gRPC status codes 0..=16.
pub const GRPC_CODES: usize = 17;

/// One component's counters on one shard.
#[derive(Default)]
pub struct ComponentMetrics {
    /// Finished calls by gRPC status code.
    pub calls: [Counter; GRPC_CODES],
    pub latency: Histogram,
    /// Request and response message bytes (gRPC frames).
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Calls in flight.
    pub active: Gauge,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not a QUIC packet we could parse.
    Malformed,
    /// For no connection we have, and not an Initial.
    UnknownConnection,
    /// An Initial while the shard is full.
    ConnectionLimit,
    /// An Initial too small to be answered (RFC 9000 §14.1).
    TooSmall,
    /// A Retry token that did not validate (forged, expired, from another
    /// address or port, or replayed under another connection ID).
    InvalidToken,
    /// An Initial from a source already holding its connections on this
    /// shard (`--max-connections-per-source`).
    SourceLimit,
    /// An Initial from a source already holding its handshakes in progress
    /// on this shard (`--max-handshakes-per-source`).
    SourceHandshakeLimit,
    /// An Initial while the shard drains.
    Draining,
    /// quiche refused it.
    Rejected,
}

impl Drop {
    pub const ALL: [Drop; 9] = [
        Drop::Malformed,
        Drop::UnknownConnection,
        Drop::ConnectionLimit,
        Drop::TooSmall,
        Drop::InvalidToken,
        Drop::SourceLimit,
        Drop::SourceHandshakeLimit,
        Drop::Draining,
        Drop::Rejected,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::UnknownConnection => "unknown_connection",
            Drop::ConnectionLimit => "connection_limit",
            Drop::TooSmall => "too_small",
            Drop::InvalidToken => "invalid_token",
            Drop::SourceLimit => "source_limit",
            Drop::SourceHandshakeLimit => "source_handshake_limit",
            Drop::Draining => "draining",
            Drop::Rejected => "rejected",
        }
    }
}

/// Endpoints per shard whose outstanding calls are mirrored for
/// `/debug/pool`; past it an endpoint's count is not shown (the balancer
/// is unaffected: it counts in the shard's own map).
pub const MAX_ENDPOINT_CELLS: usize = 1024;

/// One endpoint's outstanding calls on one shard. Written only by the
/// shard: `key` is the pod ordinal + 1 (0: a free cell), written last when
/// the cell is taken and first when it is freed, so a reader that sees the
/// same key before and after reading the count has a count of that key.
#[derive(Default)]
pub struct EndpointCell {
    key: AtomicU64,
    incarnation: AtomicU64,
    outstanding: AtomicU64,
}

impl EndpointCell {
    /// Takes the cell for endpoint (ordinal, incarnation), count 0.
    #[inline]
    pub fn take(&self, ordinal: u64, incarnation: u64) {
        if !COUNTING {
            return;
        }
        self.outstanding.store(0, Ordering::Relaxed);
        self.incarnation.store(incarnation, Ordering::Relaxed);
        self.key.store(ordinal.wrapping_add(1), Ordering::Release);
    }

    #[inline]
    pub fn set(&self, outstanding: u64) {
        if !COUNTING {
            return;
        }
        self.outstanding.store(outstanding, Ordering::Relaxed);
    }

    #[inline]
    pub fn free(&self) {
        self.key.store(0, Ordering::Release);
        self.outstanding.store(0, Ordering::Relaxed);
    }

    /// (ordinal, incarnation, outstanding), if the cell is taken and was
    /// not retaken while it was read.
    pub fn read(&self) -> Option<(u64, u64, u64)> {
        let key = self.key.load(Ordering::Acquire);
        if key == 0 {
            return None;
        }
        let incarnation = self.incarnation.load(Ordering::Acquire);
        let outstanding = self.outstanding.load(Ordering::Acquire);
        (self.key.load(Ordering::Acquire) == key).then(|| (key - 1, incarnation, outstanding))
    }
}

/// What the shard's stream and call limits did (one shard's).
#[derive(Default)]
pub struct LimitMetrics {
    /// Request and response bytes buffered for calls now.
    pub buffered_bytes: Gauge,
    /// Calls ended with RESOURCE_EXHAUSTED: their client read nothing
    /// while a buffer budget was spent.
    pub calls_over_budget: Counter,
    /// Streams the client reset before their response.
    pub early_resets: Counter,
    /// Connections closed (H3_EXCESSIVE_LOAD) for resetting too many.
    pub reset_floods: Counter,
    /// Calls the client gave up before they reached a component.
    pub dropped_before_upstream: Counter,
    /// Requests refused for an oversized header section.
    pub headers_too_large: Counter,
    /// Calls ended by the idle timeout (no grpc-timeout, nothing moved).
    pub idle_timeouts: Counter,
    /// Calls refused because their component's queue was full.
    pub upstream_queue_full: Counter,
    /// Calls that got no stream to their component in time.
    pub upstream_wait_timeouts: Counter,
    /// Responses reset instead of trailed: cut inside a message already
    /// partly sent.
    pub responses_reset: Counter,
}

/// One shard's counters. Written only by its shard.
#[repr(align(128))]
pub struct ShardMetrics {
    pub datagrams_in: Counter,
    pub datagrams_out: Counter,
    pub dropped: [Counter; Drop::ALL.len()],
    pub connections_open: Gauge,
    /// Connections accepted (Initial accepted, handshake begun).
    pub handshakes_started: Counter,
    /// Handshakes that completed.
    pub handshakes_done: Counter,
    /// Connections whose handshake is in progress.
    pub handshakes_pending: Gauge,
    /// Handshakes abandoned at the handshake deadline (or idle before it).
    pub handshake_timeouts: Counter,
    pub retries_sent: Counter,
    pub version_negotiations_sent: Counter,
    /// Stateless resets sent for unknown connection IDs.
    pub stateless_resets_sent: Counter,
    /// Streams refused for the per-connection limit.
    pub streams_refused: Counter,
    /// Calls the data plane answered itself (client cancellations aside).
    pub answered: Counter,
    /// HTTP/2 over TCP (TLS or h2c): connections open now.
    pub tcp_connections_open: Gauge,
    /// TCP connections accepted.
    pub tcp_accepted: Counter,
    /// TCP connections closed at once for the per-shard limit.
    pub tcp_refused: Counter,
    /// TLS + HTTP/2 handshakes that completed.
    pub tcp_handshakes_done: Counter,
    /// Handshakes that failed or timed out.
    pub tcp_handshakes_failed: Counter,
    /// HTTP/2 connections closed by their idle timeout.
    pub tcp_idle_closed: Counter,
    /// HTTP/2 connections ended with GOAWAY for abuse (reset floods,
    /// protocol errors).
    pub h2_goaway_abuse: Counter,
    /// HTTP/2 streams the client reset before their call started (never
    /// reached a component).
    pub h2_reset_before_call: Counter,
    /// The stream and call limits (shard/limits.rs).
    pub limits: LimitMetrics,
    components: Box<[ComponentMetrics]>,
    endpoints: Box<[EndpointCell]>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        Self {
            datagrams_in: Counter::default(),
            datagrams_out: Counter::default(),
            dropped: Default::default(),
            connections_open: Gauge::default(),
            handshakes_started: Counter::default(),
            handshakes_done: Counter::default(),
            handshakes_pending: Gauge::default(),
            handshake_timeouts: Counter::default(),
            retries_sent: Counter::default(),
            version_negotiations_sent: Counter::default(),
            stateless_resets_sent: Counter::default(),
            streams_refused: Counter::default(),
            answered: Counter::default(),
            tcp_connections_open: Gauge::default(),
            tcp_accepted: Counter::default(),
            tcp_refused: Counter::default(),
            tcp_handshakes_done: Counter::default(),
            tcp_handshakes_failed: Counter::default(),
            tcp_idle_closed: Counter::default(),
            h2_goaway_abuse: Counter::default(),
            h2_reset_before_call: Counter::default(),
            limits: LimitMetrics::default(),
            components: (0..MAX_COMPONENT_SLOTS)
                .map(|_| ComponentMetrics::default())
                .collect(),
            endpoints: (0..MAX_ENDPOINT_CELLS)
                .map(|_| EndpointCell::default())
                .collect(),
        }
    }
}

impl ShardMetrics {
    #[inline]
    pub fn dropped(&self, why: Drop) {
        self.dropped[why as usize].inc();
    }

    /// Finished calls on this shard, every component and status.
    pub fn calls(&self) -> u64 {
        self.components
            .iter()
            .flat_map(|c| c.calls.iter())
            .map(Counter::get)
            .sum()
    }

    /// A slot's counters (an out-of-range slot counts as "other").
    #[inline]
    pub fn component(&self, slot: u32) -> &ComponentMetrics {
        self.components
            .get(slot as usize)
            .unwrap_or(&self.components[SLOT_OTHER as usize])
    }

    /// Endpoint cell `i` (`None` past [`MAX_ENDPOINT_CELLS`]).
    #[inline]
    pub fn endpoint_cell(&self, i: usize) -> Option<&EndpointCell> {
        self.endpoints.get(i)
    }

    /// Outstanding calls on this shard by endpoint (ordinal, incarnation),
    /// for the endpoints it has an upstream to (read at any time, from any
    /// thread).
    pub fn outstanding(&self) -> std::collections::HashMap<(u64, u64), u64> {
        self.endpoints
            .iter()
            .filter_map(EndpointCell::read)
            .map(|(ordinal, incarnation, n)| ((ordinal, incarnation), n))
            .collect()
    }
}

/// Which component each slot counts. The publisher assigns slots; the
/// metrics endpoint reads the names.
#[derive(Default)]
pub struct ComponentSlots {
    names: Mutex<Vec<ComponentName>>,
}

impl ComponentSlots {
    /// The slot of `component`, assigned on first sight (control thread).
    pub fn slot(&self, component: &ComponentName) -> u32 {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = names.iter().position(|n| n == component) {
            return i as u32 + 2;
        }
        if names.len() + 2 >= MAX_COMPONENT_SLOTS {
            return SLOT_OTHER;
        }
        names.push(component.clone());
        names.len() as u32 + 1
    }

    /// The component counted in `slot`, if it names one.
    pub fn names(&self) -> Vec<(u32, ComponentName)> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32 + 2, n.clone()))
            .collect()
    }
}

/// Every shard's block and the slot names: one per node, shared by `Arc`.
pub struct NodeMetrics {
    pub shards: Vec<ShardMetrics>,
    pub slots: Arc<ComponentSlots>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl NodeMetrics {
    pub fn new(shards: usize, slots: Arc<ComponentSlots>) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_bounded() {
        let slots = ComponentSlots::default();
        let a: ComponentName = "x.com:a.S@1.0.0".parse().unwrap();
        let b: ComponentName = "x.com:a.S@2.0.0".parse().unwrap();
        assert_eq!(slots.slot(&a), 2);
        assert_eq!(slots.slot(&b), 3);
        assert_eq!(slots.slot(&a), 2);
        for i in 0..MAX_COMPONENT_SLOTS * 2 {
            let n: ComponentName = format!("y.com:a.S@1.0.{i}").parse().unwrap();
            let s = slots.slot(&n);
            assert!((s as usize) < MAX_COMPONENT_SLOTS);
        }
        let late: ComponentName = "z.com:a.S@1.0.0".parse().unwrap();
        assert_eq!(slots.slot(&late), SLOT_OTHER);
        assert_eq!(slots.names().len(), MAX_COMPONENT_SLOTS - 2);
    }

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(std::time::Duration::from_micros(50));
        h.observe(std::time::Duration::from_millis(3));
        h.observe(std::time::Duration::from_secs(60));
        let c = h.cumulative();
        assert_eq!(c[0], 1);
        assert_eq!(c[5], 2); // <= 5 ms
        assert_eq!(c[LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(c[LATENCY_BUCKETS.len()], 3);
        assert!((h.sum_seconds() - 60.00305).abs() < 1e-6);
    }

    #[test]
    fn endpoint_cells_read_what_their_shard_wrote() {
        let m = ShardMetrics::default();
        let cell = m.endpoint_cell(3).unwrap();
        assert!(cell.read().is_none());
        cell.take(0, 7); // pod #0: ordinal 0 is a real endpoint
        cell.set(2);
        assert_eq!(cell.read(), Some((0, 7, 2)));
        assert_eq!(m.outstanding().get(&(0, 7)), Some(&2));
        cell.free();
        assert!(m.outstanding().is_empty());
        assert!(m.endpoint_cell(MAX_ENDPOINT_CELLS).is_none());
    }

    #[test]
    fn an_unknown_slot_counts_as_other() {
        let m = ShardMetrics::default();
        m.component(9999).calls[0].inc();
        assert_eq!(m.component(SLOT_OTHER).calls[0].get(), 1);
    }
}
