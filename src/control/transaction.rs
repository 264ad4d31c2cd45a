//! The pod transaction: the one path of every mutating CRI verb.
//!
//! A verb [`Runtime::begin`]s with the pod's operation lock (the kubelet may
//! retry a call while the first still runs), asks the rule book
//! (`lifecycle.rs`) for the target state, performs its effect, and ends
//! with [`Runtime::commit`]: the pod pool is published if routing changed,
//! the pod's record is persisted once (whatever the outcome: a failed start
//! changes state too), and the lock is released. Status calls never take
//! the operation lock, and nothing holds the store's mutex across
//! filesystem work or a wait.

use super::runtime::Runtime;
use super::Error;
use crate::pool::PodId;

/// A mutating call in progress on one pod.
pub struct Op {
    pub id: PodId,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

impl Runtime {
    /// Starts a transaction on `id`, once the calls before it on that pod
    /// are done.
    pub async fn begin(&self, id: &PodId) -> Op {
        Op {
            id: id.clone(),
            _lock: self.lock_pod(id).await,
        }
    }

    /// `begin` for a pod no call can know yet (RunPodSandbox's new one).
    pub fn try_begin(&self, id: &PodId) -> Option<Op> {
        let lock = self.op_lock(id);
        let guard = lock.try_lock_owned().ok()?;
        Some(Op {
            id: id.clone(),
            _lock: guard,
        })
    }

    /// Ends a transaction: publishes routing changes, persists the pod
    /// (its absence, if it was removed), releases the lock. The call
    /// succeeds only if its effect and the write both did.
    pub async fn commit<T>(&self, op: Op, result: Result<T, Error>) -> Result<T, Error> {
        let (write, gone) = {
            let mut store = self.store();
            self.publish_changes(&mut store);
            let gone = !store.pods.contains_key(&op.id);
            drop(store);
            (self.persist(&op.id), gone)
        };
        let saved = write.await;
        let id = op.id.clone();
        drop(op);
        if gone {
            self.forget_lock(&id);
        }
        let value = result?;
        saved?;
        Ok(value)
    }
}
