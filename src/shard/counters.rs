//! This shard's handle on its counter block (`pool::metrics`): the one
//! `Arc` of the node's metrics is held here, once per shard; calls share
//! the handle by `Rc` (no atomic reference count touched per call), and
//! every count is a plain store into this shard's own cache lines.

use std::sync::Arc;

use crate::pool::metrics::{NodeMetrics, ShardMetrics};

pub struct Counters {
    node: Arc<NodeMetrics>,
    index: usize,
}

impl Counters {
    /// Shard `index`'s block; an index past the node's shard count gets
    /// the last block (never happens: main sizes it from the config).
    pub fn new(node: Arc<NodeMetrics>, index: usize) -> Self {
        let index = index.min(node.shards.len().saturating_sub(1));
        Self { node, index }
    }

    #[inline]
    pub fn get(&self) -> &ShardMetrics {
        &self.node.shards[self.index]
    }
}
