//! RCU publication of the routing snapshot: one writer (the control
//! thread), one reader per shard, no locks on the read side.
//!
//! The snapshot lives in an `rcu_cell::RcuCell`. Reading it clones an `Arc`,
//! which writes the shared reference count: done per request from every
//! core, that one cache line would bounce between them. So each shard keeps
//! its own `Arc` and only asks the cell again when the published generation
//! (an atomic that changes only on publication) differs from its own: the
//! per-request cost is one shared, read-mostly load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{PodPool, Snapshot};

struct Shared {
    cell: rcu_cell::RcuCell<Snapshot>,
    generation: AtomicU64,
}

/// The control thread's handle: publishes a new snapshot of the pool.
pub struct Publisher {
    shared: Arc<Shared>,
}

/// A shard's handle: the current snapshot, refreshed when it changed.
pub struct Reader {
    shared: Arc<Shared>,
    local: Arc<Snapshot>,
}

impl Publisher {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                cell: rcu_cell::RcuCell::new(Snapshot::default()),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// Publishes a snapshot of `pool`. When this returns, every reader's
    /// next [`Reader::current`] sees it.
    pub fn publish(&self, pool: &PodPool) -> u64 {
        let generation = self.shared.generation.load(Ordering::Relaxed) + 1;
        self.shared.cell.write(Snapshot::build(pool, generation));
        self.shared.generation.store(generation, Ordering::Release);
        generation
    }

    pub fn reader(&self) -> Reader {
        Reader {
            shared: Arc::clone(&self.shared),
            local: self.shared.cell.read().unwrap_or_default(),
        }
    }
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

impl Reader {
    /// The newest published snapshot.
    pub fn current(&mut self) -> &Arc<Snapshot> {
        let published = self.shared.generation.load(Ordering::Acquire);
        if published != self.local.generation() {
            if let Some(fresh) = self.shared.cell.read() {
                self.local = fresh;
            }
        }
        &self.local
    }

    /// Reads through the cell every time: the baseline the benchmarks
    /// compare [`Reader::current`] against.
    pub fn read_through(&self) -> Arc<Snapshot> {
        self.shared.cell.read().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{PodId, Route};

    #[test]
    fn readers_see_a_publication_at_once() {
        let publisher = Publisher::new();
        let mut readers: Vec<Reader> = (0..3).map(|_| publisher.reader()).collect();
        let id: PodId = "x.com:a.S@1.0.0#0".parse().unwrap();
        let mut pool = PodPool::default();
        pool.insert_pod(&id);
        pool.set_running(&id, "/s".into(), 1);
        let generation = publisher.publish(&pool);
        for r in &mut readers {
            assert_eq!(r.current().generation(), generation);
            assert!(matches!(
                r.current().route("x.com", "a.S", None),
                Route::Serve(_)
            ));
        }
        pool.set_not_running(&id);
        publisher.publish(&pool);
        let handles: Vec<_> = readers
            .into_iter()
            .map(|mut r| {
                std::thread::spawn(move || {
                    matches!(r.current().route("x.com", "a.S", None), Route::NotRunning)
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap());
        }
    }
}
