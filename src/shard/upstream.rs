//! The shard's own HTTP/2 (h2c) connections to components, over their Unix
//! sockets: opened lazily, shared by concurrent calls (up to the peer's
//! max concurrent streams, which h2 enforces), dropped when the pod leaves
//! the routing snapshot or the connection fails.
//!
//! Two endpoints are the same upstream when they have the same pod ordinal
//! and the same incarnation (a container started again serves the same
//! socket path but is a new process): that pair is the pool key.
//!
//! A call counts as outstanding on its upstream from checkout until its
//! [`Outstanding`] guard drops, whatever way the call ends; the count is
//! mirrored into one of the shard's own endpoint cells (`pool::metrics`,
//! a plain store, no lock) for `/debug/pool`. Opening the socket itself is
//! [`open_socket`], the one place that connects to a pod.
//!
//! A component may cap its concurrent streams (HTTP/2 SETTINGS). The calls
//! beyond the cap wait in that upstream's own queue, bounded (a full queue
//! refuses at once), in arrival order; each holds a [`StreamPermit`] from
//! the time it may open its stream until it ends. So a capped or slow
//! component makes only its own calls wait: h2 would otherwise queue them
//! without bound, and the caller's deadline would be the only way out.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use futures::future::{FutureExt, LocalBoxFuture, Shared};
use h2::client::SendRequest;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::counters::Counters;
use crate::pool::metrics::EndpointCell;
use crate::pool::{Endpoint, Peer, Snapshot};

pub type Key = (u64, u64);

type Connecting = Shared<LocalBoxFuture<'static, Result<SendRequest<Bytes>, String>>>;

struct Upstream {
    connection: Connecting,
    outstanding: usize,
    /// Its endpoint cell in the shard's metrics block, if one was free.
    cell: Option<usize>,
    /// Calls holding a stream permit.
    streams: usize,
    /// Calls waiting for one, oldest first.
    waiting: VecDeque<Rc<Waiter>>,
}

/// A call waiting for a stream permit.
#[derive(Default)]
struct Waiter {
    /// A released permit was handed to this waiter.
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Waiter {
    fn grant(&self) {
        self.granted.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Calls that may wait for one upstream's streams, by default.
pub const DEFAULT_QUEUE: usize = 1024;

/// Why a call got no stream to its component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoStream {
    /// Connecting to the component failed, or its connection died.
    Failed(String),
    /// The component is at its stream limit and its queue is full.
    QueueFull { streams: usize, queue: usize },
}

impl std::fmt::Display for NoStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoStream::Failed(e) => f.write_str(e),
            NoStream::QueueFull { streams, queue } => write!(
                f,
                "the component is at its limit of {streams} concurrent streams and {queue} calls wait for it on this core"
            ),
        }
    }
}

pub struct Upstreams {
    map: RefCell<HashMap<Key, Upstream>>,
    /// Where outstanding counts are mirrored (none in some unit tests).
    cells: Option<Cells>,
    /// Calls that may wait for one upstream's streams.
    queue: usize,
    /// The HTTP/2 stream window of new connections.
    window: u32,
    /// The snapshot generation the map was last pruned against.
    generation: std::cell::Cell<u64>,
    /// Breaks ties between equally loaded endpoints.
    turn: std::cell::Cell<usize>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::with_limits(DEFAULT_QUEUE, DEFAULT_WINDOW)
    }
}

pub fn key(endpoint: &Endpoint) -> Key {
    (endpoint.id.ordinal(), endpoint.incarnation)
}

/// The shard's endpoint cells and which of them are free.
struct Cells {
    counters: Rc<Counters>,
    free: RefCell<Vec<usize>>,
    next: std::cell::Cell<usize>,
}

impl Cells {
    fn take(&self, key: Key) -> Option<usize> {
        let i = self.free.borrow_mut().pop().or_else(|| {
            let i = self.next.get();
            self.counters.get().endpoint_cell(i)?;
            self.next.set(i + 1);
            Some(i)
        })?;
        self.cell(Some(i))?.take(key.0, key.1);
        Some(i)
    }

    fn cell(&self, i: Option<usize>) -> Option<&EndpointCell> {
        self.counters.get().endpoint_cell(i?)
    }

    fn free(&self, i: Option<usize>) {
        if let (Some(i), Some(cell)) = (i, self.cell(i)) {
            cell.free();
            self.free.borrow_mut().push(i);
        }
    }
}

impl Upstreams {
    /// A pool whose upstreams queue at most `queue` calls each beyond
    /// their components' stream limits, and let a component send `window`
    /// bytes of a call ahead of its client (see [`window_for`]).
    pub fn with_limits(queue: usize, window: u32) -> Self {
        Self {
            map: RefCell::default(),
            queue,
            window,
            generation: Cell::default(),
            turn: Cell::default(),
            cells: None,
        }
    }

    /// The same pool, mirroring its outstanding counts into the shard's
    /// endpoint cells.
    pub fn reporting(mut self, counters: Rc<Counters>) -> Self {
        self.cells = Some(Cells {
            counters,
            free: RefCell::default(),
            next: std::cell::Cell::new(0),
        });
        self
    }

    /// Mirrors an upstream's count into its cell.
    fn report(&self, upstream: &Upstream) {
        if let Some(cell) = self.cells.as_ref().and_then(|c| c.cell(upstream.cell)) {
            cell.set(upstream.outstanding as u64);
        }
    }

    fn free_cell(&self, upstream: &Upstream) {
        if let Some(cells) = &self.cells {
            cells.free(upstream.cell);
        }
    }

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

    /// Counts a call as outstanding on `endpoint` (until the returned guard
    /// drops) and gives the future of a ready sender to it and the permit
    /// to open one stream, connecting if needed and waiting in the
    /// upstream's queue while the component is at its stream limit.
    pub fn checkout(
        &self,
        endpoint: &Endpoint,
    ) -> (
        Outstanding<'_>,
        impl std::future::Future<Output = Result<(SendRequest<Bytes>, StreamPermit<'_>), NoStream>> + '_,
    ) {
        let key = key(endpoint);
        let connecting = {
            let mut map = self.map.borrow_mut();
            let upstream = map.entry(key).or_insert_with(|| Upstream {
                connection: connect(endpoint.socket.clone(), endpoint.peer, self.window)
                    .boxed_local()
                    .shared(),
                outstanding: 0,
                cell: self.cells.as_ref().and_then(|c| c.take(key)),
                streams: 0,
                waiting: VecDeque::new(),
            });
            upstream.outstanding += 1;
            self.report(upstream);
            upstream.connection.clone()
        };
        let outstanding = Outstanding {
            upstreams: self,
            key,
        };
        let ready = async move {
            let sender = match connecting.await {
                Ok(sender) => sender,
                Err(e) => {
                    self.forget(key);
                    return Err(NoStream::Failed(e));
                }
            };
            let permit = self.permit(key, sender.current_max_send_streams()).await?;
            match sender.ready().await {
                Ok(sender) => Ok((sender, permit)),
                Err(e) => {
                    // The connection died (component exited or reset it): the
                    // next call connects anew.
                    self.forget(key);
                    Err(NoStream::Failed(format!(
                        "connection to the component failed: {e}"
                    )))
                }
            }
        };
        (outstanding, ready)
    }

    /// A permit to open one stream on upstream `key` whose component allows
    /// `max` at once: at once if one is free and nobody waits, else in
    /// turn (refused when the queue is full).
    async fn permit(&self, key: Key, max: usize) -> Result<StreamPermit<'_>, NoStream> {
        let waiter = {
            let mut map = self.map.borrow_mut();
            let Some(u) = map.get_mut(&key) else {
                // Forgotten meanwhile (its connection died): go on, the
                // stream fails on its own.
                return Ok(StreamPermit {
                    upstreams: self,
                    key: None,
                });
            };
            if u.streams < max && u.waiting.is_empty() {
                u.streams += 1;
                return Ok(StreamPermit {
                    upstreams: self,
                    key: Some(key),
                });
            }
            if u.waiting.len() >= self.queue {
                return Err(NoStream::QueueFull {
                    streams: u.streams,
                    queue: u.waiting.len(),
                });
            }
            let waiter = Rc::new(Waiter::default());
            u.waiting.push_back(Rc::clone(&waiter));
            waiter
        };
        let mut waiting = Waiting {
            upstreams: self,
            key,
            waiter,
            done: false,
        };
        poll_fn(|cx| {
            if waiting.waiter.granted.get() {
                return Poll::Ready(());
            }
            *waiting.waiter.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        waiting.done = true;
        // The releaser kept the stream counted for this call.
        Ok(StreamPermit {
            upstreams: self,
            key: Some(key),
        })
    }

    /// A stream on `key` ended: its permit goes to the oldest waiter, or
    /// back to the pool.
    fn release_stream(&self, key: Key) {
        let next = {
            let mut map = self.map.borrow_mut();
            let Some(u) = map.get_mut(&key) else { return };
            match u.waiting.pop_front() {
                Some(next) => next,
                None => {
                    u.streams = u.streams.saturating_sub(1);
                    return;
                }
            }
        };
        next.grant();
    }

    fn release(&self, key: Key) {
        if let Some(u) = self.map.borrow_mut().get_mut(&key) {
            u.outstanding = u.outstanding.saturating_sub(1);
            self.report(u);
        }
    }

    fn forget(&self, key: Key) {
        if let Some(u) = self.map.borrow_mut().remove(&key) {
            self.free_cell(&u);
            // Its waiters go on and fail on the dead connection.
            for waiter in u.waiting {
                waiter.grant();
            }
        }
    }

    /// Calls holding a stream permit and calls waiting for one on the
    /// upstream of `endpoint`.
    pub fn streams(&self, endpoint: &Endpoint) -> (usize, usize) {
        self.map
            .borrow()
            .get(&key(endpoint))
            .map_or((0, 0), |u| (u.streams, u.waiting.len()))
    }

    /// Drops the connections to endpoints that left the snapshot (calls in
    /// flight keep theirs until they end). Cheap when nothing changed.
    pub fn follow(&self, snapshot: &Snapshot) {
        if snapshot.generation() == self.generation.get() {
            return;
        }
        self.generation.set(snapshot.generation());
        let live: HashSet<Key> = snapshot.endpoints().map(key).collect();
        self.map.borrow_mut().retain(|k, u| {
            let keep = live.contains(k);
            if !keep {
                self.free_cell(u);
            }
            keep
        });
    }
}

/// One call counted as outstanding on an upstream (for
/// [`Upstreams::pick`]); released when dropped.
#[must_use = "the call counts as outstanding only while the guard lives"]
pub struct Outstanding<'a> {
    upstreams: &'a Upstreams,
    key: Key,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.upstreams.release(self.key);
    }
}

/// The right to one stream on an upstream (see the module doc); handed on
/// to the next waiter when dropped.
#[must_use = "the stream counts against the component's limit only while the permit lives"]
pub struct StreamPermit<'a> {
    upstreams: &'a Upstreams,
    /// None: the upstream was forgotten before the permit was taken.
    key: Option<Key>,
}

impl Drop for StreamPermit<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.upstreams.release_stream(key);
        }
    }
}

/// A call in an upstream's queue; leaving it before its turn (the call
/// ended) takes it out, and leaving with a permit handed over passes the
/// permit on.
struct Waiting<'a> {
    upstreams: &'a Upstreams,
    key: Key,
    waiter: Rc<Waiter>,
    /// The permit was taken.
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.waiter.granted.get() {
            self.upstreams.release_stream(self.key);
            return;
        }
        if let Some(u) = self.upstreams.map.borrow_mut().get_mut(&self.key) {
            u.waiting.retain(|w| !Rc::ptr_eq(w, &self.waiter));
        }
    }
}

/// The HTTP/2 stream window when no budget sets it.
pub const DEFAULT_WINDOW: u32 = 64 * 1024;

/// Bytes a component may send on one call before the shard takes them: at
/// most this much of a call's response is ever buffered here (the call
/// opens the window again only as its client takes the bytes, stream.rs).
/// So a connection's streams together hold at most its budget, by
/// construction: the budget shared by its streams, within 16 KiB (more
/// than the longest message held back whole, stream.rs `HOLD_BACK`) and
/// 1 MiB.
pub fn window_for(conn_budget: usize, streams_per_conn: usize) -> u32 {
    let share = conn_budget / streams_per_conn.max(1);
    share.clamp(16 * 1024, 1 << 20) as u32
}
/// The largest window HTTP/2 allows (2^31 - 1).
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// Opens the connection to a pod's socket: path → connected stream. The
/// one place the data plane connects to a component: through the one safe
/// path to a pod's socket (`pool::socket`: no symlink followed, and the
/// listener must be the container's own), non-blocking, so it never stalls
/// the shard.
fn open_socket(path: &Path, peer: Peer) -> std::io::Result<glommio::net::UnixStream> {
    let stream = crate::pool::socket::connect(path, Some(peer))?;
    // SAFETY: the descriptor moves out of the std stream into glommio's,
    // which owns it from here on.
    Ok(unsafe {
        <glommio::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(
            std::os::fd::IntoRawFd::into_raw_fd(stream),
        )
    })
}

async fn connect(socket: PathBuf, peer: Peer, window: u32) -> Result<SendRequest<Bytes>, String> {
    let stream =
        open_socket(&socket, peer).map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    // Only the stream windows bound what a component may send ahead (the
    // calls' outboxes push back through them). A connection window smaller
    // than their sum would let a few clients that stop reading use it up and
    // stall every other call to the pod on this core.
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(window)
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
        let mut guards: Vec<_> = [0, 0, 1, 2, 2]
            .into_iter()
            .map(|i| upstreams.checkout(&endpoints[i]).0)
            .collect();
        assert_eq!(ordinals(&upstreams, &endpoints, 3), [1, 1, 1]);
        // Dropping a guard releases its call: #0 and #2 end one each.
        drop(guards.remove(4));
        drop(guards.remove(0));
        // Now all carry one: turns again.
        let picks = ordinals(&upstreams, &endpoints, 3);
        assert!(
            picks.contains(&0) && picks.contains(&1) && picks.contains(&2),
            "{picks:?}"
        );
        drop(guards);
    }

    #[test]
    fn a_guard_releases_on_every_way_out() {
        let (upstreams, endpoints) = (Upstreams::default(), endpoints(2));
        let load = |i: usize| {
            upstreams
                .map
                .borrow()
                .get(&key(&endpoints[i]))
                .map_or(0, |u| u.outstanding)
        };
        let early_return = |fail: bool| -> Result<(), ()> {
            let (_outstanding, _ready) = upstreams.checkout(&endpoints[0]);
            if fail {
                return Err(()); // an early return releases too
            }
            Ok(())
        };
        assert!(early_return(true).is_err());
        assert!(early_return(false).is_ok());
        assert_eq!(load(0), 0);
        let (held, _) = upstreams.checkout(&endpoints[1]);
        assert_eq!(load(1), 1);
        // #1 is busy: #0 wins every pick.
        assert_eq!(ordinals(&upstreams, &endpoints, 2), [0, 0]);
        drop(held);
        assert_eq!(load(1), 0);
    }

    #[test]
    fn outstanding_counts_reach_the_shards_endpoint_cells() {
        let counters = crate::shard::pipe::test_counters();
        let upstreams = Upstreams::default().reporting(Rc::clone(&counters));
        let endpoints = endpoints(2);
        let seen = || counters.get().outstanding();
        let a = upstreams.checkout(&endpoints[0]).0;
        let b = upstreams.checkout(&endpoints[0]).0;
        let c = upstreams.checkout(&endpoints[1]).0;
        assert_eq!(seen().get(&(0, 1)), Some(&2));
        assert_eq!(seen().get(&(1, 1)), Some(&1));
        drop((a, c));
        assert_eq!(seen().get(&(0, 1)), Some(&1));
        assert_eq!(seen().get(&(1, 1)), Some(&0));
        // An upstream forgotten (its connection failed) frees its cell, and
        // the cell serves the next endpoint.
        upstreams.forget(key(&endpoints[1]));
        assert_eq!(seen().get(&(1, 1)), None);
        drop(b);
        let d = upstreams.checkout(&endpoints[1]).0;
        assert_eq!(seen().get(&(1, 1)), Some(&1));
        assert_eq!(seen().len(), 2);
        drop(d);
    }
}
