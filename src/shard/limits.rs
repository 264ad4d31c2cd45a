//! The limits a shard holds its clients and components to, beside the
//! per-connection stream limit: memory budgets for buffered call bytes
//! (per connection and per shard), the budget of streams a client may
//! reset before their response, the per-call idle timeout, and the wait
//! for an upstream stream. Pure bookkeeping on the shard's thread (`Cell`,
//! no lock); the decisions that use it live with their users (stream.rs
//! counts bytes, conn.rs counts resets, call.rs ends calls).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::counters::Counters;

/// Bytes buffered for calls on one shard: request bytes in inboxes and
/// response bytes taken from components that quiche has not taken yet.
pub struct ShardBudget {
    held: Cell<usize>,
    limit: usize,
    /// The most held since the allocator was last asked to give memory back.
    peak: Cell<usize>,
    counters: Option<Rc<Counters>>,
}

/// Above this many bytes held at once, the shard gives freed memory back to
/// the allocator's baseline once its buffers empty again (see
/// [`ShardBudget::refund`]).
const TRIM_ABOVE: usize = 4 << 20;

impl ShardBudget {
    pub fn new(limit: usize, counters: Option<Rc<Counters>>) -> Rc<Self> {
        Rc::new(Self {
            held: Cell::new(0),
            limit,
            peak: Cell::new(0),
            counters,
        })
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.get()
    }

    fn charge(&self, n: usize) {
        let held = self.held.get() + n;
        self.held.set(held);
        if held > self.peak.get() {
            self.peak.set(held);
        }
        if let Some(c) = &self.counters {
            c.get().limits.buffered_bytes.set(held as u64);
        }
    }

    fn refund(&self, n: usize) {
        let held = self.held.get().saturating_sub(n);
        self.held.set(held);
        if let Some(c) = &self.counters {
            c.get().limits.buffered_bytes.set(held as u64);
        }
        // glibc keeps freed chunks in its arenas (this thread's arena holds
        // what its calls buffered): after a burst of abusers the process
        // would stay at its peak. Once the buffers are nearly empty again,
        // hand the free pages back. Rare (once per burst), never per call.
        if held < TRIM_ABOVE / 16 && self.peak.get() > TRIM_ABOVE {
            self.peak.set(held);
            trim_allocator();
        }
    }
}

#[cfg(target_env = "gnu")]
fn trim_allocator() {
    // SAFETY: malloc_trim only releases free memory of the allocator's
    // arenas; it touches no memory the program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn trim_allocator() {}

/// One connection's share: its own limit, and the shard's.
pub struct ConnBudget {
    held: Cell<usize>,
    limit: usize,
    shard: Rc<ShardBudget>,
}

/// Which budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    Connection,
    Shard,
}

impl ConnBudget {
    pub fn new(limit: usize, shard: Rc<ShardBudget>) -> Rc<Self> {
        Rc::new(Self {
            held: Cell::new(0),
            limit,
            shard,
        })
    }

    /// No limit (tests of a stream alone).
    #[cfg(test)]
    pub fn unlimited() -> Rc<Self> {
        Self::new(usize::MAX, ShardBudget::new(usize::MAX, None))
    }

    pub fn charge(&self, n: usize) {
        self.held.set(self.held.get() + n);
        self.shard.charge(n);
    }

    pub fn refund(&self, n: usize) {
        self.held.set(self.held.get().saturating_sub(n));
        self.shard.refund(n);
    }

    /// The connection holds its limit: take no more of its request bytes
    /// from quiche and open no more HTTP/2 window for its responses.
    pub fn conn_full(&self) -> bool {
        self.held.get() >= self.limit
    }

    /// Whether the connection holds more than an eighth of its budget: while
    /// the shard's is spent, such a connection starts no new call.
    pub fn hoarding(&self) -> bool {
        self.held.get() > self.limit / 8
    }

    /// Whether this connection's or the shard's budget is spent.
    pub fn spent(&self) -> Option<Spent> {
        if self.conn_full() {
            Some(Spent::Connection)
        } else if self.shard.held.get() >= self.shard.limit {
            Some(Spent::Shard)
        } else {
            None
        }
    }
}

/// Streams a client may reset before their response, per connection: a
/// token bucket of `rate` per second (as many at once).
#[derive(Default)]
pub struct ResetBucket {
    tokens: f64,
    last: Option<Instant>,
}

impl ResetBucket {
    /// Counts one early reset; false once the client is over `rate` per
    /// second. A rate of 0 allows any number.
    pub fn allow(&mut self, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        self.tokens = match self.last {
            None => rate,
            Some(last) => {
                (self.tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(rate)
            }
        };
        self.last = Some(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// What a call is held to.
#[derive(Debug, Clone)]
pub struct CallLimits {
    /// A call without `grpc-timeout` ends after this long without a byte
    /// moving either way.
    pub idle_timeout: Duration,
    /// While a budget is spent, a call whose client takes none of its
    /// buffered response for this long ends with RESOURCE_EXHAUSTED.
    pub buffer_grace: Duration,
    /// How long a call may wait for a stream to its component.
    pub upstream_wait: Duration,
    /// One log line per burst of each limit's hits (on this shard).
    pub logs: LimitLogs,
}

/// The bursts of each limit a call can hit (see [`Burst`]).
#[derive(Debug, Default, Clone)]
pub struct LimitLogs {
    pub over_budget: Burst,
    pub idle: Burst,
    pub upstream: Burst,
    pub headers: Burst,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            buffer_grace: Duration::from_secs(2),
            upstream_wait: Duration::from_secs(5),
            logs: LimitLogs::default(),
        }
    }
}

/// Logs a limit's first hit, then at most once per `QUIET` while it keeps
/// being hit (with how many hits the quiet period hid).
#[derive(Debug, Default)]
pub struct Burst {
    last: Cell<Option<Instant>>,
    hidden: Cell<u64>,
}

/// A copy starts its own bursts (each shard logs its own).
impl Clone for Burst {
    fn clone(&self) -> Self {
        Self::default()
    }
}

const QUIET: Duration = Duration::from_secs(10);

impl Burst {
    /// Whether to log this hit, and how many hits went unlogged before it.
    pub fn hit(&self) -> Option<u64> {
        let now = Instant::now();
        match self.last.get() {
            Some(last) if now.saturating_duration_since(last) < QUIET => {
                self.hidden.set(self.hidden.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.hidden.replace(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_add_up_per_connection_and_shard() {
        let shard = ShardBudget::new(100, None);
        let a = ConnBudget::new(60, Rc::clone(&shard));
        let b = ConnBudget::new(60, Rc::clone(&shard));
        a.charge(50);
        assert_eq!(a.spent(), None);
        a.charge(10);
        assert_eq!(a.spent(), Some(Spent::Connection));
        b.charge(40);
        assert_eq!(b.spent(), Some(Spent::Shard), "the shard holds 100");
        a.refund(60);
        assert_eq!((a.spent(), b.spent()), (None, None));
        assert_eq!(shard.held(), 40);
    }

    #[test]
    fn the_reset_bucket_allows_its_rate_per_second() {
        let mut bucket = ResetBucket::default();
        let t0 = Instant::now();
        assert!((0..10).all(|_| bucket.allow(10, t0)));
        assert!(!bucket.allow(10, t0), "the eleventh in one instant");
        assert!(bucket.allow(10, t0 + Duration::from_millis(150)));
        assert!(!bucket.allow(10, t0 + Duration::from_millis(150)));
        assert!((0..1000).all(|_| ResetBucket::default().allow(0, t0)));
    }

    #[test]
    fn a_burst_is_logged_once() {
        let burst = Burst::default();
        assert_eq!(burst.hit(), Some(0));
        assert_eq!(burst.hit(), None);
        assert_eq!(burst.hit(), None);
        burst.last.set(Some(Instant::now() - QUIET));
        assert_eq!(burst.hit(), Some(2));
    }
}
