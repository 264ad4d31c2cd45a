//! The shard's own HTTP/2 (h2c) connections to components, over their Unix
//! sockets: opened lazily, shared by concurrent calls (up to the peer's
//! max concurrent streams, which h2 enforces), dropped when the pod leaves
//! the routing snapshot or the connection fails.
//!
//! Two endpoints are the same upstream when they have the same pod ordinal
//! and the same incarnation (a container started again serves the same
//! socket path but is a new process): that pair is the pool key.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use futures::future::{FutureExt, LocalBoxFuture, Shared};
use h2::client::SendRequest;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::pool::{Endpoint, Peer, Snapshot};

pub type Key = (u64, u64);

type Connecting = Shared<LocalBoxFuture<'static, Result<SendRequest<Bytes>, String>>>;

struct Upstream {
    connection: Connecting,
    outstanding: usize,
}

#[derive(Default)]
pub struct Upstreams {
    map: RefCell<HashMap<Key, Upstream>>,
    /// The snapshot generation the map was last pruned against.
    generation: std::cell::Cell<u64>,
    /// Breaks ties between equally loaded endpoints.
    turn: std::cell::Cell<usize>,
}

pub fn key(endpoint: &Endpoint) -> Key {
    (endpoint.id.ordinal(), endpoint.incarnation)
}

impl Upstreams {
    /// Least outstanding requests on this shard; ties go round-robin (the
    /// scan starts one endpoint further each call). One pass, one lookup
    /// per endpoint.
    pub fn pick<'a>(&self, endpoints: &'a [Endpoint]) -> &'a Endpoint {
        let map = self.map.borrow();
        let turn = self.turn.get();
        self.turn.set(turn.wrapping_add(1));
        let start = turn % endpoints.len().max(1);
        let (head, tail) = endpoints.split_at(start);
        let mut best = &endpoints[start.min(endpoints.len().saturating_sub(1))];
        let mut least = usize::MAX;
        for endpoint in tail.iter().chain(head) {
            let load = map.get(&key(endpoint)).map_or(0, |u| u.outstanding);
            if load < least {
                (best, least) = (endpoint, load);
                if load == 0 {
                    break; // nobody beats an idle endpoint
                }
            }
        }
        best
    }

    /// A ready sender to `endpoint`, connecting if needed, with the call
    /// counted as outstanding until [`Upstreams::release`].
    pub fn checkout(
        &self,
        endpoint: &Endpoint,
    ) -> impl std::future::Future<Output = Result<SendRequest<Bytes>, String>> + '_ {
        let key = key(endpoint);
        let connecting = {
            let mut map = self.map.borrow_mut();
            let upstream = map.entry(key).or_insert_with(|| Upstream {
                connection: connect(endpoint.socket.clone(), endpoint.peer)
                    .boxed_local()
                    .shared(),
                outstanding: 0,
            });
            upstream.outstanding += 1;
            upstream.connection.clone()
        };
        async move {
            let sender = match connecting.await {
                Ok(sender) => sender,
                Err(e) => {
                    self.forget(key);
                    return Err(e);
                }
            };
            match sender.ready().await {
                Ok(sender) => Ok(sender),
                Err(e) => {
                    // The connection died (component exited or reset it): the
                    // next call connects anew.
                    self.forget(key);
                    Err(format!("connection to the component failed: {e}"))
                }
            }
        }
    }

    pub fn release_key(&self, key: Key) {
        if let Some(u) = self.map.borrow_mut().get_mut(&key) {
            u.outstanding = u.outstanding.saturating_sub(1);
        }
    }

    pub fn forget(&self, key: Key) {
        self.map.borrow_mut().remove(&key);
    }

    /// Drops the connections to endpoints that left the snapshot (calls in
    /// flight keep theirs until they end). Cheap when nothing changed.
    pub fn follow(&self, snapshot: &Snapshot) {
        if snapshot.generation() == self.generation.get() {
            return;
        }
        self.generation.set(snapshot.generation());
        let live: HashSet<Key> = snapshot.endpoints().map(key).collect();
        self.map.borrow_mut().retain(|k, _| live.contains(k));
    }
}

/// Bytes a component may send on one call before the shard takes them.
const STREAM_WINDOW: u32 = 1 << 20;
/// The largest window HTTP/2 allows (2^31 - 1).
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

async fn connect(socket: PathBuf, peer: Peer) -> Result<SendRequest<Bytes>, String> {
    // The one safe path to a pod's socket (no symlink, the container's own
    // listener); non-blocking, so it never stalls the shard.
    let stream = crate::pool::socket::connect(&socket, Some(peer))
        .map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    // SAFETY: the descriptor moves out of the std stream into glommio's.
    let stream = unsafe {
        <glommio::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(
            std::os::fd::IntoRawFd::into_raw_fd(stream),
        )
    };
    // Only the stream windows bound what a component may send ahead (the
    // calls' outboxes push back through them). A connection window smaller
    // than their sum would let a few clients that stop reading use it up and
    // stall every other call to the pod on this core.
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(stream.compat())
        .await
        .map_err(|e| format!("HTTP/2 handshake with {}: {e}", socket.display()))?;
    let path = Rc::new(socket);
    glommio::spawn_local(async move {
        if let Err(e) = connection.await {
            tracing::debug!(socket = %path.display(), error = %e, "upstream connection ended");
        }
    })
    .detach();
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u64) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint {
                id: format!("x.com:a.S@1.0.0#{i}").parse().unwrap(),
                socket: format!("/nonexistent/{i}.sock").into(),
                incarnation: 1,
                peer: Peer::default(),
            })
            .collect()
    }

    fn ordinals(upstreams: &Upstreams, endpoints: &[Endpoint], picks: usize) -> Vec<u64> {
        (0..picks)
            .map(|_| upstreams.pick(endpoints).id.ordinal())
            .collect()
    }

    #[test]
    fn idle_endpoints_take_turns() {
        let (upstreams, endpoints) = (Upstreams::default(), endpoints(3));
        assert_eq!(ordinals(&upstreams, &endpoints, 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn the_least_loaded_endpoint_wins() {
        let (upstreams, endpoints) = (Upstreams::default(), endpoints(3));
        // Outstanding calls: #0 two, #1 one, #2 two (checkouts that are
        // never awaited only count; they connect nowhere).
        for i in [0, 0, 1, 2, 2] {
            drop(upstreams.checkout(&endpoints[i]));
        }
        assert_eq!(ordinals(&upstreams, &endpoints, 3), [1, 1, 1]);
        upstreams.release_key(key(&endpoints[0]));
        upstreams.release_key(key(&endpoints[2]));
        // Now all carry one: turns again.
        let picks = ordinals(&upstreams, &endpoints, 3);
        assert!(
            picks.contains(&0) && picks.contains(&1) && picks.contains(&2),
            "{picks:?}"
        );
    }
}
