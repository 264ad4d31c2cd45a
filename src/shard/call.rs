//! One gRPC call through the shard: validate, route, take an upstream
//! HTTP/2 stream, pump both directions with backpressure, honour the
//! deadline, and answer every failure with a gRPC status (`respond.rs`).
//!
//! A call sees only its [`CallContext`]: its end of the stream, the shard's
//! routing reader and upstream pool, a waker for its connection, the
//! shard's counters and its limits. It never sends and never touches the
//! connection or the shard, so the one call path serves both transports:
//! HTTP/3 (conn.rs) and HTTP/2 over TCP (tcp/) feed the same [`CallStream`].
//!
//! Limits (limits.rs): a request whose header section is over
//! [`MAX_HEADER_SECTION`] gets RESOURCE_EXHAUSTED; a call its client gave
//! up before it reached the component never reaches it; a call waits for
//! a stream to its component at most `upstream_wait` (UNAVAILABLE); one
//! without `grpc-timeout` ends after `idle_timeout` without a byte moving
//! (DEADLINE_EXCEEDED); the HTTP/2 window of a response opens again only
//! as its client takes the bytes, and while a buffer budget is spent a
//! call whose client took nothing for `buffer_grace` ends with
//! RESOURCE_EXHAUSTED.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{select, Either};
use h2::client::ResponseFuture;
use h2::SendStream;
use quiche::h3::{Header, NameValue};

use super::counters::Counters;
use super::flush::ConnWaker;
use super::grpc::{parse_timeout, FrameLimiter, MessageCursor};
use super::limits::{CallLimits, ConnBudget, ShardBudget, Spent};
use super::respond::{self, CallError};
use super::stream::{CallStream, Inbound};
use super::upstream::{NoStream, Upstreams};
use super::MAX_HEADER_SECTION;
use crate::pool::metrics::{ComponentMetrics, GRPC_CODES, SLOT_NONE};
use crate::pool::{Reader, Route};

/// All a call may use.
pub struct CallContext {
    /// The call's end of its stream.
    pub stream: CallStream,
    /// The shard's routing snapshot reader.
    pub routes: Rc<RefCell<Reader>>,
    /// The shard's upstream pool.
    pub upstreams: Rc<Upstreams>,
    /// Asks for the call's connection to be flushed.
    pub waker: ConnWaker,
    /// Largest request message, in bytes.
    pub max_message_size: usize,
    /// The shard's counters.
    pub counters: Rc<Counters>,
    /// Timeouts the call is held to.
    pub limits: Rc<CallLimits>,
    /// What the call's counters need to know as it goes.
    pub observed: Observed,
}

/// What every call of a shard shares, whatever its transport: the routing
/// reader, the upstream pool, the counters, the size limit.
#[derive(Clone)]
pub struct Shared {
    pub routes: Rc<RefCell<Reader>>,
    pub upstreams: Rc<Upstreams>,
    pub counters: Rc<Counters>,
    pub max_message_size: usize,
    /// Timeouts every call is held to.
    pub limits: Rc<CallLimits>,
    /// The shard's buffer budget, and each connection's share of it.
    pub buffers: Rc<ShardBudget>,
    pub conn_buffer_limit: usize,
}

impl Shared {
    /// The context of one call on `stream`, woken through `waker`.
    pub fn context(&self, stream: CallStream, waker: ConnWaker) -> CallContext {
        CallContext {
            stream,
            routes: Rc::clone(&self.routes),
            upstreams: Rc::clone(&self.upstreams),
            waker,
            max_message_size: self.max_message_size,
            counters: Rc::clone(&self.counters),
            limits: Rc::clone(&self.limits),
            observed: Observed::default(),
        }
    }

    /// A budget for one more connection's buffered bytes.
    pub fn conn_budget(&self) -> Rc<ConnBudget> {
        ConnBudget::new(self.conn_buffer_limit, Rc::clone(&self.buffers))
    }
}

/// What a call learns on its way that its counters need: the component
/// slot once routed, the component's gRPC status once seen.
#[derive(Default)]
pub struct Observed {
    slot: Cell<u32>,
    status: Cell<Option<u8>>,
}

impl Observed {
    fn metrics<'c>(&self, counters: &'c Counters) -> &'c ComponentMetrics {
        counters.get().component(self.slot.get())
    }

    /// The component's `grpc-status`, from its trailers or trailers-only
    /// headers.
    fn status_from(&self, headers: &http::HeaderMap) {
        if let Some(code) = headers
            .get("grpc-status")
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.parse::<u8>().ok())
            .filter(|&c| (c as usize) < GRPC_CODES)
        {
            self.status.set(Some(code));
        }
    }
}

/// Runs one call and counts an answer of the data plane's own in the
/// shard's counters: what either transport spawns per request.
pub async fn serve(ctx: CallContext, headers: Vec<Header>, shard: usize) {
    let counters = Rc::clone(&ctx.counters);
    if let Some(error) = run(ctx, headers).await.filter(CallError::counts) {
        counters.get().answered.inc();
        tracing::debug!(shard, %error, "call answered by the data plane");
    }
}

/// Runs one call to completion; its stream's output ends with a status.
/// Returns the error the data plane answered with, if it did.
pub async fn run(ctx: CallContext, headers: Vec<Header>) -> Option<CallError> {
    let started = Instant::now();
    let outcome = proxy(&ctx, &headers).await.err();
    if let Some(error) = &outcome {
        if respond::answer(&ctx.stream, error) {
            ctx.counters.get().limits.responses_reset.inc();
        }
    }
    ctx.waker.wake();
    let code = match &outcome {
        Some(error) => error.code() as usize,
        // A response without a status is answered UNAVAILABLE by respond.
        None => ctx.observed.status.get().map_or(14, usize::from),
    };
    let metrics = ctx.observed.metrics(&ctx.counters);
    metrics.calls[code].inc();
    metrics.latency.observe(started.elapsed());
    if ctx.observed.slot.get() != SLOT_NONE {
        metrics.active.dec();
    }
    outcome
}

/// What the proxy needs of the request headers.
struct Request<'h> {
    authority: &'h str,
    path: &'h str,
    version: Option<&'h str>,
    timeout: Option<Duration>,
}

fn parse_request(headers: &[Header]) -> Result<Request<'_>, CallError> {
    let (mut method, mut content_type, mut authority, mut path) = (None, None, None, None);
    let (mut version, mut timeout) = (None, None);
    // As HTTP/3 counts a field section (RFC 9114 §4.2.2).
    let size: usize = headers
        .iter()
        .map(|h| h.name().len() + h.value().len() + 32)
        .sum();
    if size > MAX_HEADER_SECTION {
        return Err(CallError::ResourceExhausted(format!(
            "the request's header section of {size} bytes exceeds the limit of {MAX_HEADER_SECTION} bytes"
        )));
    }
    for h in headers {
        match h.name() {
            b":method" => method = Some(h.value()),
            b":authority" => authority = std::str::from_utf8(h.value()).ok(),
            b":path" => path = std::str::from_utf8(h.value()).ok(),
            b"content-type" => content_type = Some(h.value()),
            b"vimana-version" => version = std::str::from_utf8(h.value()).ok(),
            b"grpc-timeout" => timeout = parse_timeout(h.value()),
            _ => {}
        }
    }
    let is_grpc =
        method == Some(b"POST") && content_type.is_some_and(|c| c.starts_with(b"application/grpc"));
    if !is_grpc {
        return Err(CallError::NotGrpc(415));
    }
    let authority = authority.ok_or_else(|| {
        CallError::Unimplemented("the request names no :authority (domain)".into())
    })?;
    let path = path.ok_or_else(|| CallError::Unimplemented("the request has no :path".into()))?;
    Ok(Request {
        authority,
        path,
        version,
        timeout,
    })
}

/// `/SERVICE/METHOD` → SERVICE.
fn service_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some(service)
}

/// The domain of an authority: port stripped, IPv6 brackets kept whole.
fn domain_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map_or(authority, |(host, _)| &host[1..]);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

async fn proxy(ctx: &CallContext, headers: &[Header]) -> Result<(), CallError> {
    let request = parse_request(headers).inspect_err(|e| {
        if matches!(e, CallError::ResourceExhausted(_)) {
            ctx.counters.get().limits.headers_too_large.inc();
            log_limit(&ctx.limits.logs.headers, e);
        }
    })?;
    if ctx.stream.is_aborted() {
        // Reset before it started (a client opening and cancelling calls
        // as fast as it can): nothing to route.
        ctx.counters.get().limits.dropped_before_upstream.inc();
        return Err(CallError::Cancelled);
    }
    let budget = ctx.stream.budget();
    if budget.spent() == Some(Spent::Shard) && budget.hoarding() {
        // The core's buffers are full and this connection holds a share of
        // them: no new window for it until its client reads.
        ctx.counters.get().limits.calls_over_budget.inc();
        let e = CallError::ResourceExhausted(
            "this core's response buffers are full and the connection holds unread responses"
                .into(),
        );
        log_limit(&ctx.limits.logs.over_budget, &e);
        return Err(e);
    }
    let service = service_of(request.path).ok_or_else(|| {
        CallError::Unimplemented(format!("malformed gRPC path {:?}", request.path))
    })?;
    let domain = domain_of(request.authority);
    // Domains are lower case; most clients send them so, sparing a copy.
    let domain: std::borrow::Cow<'_, str> = if domain.bytes().any(|b| b.is_ascii_uppercase()) {
        domain.to_ascii_lowercase().into()
    } else {
        domain.into()
    };

    let upstreams = &*ctx.upstreams;
    // Counted as outstanding on its upstream until this returns.
    let (_outstanding, connecting) = {
        let mut routes = ctx.routes.borrow_mut();
        let snapshot = routes.current();
        upstreams.follow(snapshot);
        let version = match snapshot.route(&domain, service, request.version) {
            Route::Serve(version) => version,
            Route::UnknownDomain => {
                return Err(CallError::Unimplemented(format!(
                    "no component serves domain {domain:?}"
                )))
            }
            Route::UnknownService => {
                return Err(CallError::Unimplemented(format!(
                    "domain {domain:?} has no service {service:?}"
                )))
            }
            Route::UnknownVersion => {
                return Err(CallError::Unimplemented(format!(
                    "service {service:?} of {domain:?} has no version {:?}",
                    request.version.unwrap_or_default()
                )))
            }
            Route::NotRunning => {
                return Err(CallError::Unavailable(format!(
                    "no running container serves {domain}:{service}{}",
                    request.version.map(|v| format!("@{v}")).unwrap_or_default()
                )))
            }
        };
        ctx.observed.slot.set(version.slot);
        ctx.observed.metrics(&ctx.counters).active.inc();
        let endpoint = upstreams.pick(&version.endpoints);
        upstreams.checkout(endpoint)
    };
    let deadline = request.timeout.map(|t| Instant::now() + t);
    let result = async {
        let wait = ctx.limits.upstream_wait;
        let connecting = std::pin::pin!(connecting);
        let (sender, _permit) = match select(
            connecting,
            std::pin::pin!(glommio::timer::sleep(wait)),
        )
        .await
        {
            Either::Left((Ok(ready), _)) => ready,
            Either::Left((Err(NoStream::Failed(e)), _)) => return Err(CallError::Unavailable(e)),
            Either::Left((Err(full), _)) => {
                ctx.counters.get().limits.upstream_queue_full.inc();
                let e = CallError::Unavailable(full.to_string());
                log_limit(&ctx.limits.logs.upstream, &e);
                return Err(e);
            }
            Either::Right(_) => {
                ctx.counters.get().limits.upstream_wait_timeouts.inc();
                let e = CallError::Unavailable(format!(
                        "no stream to the component within {wait:?} (it is at its concurrent stream limit or not answering)"
                    ));
                log_limit(&ctx.limits.logs.upstream, &e);
                return Err(e);
            }
        };
        exchange(ctx, headers, &request, sender, deadline).await
    };
    let result = match request.timeout {
        None => {
            let result = std::pin::pin!(result);
            match select(result, std::pin::pin!(idle(ctx))).await {
                Either::Left((result, _)) => result,
                Either::Right(_) => {
                    ctx.counters.get().limits.idle_timeouts.inc();
                    let e = CallError::DeadlineExceeded(format!(
                        "no bytes moved for {:?} (the node's call idle timeout; set grpc-timeout for longer calls)",
                        ctx.limits.idle_timeout
                    ));
                    log_limit(&ctx.limits.logs.idle, &e);
                    Err(e)
                }
            }
        }
        Some(timeout) => {
            let result = std::pin::pin!(result);
            let timer = std::pin::pin!(glommio::timer::sleep(timeout));
            match select(result, timer).await {
                Either::Left((result, _)) => result,
                Either::Right(_) => Err(CallError::DeadlineExceeded(format!(
                    "deadline of {timeout:?} exceeded"
                ))),
            }
        }
    };
    result
}

/// Resolves once no byte of the call moved either way for the idle
/// timeout (checked every quarter of it: fires within 1¼ of it).
async fn idle(ctx: &CallContext) {
    let tick = ctx.limits.idle_timeout / 4;
    let mut last = ctx.stream.activity();
    let mut quiet = 0;
    while quiet < 4 {
        glommio::timer::sleep(tick).await;
        let now = ctx.stream.activity();
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
}

async fn exchange(
    ctx: &CallContext,
    headers: &[Header],
    request: &Request<'_>,
    mut sender: h2::client::SendRequest<Bytes>,
    deadline: Option<Instant>,
) -> Result<(), CallError> {
    let upstream_request = build_request(headers, request)?;
    if ctx.stream.is_aborted() {
        ctx.counters.get().limits.dropped_before_upstream.inc();
        return Err(CallError::Cancelled);
    }
    let (response, body_tx) = sender
        .send_request(upstream_request, false)
        .map_err(|e| CallError::Unavailable(format!("the component refused the call: {e}")))?;
    // Whichever side fails first ends the call; dropping the other drops
    // the last handle on the HTTP/2 stream, which h2 resets (CANCEL).
    let upload = std::pin::pin!(upload(ctx, body_tx));
    let download = std::pin::pin!(download(ctx, response, deadline));
    match select(upload, download).await {
        Either::Left((Ok(()), download)) => {
            // The request is complete; the client may still give up.
            match select(download, std::pin::pin!(ctx.stream.aborted())).await {
                Either::Left((result, _)) => result,
                Either::Right(_) => Err(CallError::Cancelled),
            }
        }
        Either::Left((Err(e), _)) => Err(e),
        Either::Right((result, _)) => result,
    }
}

const HOP_BY_HOP: [&[u8]; 6] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
    b"host",
];

fn build_request(
    headers: &[Header],
    request: &Request<'_>,
) -> Result<http::Request<()>, CallError> {
    let uri = format!("http://{}{}", request.authority, request.path);
    let mut builder = http::Request::builder().method(http::Method::POST).uri(uri);
    for h in headers {
        let name = h.name();
        if name.starts_with(b":")
            || HOP_BY_HOP.contains(&name)
            || (name == b"te" && h.value() != b"trailers")
        {
            continue;
        }
        builder = builder.header(name, h.value());
    }
    builder
        .body(())
        .map_err(|e| CallError::Internal(format!("request headers cannot be forwarded: {e}")))
}

/// Client → component, honouring HTTP/2 flow control and the message size
/// limit.
async fn upload(ctx: &CallContext, mut body_tx: SendStream<Bytes>) -> Result<(), CallError> {
    let result = upload_body(ctx, &mut body_tx).await;
    if result.is_err() {
        body_tx.send_reset(h2::Reason::CANCEL);
    }
    result
}

async fn upload_body(ctx: &CallContext, body_tx: &mut SendStream<Bytes>) -> Result<(), CallError> {
    let io = &ctx.stream;
    let mut limiter = FrameLimiter::new(ctx.max_message_size);
    loop {
        let was_full = io.inbox_full();
        let inbound = io.recv().await;
        if was_full || io.body_pending() {
            ctx.waker.wake(); // room again: let quiche hand over more
        }
        let mut data = match inbound {
            Inbound::Data(data) => data,
            Inbound::End => {
                return body_tx.send_data(Bytes::new(), true).map_err(|e| {
                    CallError::Unavailable(format!("the component's stream failed: {e}"))
                });
            }
            Inbound::Aborted => return Err(CallError::Cancelled),
        };
        if let Err(len) = limiter.feed(&data) {
            return Err(CallError::ResourceExhausted(format!(
                "request message of {len} bytes exceeds the limit of {} bytes",
                ctx.max_message_size
            )));
        }
        while !data.is_empty() {
            body_tx.reserve_capacity(data.len());
            let capacity = match poll_fn(|cx| body_tx.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    return Err(CallError::Unavailable(format!(
                        "the component's stream failed: {e}"
                    )))
                }
                None => {
                    return Err(CallError::Unavailable(
                        "the component closed the stream".into(),
                    ))
                }
            };
            let chunk = data.split_to(capacity.min(data.len()));
            ctx.observed
                .metrics(&ctx.counters)
                .bytes_in
                .add(chunk.len() as u64);
            body_tx.send_data(chunk, false).map_err(|e| {
                CallError::Unavailable(format!("the component's stream failed: {e}"))
            })?;
        }
    }
}

/// Component → client: headers, messages, trailers.
async fn download(
    ctx: &CallContext,
    response: ResponseFuture,
    deadline: Option<Instant>,
) -> Result<(), CallError> {
    let io = &ctx.stream;
    let unavailable =
        |e: h2::Error| CallError::Unavailable(format!("the component failed the call: {e}"));
    let response = response.await.map_err(unavailable)?;
    let (parts, mut body) = response.into_parts();
    ctx.observed.status_from(&parts.headers);
    let headers = respond::response_headers(parts.status, &parts.headers, deadline);
    io.send_headers(headers, body.is_end_stream());
    ctx.waker.wake();
    if body.is_end_stream() {
        return Ok(()); // trailers-only
    }
    let mut flow = body.flow_control().clone();
    let mut messages = MessageCursor::default();
    let mut budget = Budgeted::new(ctx);
    loop {
        let step = poll_fn(|cx| {
            match io.poll_drained(cx) {
                Poll::Ready(Some(n)) => return Poll::Ready(Step::Drained(n)),
                Poll::Ready(None) => return Poll::Ready(Step::Aborted),
                Poll::Pending => {}
            }
            if budget.poll_tick(cx).is_ready() {
                return Poll::Ready(Step::Tick);
            }
            body.poll_data(cx).map(Step::Data)
        })
        .await;
        match step {
            Step::Drained(n) => budget.unreleased += n,
            Step::Data(Some(chunk)) => {
                let chunk = chunk.map_err(unavailable)?;
                ctx.observed
                    .metrics(&ctx.counters)
                    .bytes_out
                    .add(chunk.len() as u64);
                // Only the boundaries matter here; no limit on responses.
                let boundary = messages.feed(&chunk, |_| Ok::<(), ()>(())).unwrap_or(None);
                io.push_body(chunk, boundary);
                ctx.waker.wake();
            }
            Step::Data(None) => break,
            Step::Tick => {}
            Step::Aborted => return Err(CallError::Cancelled),
        }
        budget.after_step(&mut flow)?;
    }
    let trailers = body.trailers().await.map_err(unavailable)?;
    if let Some(trailers) = &trailers {
        ctx.observed.status_from(trailers);
    }
    io.send_trailers(respond::response_trailers(trailers.as_ref(), deadline));
    ctx.waker.wake();
    Ok(())
}

/// What moved a download on.
enum Step {
    /// quiche took this many of the call's bytes.
    Drained(usize),
    Data(Option<Result<Bytes, h2::Error>>),
    /// Look at the budget again.
    Tick,
    Aborted,
}

/// A download's side of the buffer budgets: the HTTP/2 window it owes the
/// component, and the grace period of a client that takes nothing while a
/// budget is spent.
struct Budgeted<'c> {
    ctx: &'c CallContext,
    /// Bytes quiche took that the component may send again.
    unreleased: usize,
    /// Since when a budget was spent while this call held bytes, and how
    /// many its client had taken then.
    spent_since: Option<(Instant, u64)>,
    tick: Option<glommio::timer::Timer>,
}

impl<'c> Budgeted<'c> {
    fn new(ctx: &'c CallContext) -> Self {
        Self {
            ctx,
            unreleased: 0,
            spent_since: None,
            tick: None,
        }
    }

    fn poll_tick(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match &mut self.tick {
            Some(timer) => match std::pin::Pin::new(timer).poll(cx) {
                Poll::Ready(_) => {
                    self.tick = None;
                    Poll::Ready(())
                }
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Pending,
        }
    }

    /// Gives the component its window back unless the connection is over
    /// its budget (its client is then held back too: it is the slow
    /// reader), and ends the call once its client took nothing for the
    /// grace period while a budget stays spent.
    fn after_step(&mut self, flow: &mut h2::FlowControl) -> Result<(), CallError> {
        let io = &self.ctx.stream;
        let budget = io.budget();
        if self.unreleased > 0 && !budget.conn_full() {
            let _ = flow.release_capacity(std::mem::take(&mut self.unreleased));
        }
        let spent = budget.spent();
        match spent {
            Some(which) if io.holds_bytes() => {
                let now = Instant::now();
                let grace = self.ctx.limits.buffer_grace;
                match self.spent_since {
                    Some((since, taken)) if io.written() == taken => {
                        if now.saturating_duration_since(since) >= grace {
                            return Err(self.over_budget(which));
                        }
                    }
                    // First seen, or the client took some: it reads.
                    _ => self.spent_since = Some((now, io.written())),
                }
            }
            _ => self.spent_since = None,
        }
        // While held back, look again now and then: nothing else wakes the
        // call when the budget frees up or the grace runs out.
        let waiting = self.spent_since.is_some() || self.unreleased > 0;
        if waiting && self.tick.is_none() {
            let every = (self.ctx.limits.buffer_grace / 8)
                .clamp(Duration::from_millis(25), Duration::from_millis(250));
            self.tick = Some(glommio::timer::Timer::new(every));
        } else if !waiting {
            self.tick = None;
        }
        Ok(())
    }

    fn over_budget(&self, which: Spent) -> CallError {
        let limits = &self.ctx.counters.get().limits;
        limits.calls_over_budget.inc();
        let whose = match which {
            Spent::Connection => "its connection's",
            Spent::Shard => "this core's",
        };
        let e = CallError::OverBudget(format!(
            "the client took none of the response for {:?} while {whose} response buffers were full",
            self.ctx.limits.buffer_grace
        ));
        log_limit(&self.ctx.limits.logs.over_budget, &e);
        e
    }
}

/// Logs the first call of a burst that hit a limit.
fn log_limit(burst: &super::limits::Burst, error: &CallError) {
    if let Some(hidden) = burst.hit() {
        tracing::warn!(%error, "a call hit a limit; {hidden} more hits of it since the last log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_authorities() {
        assert_eq!(service_of("/a.b.S/M"), Some("a.b.S"));
        assert_eq!(service_of("/S/"), None);
        assert_eq!(service_of("/S"), None);
        assert_eq!(service_of("S/M"), None);
        assert_eq!(service_of("/S/M/x"), None);
        assert_eq!(domain_of("example.com:443"), "example.com");
        assert_eq!(domain_of("example.com"), "example.com");
        assert_eq!(domain_of("[::1]:443"), "::1");
    }

    #[test]
    fn non_grpc_requests_are_415() {
        let get = vec![Header::new(b":method", b"GET"), Header::new(b":path", b"/")];
        assert!(matches!(parse_request(&get), Err(CallError::NotGrpc(415))));
        let json = vec![
            Header::new(b":method", b"POST"),
            Header::new(b"content-type", b"application/json"),
        ];
        assert!(matches!(parse_request(&json), Err(CallError::NotGrpc(415))));
    }
}
