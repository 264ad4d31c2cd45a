//! One TCP connection: TLS (or none, for h2c), the HTTP/2 handshake, then
//! its streams, each served by its own task (stream.rs) on the shard's one
//! call path. Owns the connection's limits: the handshake timeout, the idle
//! timeout, h2's stream, header and reset limits, and a budget of streams
//! the client resets once their call started (a rapid-reset flood that
//! slips past h2's own pending-accept limit): spent, the connection ends
//! with GOAWAY ENHANCE_YOUR_CALM.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{select, Either};
use tokio::io::{AsyncRead, AsyncWrite};

use super::stream::{self, Ended};
use super::Server;
use crate::shard::signal::Signal;

/// Bytes a client may send ahead on one stream before its call takes them.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// ... and on the whole connection: what h2 may hold for the connection's
/// streams, whose calls have not taken it yet.
pub const CONNECTION_WINDOW: u32 = 4 << 20;
/// Response bytes h2 may hold per stream beyond what the socket took: with
/// the stream's outbox (256 KiB) all a never-reading client costs per
/// stream.
pub const SEND_BUFFER: usize = 64 * 1024;
/// Largest request header list (the same as HTTP/3's field section).
pub const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams reset by the client while still in h2's accept queue before
/// the connection is ended (h2's rapid-reset guard).
pub const PENDING_ACCEPT_RESETS: usize = 20;
/// Streams h2 may reset for the client's protocol errors before it ends
/// the connection.
pub const LOCAL_ERROR_RESETS: usize = 256;
/// The client-reset budget: a burst of this many streams reset after
/// their call started...
pub const RESET_BURST: f64 = 200.0;
/// ... refilled at this rate.
pub const RESETS_PER_SECOND: f64 = 50.0;
/// How long a connection that is closing (GOAWAY sent) may take to finish
/// its streams before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Serves one accepted connection until it ends.
pub async fn serve(server: Rc<Server>, tcp: glommio::net::TcpStream, tls: bool) {
    let counters = Rc::clone(&server.shared.counters);
    let _ = tcp.set_nodelay(true);
    let io = tokio_util::compat::FuturesAsyncReadCompatExt::compat(tcp);
    let timeout = server.settings.handshake_timeout;
    let shard = server.shard;
    if tls {
        let handshake = server.tls.accept(io);
        match within(timeout, handshake).await {
            Some(Ok(io)) => h2(server, io, timeout).await,
            Some(Err(e)) => {
                counters.get().tcp_handshakes_failed.inc();
                tracing::debug!(shard, error = %e, "TLS handshake failed");
            }
            None => {
                counters.get().tcp_handshakes_failed.inc();
                tracing::debug!(shard, "TLS handshake timed out");
            }
        }
    } else {
        h2(server, io, timeout).await
    }
}

/// `future`, or `None` once `timeout` passed.
async fn within<F: Future>(timeout: Duration, future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    let timer = std::pin::pin!(glommio::timer::sleep(timeout));
    match select(future, timer).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

fn builder(server: &Server) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(server.settings.max_streams as u32)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(SEND_BUFFER)
        .max_pending_accept_reset_streams(PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(LOCAL_ERROR_RESETS));
    b
}

/// A token bucket of client resets.
struct ResetBudget {
    tokens: Cell<f64>,
    at: Cell<Instant>,
}

impl ResetBudget {
    fn new() -> Self {
        Self {
            tokens: Cell::new(RESET_BURST),
            at: Cell::new(Instant::now()),
        }
    }

    /// Spends one; false once the budget is gone.
    fn spend(&self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at.get()).as_secs_f64() * RESETS_PER_SECOND;
        self.at.set(now);
        let tokens = (self.tokens.get() + refill).min(RESET_BURST) - 1.0;
        self.tokens.set(tokens);
        tokens >= 0.0
    }
}

/// Why the accept loop woke.
enum Event<T> {
    Stream(Option<Result<T, h2::Error>>),
    Idle,
    Signal,
}

async fn h2<IO>(server: Rc<Server>, io: IO, handshake_timeout: Duration)
where
    IO: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let counters = Rc::clone(&server.shared.counters);
    let shard = server.shard;
    // The connection's calls' buffered bytes, counted in the shard's budget.
    let buffers = server.shared.conn_budget();
    let mut conn = match within(
        handshake_timeout,
        builder(&server).handshake::<_, Bytes>(io),
    )
    .await
    {
        Some(Ok(conn)) => conn,
        Some(Err(e)) => {
            counters.get().tcp_handshakes_failed.inc();
            tracing::debug!(shard, error = %e, "HTTP/2 handshake failed");
            return;
        }
        None => {
            counters.get().tcp_handshakes_failed.inc();
            tracing::debug!(shard, "HTTP/2 handshake timed out");
            return;
        }
    };
    counters.get().tcp_handshakes_done.inc();
    let signal = Rc::new(Signal::default());
    server.register(&signal);
    let active = Rc::new(Cell::new(0usize));
    let budget = Rc::new(ResetBudget::new());
    let abuse = Rc::new(Cell::new(false));
    let mut idle_since = Some(Instant::now());
    let mut closing: Option<Instant> = None;
    loop {
        if abuse.get() && closing.is_none() {
            counters.get().h2_goaway_abuse.inc();
            tracing::debug!(shard, "client reset budget spent: GOAWAY");
            conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            closing = Some(Instant::now());
        }
        if server.draining.get() && closing.is_none() {
            conn.graceful_shutdown();
            closing = Some(Instant::now());
        }
        if active.get() > 0 {
            idle_since = None;
        } else if idle_since.is_none() {
            idle_since = Some(Instant::now());
        }
        let wait = match (closing, idle_since) {
            (Some(since), _) => Some(CLOSE_GRACE.saturating_sub(since.elapsed())),
            (None, Some(since)) => {
                Some(server.settings.idle_timeout.saturating_sub(since.elapsed()))
            }
            (None, None) => None,
        };
        let event = {
            let accept = std::pin::pin!(conn.accept());
            let woken = std::pin::pin!(signal.wait());
            let either = select(accept, woken);
            match wait {
                Some(wait) => {
                    let timer = std::pin::pin!(glommio::timer::sleep(wait));
                    match select(either, timer).await {
                        Either::Left((Either::Left((next, _)), _)) => Event::Stream(next),
                        Either::Left((Either::Right(_), _)) => Event::Signal,
                        Either::Right(_) => Event::Idle,
                    }
                }
                None => match either.await {
                    Either::Left((next, _)) => Event::Stream(next),
                    Either::Right(_) => Event::Signal,
                },
            }
        };
        match event {
            Event::Signal => continue,
            Event::Idle if closing.is_some() => break, // the grace is over
            Event::Idle => {
                counters.get().tcp_idle_closed.inc();
                tracing::debug!(shard, "HTTP/2 connection idle: GOAWAY");
                // No stream is open: GOAWAY and close now (a graceful
                // shutdown would wait for the client's PING answer).
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                closing = Some(Instant::now());
            }
            Event::Stream(None) => break,
            Event::Stream(Some(Err(e))) => {
                if e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) {
                    counters.get().h2_goaway_abuse.inc();
                }
                tracing::debug!(shard, error = %e, "HTTP/2 connection ended");
                break;
            }
            Event::Stream(Some(Ok((request, mut respond)))) => {
                // Reset while waiting to be accepted (HEADERS and RST_STREAM
                // in one burst): the call never starts.
                let reset = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(respond.poll_reset(cx).is_ready())
                })
                .await;
                if reset {
                    counters.get().h2_reset_before_call.inc();
                    if !budget.spend() {
                        abuse.set(true);
                    }
                    continue;
                }
                active.set(active.get() + 1);
                let (server, active, budget, abuse, signal, buffers) = (
                    Rc::clone(&server),
                    Rc::clone(&active),
                    Rc::clone(&budget),
                    Rc::clone(&abuse),
                    Rc::clone(&signal),
                    Rc::clone(&buffers),
                );
                glommio::spawn_local(async move {
                    let ended = stream::serve(
                        request,
                        respond,
                        &server.shared,
                        &buffers,
                        &server.alt_svc,
                        server.shard,
                    )
                    .await;
                    active.set(active.get() - 1);
                    if ended == Ended::Reset && !budget.spend() {
                        abuse.set(true);
                    }
                    signal.notify();
                })
                .detach();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_budget_allows_a_burst_then_refuses() {
        let budget = ResetBudget::new();
        for _ in 0..RESET_BURST as usize {
            assert!(budget.spend());
        }
        assert!(!budget.spend());
        // Time refills it.
        budget.at.set(Instant::now() - Duration::from_secs(1));
        assert!(budget.spend());
    }
}
