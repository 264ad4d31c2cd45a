//! RCU publication of the routing snapshot: one writer (the control
//! thread), one reader per shard, no locks on the read side.
//!
//! The snapshot lives in an `rcu_cell::RcuCell`. Reading it clones an `Arc`,
//! which writes the shared reference count: done per request from every
//! core, that one cache line would bounce between them. So each shard keeps
//! its own `Arc` and only asks the cell again when the published generation
//! (an atomic that changes only on publication) differs from its own: the
//! per-request cost is one shared, read-mostly load.
//!
//! Snapshots are freed on the control thread, never on a shard: a shard
//! that moves to a new snapshot only lets go of its reference to the old
//! one, and the publisher frees each retired snapshot once it holds the
//! last reference. (Freeing a snapshot of 1,000 components costs about
//! 100 µs: on a shard that would be the first call's latency.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::metrics::ComponentSlots;
use super::{PodPool, Snapshot};

struct Shared {
    cell: rcu_cell::RcuCell<Snapshot>,
    generation: AtomicU64,
}

/// The control thread's handle: publishes a new snapshot of the pool.
pub struct Publisher {
    shared: Arc<Shared>,
    /// Replaced snapshots that a reader may still hold (control side only).
    retired: Mutex<Vec<Arc<Snapshot>>>,
    /// The metric slot of each component version published so far.
    slots: Arc<ComponentSlots>,
    /// When the current generation was published.
    published_at: Mutex<std::time::SystemTime>,
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
            retired: Mutex::new(Vec::new()),
            slots: Arc::default(),
            published_at: Mutex::new(std::time::SystemTime::now()),
        }
    }

    /// The component slots the shards' metrics are indexed by.
    pub fn slots(&self) -> Arc<ComponentSlots> {
        Arc::clone(&self.slots)
    }

    /// The current snapshot and when it was published (control side, for
    /// inspection: it clones the `Arc` through the cell).
    pub fn current(&self) -> (Arc<Snapshot>, std::time::SystemTime) {
        let at = *self.published_at.lock().unwrap_or_else(|p| p.into_inner());
        (self.shared.cell.read().unwrap_or_default(), at)
    }

    /// Publishes a snapshot of `pool`. When this returns, every reader's
    /// next [`Reader::current`] sees it.
    pub fn publish(&self, pool: &PodPool) -> u64 {
        let generation = self.shared.generation.load(Ordering::Relaxed) + 1;
        let replaced = self
            .shared
            .cell
            .write(Snapshot::build(pool, generation, &self.slots));
        self.shared.generation.store(generation, Ordering::Release);
        *self.published_at.lock().unwrap_or_else(|p| p.into_inner()) = std::time::SystemTime::now();
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        // Only the cell hands out references, and it no longer holds these:
        // a count of one is ours alone, and stays so.
        retired.retain(|snapshot| Arc::strong_count(snapshot) > 1);
        retired.extend(replaced);
        generation
    }

    /// Snapshots replaced but still held by some reader.
    pub fn retired(&self) -> usize {
        self.retired.lock().map_or(0, |r| r.len())
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
        pool.set_running(&id, "/s".into(), 1, Default::default());
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

    #[test]
    fn readers_never_free_a_snapshot() {
        let publisher = Publisher::new();
        let mut reader = publisher.reader();
        let pool = PodPool::default();
        publisher.publish(&pool);
        let first = Arc::clone(reader.current());
        publisher.publish(&pool);
        reader.current(); // moves on to the second snapshot
                          // Held by us and by the publisher's retired list: the reader's
                          // release was not the last one.
        assert_eq!(Arc::strong_count(&first), 2);
        drop(first);
        publisher.publish(&pool);
        // The first is freed by that publication; the second stays retired
        // while the reader holds it.
        assert_eq!(publisher.retired(), 1);
        reader.current();
        publisher.publish(&pool);
        assert_eq!(publisher.retired(), 1); // only the one the reader holds
    }
}
