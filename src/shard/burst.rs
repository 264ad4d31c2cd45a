//! "Logged once per burst": a limit that refuses thousands of packets a
//! second writes one line when it starts refusing, then at most one line
//! per [`QUIET`] with the number refused since the last line, instead of
//! one line per packet (a flood must not also flood the log).
//!
//! Shard-local (a `Cell`); the clock is read only when a limit is hit.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The shortest interval between two lines of one limit on one shard.
pub const QUIET: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Burst {
    last: Cell<Option<Instant>>,
    since: Cell<u64>,
}

impl Burst {
    /// Counts one refusal at `now`; returns how many to report when a
    /// line is due (this one included), `None` while it is not.
    pub fn hit(&self, now: Instant) -> Option<u64> {
        let since = self.since.get() + 1;
        match self.last.get() {
            Some(last) if now.saturating_duration_since(last) < QUIET => {
                self.since.set(since);
                None
            }
            _ => {
                self.last.set(Some(now));
                self.since.set(0);
                Some(since)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_burst() {
        let b = Burst::default();
        let t = Instant::now();
        assert_eq!(b.hit(t), Some(1));
        for i in 0..1000 {
            assert_eq!(b.hit(t + Duration::from_millis(i)), None);
        }
        assert_eq!(b.hit(t + QUIET), Some(1001));
        assert_eq!(b.hit(t + QUIET * 3), Some(1));
    }
}
