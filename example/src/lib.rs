//! The example vimana component: a small gRPC server (`vimana.example.v1.Echo`,
//! all four call kinds, plus `grpc.health.v1.Health`) served over HTTP/2
//! cleartext on a Unix socket (or TCP for local development).
//!
//! The library is what the `vimana-example` binary runs, and it is also meant for
//! other crates' tests:
//!
//! * [`pb`] holds the generated code: [`pb::echo_client::EchoClient`],
//!   [`pb::echo_server::EchoServer`], [`pb::EchoRequest`], [`pb::EchoReply`],
//!   [`pb::StreamRequest`].
//! * [`spawn`] runs a server in-process (returning once the socket is bound) and
//!   [`connect`] / [`connect_unix`] / [`RunningServer::client`] build clients.
//! * [`serve`] / [`serve_on`] run a server until a shutdown future completes.
//!
//! Custom trailers: tonic 0.14 has no API for a handler to attach custom
//! trailers to a successful response (the trailers are always built from the
//! final `Status` only; a unary handler cannot return one alongside a message).
//! So [`EchoTrailers`] wraps the generated server as a tower service: when a
//! request carries `x-echo-trailer: V`, it adds `x-echo-trailer: V` to the
//! response's trailers (or to the headers of a trailers-only error response).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{self, Stream};
use http::{HeaderName, HeaderValue};
use http_body::Frame;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::ServingStatus;

/// Code generated from `proto/vimana/example/v1/example.proto`.
pub mod pb {
    tonic::include_proto!("vimana.example.v1");
}

use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest, StreamRequest};

/// The fully qualified gRPC service name, `vimana.example.v1.Echo`.
pub const SERVICE_NAME: &str = <EchoServer<Echoer> as NamedService>::NAME;

/// Request metadata key whose value is copied to the response trailer of the same name.
pub const TRAILER_KEY: &str = "x-echo-trailer";

/// Exit code of the process when a request asks it to crash (`EchoRequest.crash`).
pub const CRASH_EXIT_CODE: i32 = 3;

/// The environment variable naming the address to serve on.
pub const ADDRESS_ENV: &str = "VIMANA_GRPC_ADDRESS";

/// The environment variable whose value is reported in `EchoReply.served_by`.
pub const POD_ID_ENV: &str = "VIMANA_POD_ID";

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/// Where to serve: a Unix socket path or a TCP socket address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `unix:/path/to/sock` (also `unix:///path/to/sock`).
    Unix(PathBuf),
    /// `tcp:HOST:PORT` or `HOST:PORT`, HOST being an IP address or `localhost`
    /// (no name resolution: the component runs in an empty chroot).
    Tcp(SocketAddr),
}

impl Address {
    /// The Unix socket path, if this is a Unix address.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Address::Unix(path) => Some(path),
            Address::Tcp(_) => None,
        }
    }
}

/// An address that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressError(String);

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddressError {}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("unix:") {
            // unix:///abs/path (URI form) or unix:/abs/path or unix:relative/path
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(AddressError(format!("{s:?}: empty Unix socket path")));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let hostport = s.strip_prefix("tcp:").unwrap_or(s);
        parse_host_port(hostport).map(Address::Tcp).ok_or_else(|| {
            AddressError(format!(
                "{s:?}: expected unix:/path/to/socket, tcp:HOST:PORT or HOST:PORT \
                 (HOST an IP address or localhost)"
            ))
        })
    }
}

fn parse_host_port(s: &str) -> Option<SocketAddr> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr);
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let ip = if host.is_empty() || host == "*" {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().ok()?
    };
    Some(SocketAddr::new(ip, port))
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

// ---------------------------------------------------------------------------
// The Echo service
// ---------------------------------------------------------------------------

/// `EchoReply.served_by` when none is configured: `$VIMANA_POD_ID`, else `pid:<pid>`.
pub fn default_served_by() -> String {
    match std::env::var(POD_ID_ENV) {
        Ok(id) if !id.is_empty() => id,
        _ => format!("pid:{}", std::process::id()),
    }
}

/// The implementation of `vimana.example.v1.Echo`.
#[derive(Clone, Debug)]
pub struct Echoer {
    served_by: Arc<str>,
}

impl Echoer {
    /// An `Echoer` whose replies say they were served by `served_by`.
    pub fn new(served_by: impl Into<String>) -> Self {
        Echoer {
            served_by: served_by.into().into(),
        }
    }

    fn reply(
        &self,
        message: String,
        payload: Vec<u8>,
        sequence: u64,
        metadata: HashMap<String, String>,
    ) -> EchoReply {
        EchoReply {
            message,
            payload,
            served_by: self.served_by.to_string(),
            sequence,
            metadata,
        }
    }
}

impl Default for Echoer {
    fn default() -> Self {
        Echoer::new(default_served_by())
    }
}

/// The request's ASCII metadata entries whose key starts with `x-`.
fn echoed_metadata(metadata: &MetadataMap) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    for entry in metadata.iter() {
        if let KeyAndValueRef::Ascii(key, value) = entry {
            let key = key.as_str();
            if !key.starts_with("x-") {
                continue;
            }
            let Ok(value) = value.to_str() else { continue };
            out.entry(key.to_string())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(value);
                })
                .or_insert_with(|| value.to_string());
        }
    }
    out
}

/// Applies a request's test knobs: sleep, then crash, then fail.
/// Says on stderr when a call's sleep is cut short because the caller went
/// away (the runtime propagated a cancellation): tests read it in the log.
struct CancelWitness {
    done: bool,
}

impl Drop for CancelWitness {
    fn drop(&mut self) {
        if !self.done {
            eprintln!("vimana-example: call cancelled during sleep");
        }
    }
}

async fn apply_knobs(req: &EchoRequest) -> Result<(), Status> {
    if req.sleep_ms > 0 {
        let mut witness = CancelWitness { done: false };
        tokio::time::sleep(Duration::from_millis(req.sleep_ms.into())).await;
        witness.done = true;
    }
    if req.crash {
        eprintln!("vimana-example: crash requested, exiting with code {CRASH_EXIT_CODE}");
        std::process::exit(CRASH_EXIT_CODE);
    }
    if req.fail_code != 0 {
        return Err(Status::new(
            Code::from_i32(req.fail_code),
            req.fail_message.clone(),
        ));
    }
    Ok(())
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Echo for Echoer {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let metadata = echoed_metadata(request.metadata());
        let req = request.into_inner();
        apply_knobs(&req).await?;
        Ok(Response::new(self.reply(
            req.message,
            req.payload,
            0,
            metadata,
        )))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let metadata = echoed_metadata(request.metadata());
        let req = request.into_inner();
        let interval = Duration::from_millis(req.interval_ms.into());
        let this = self.clone();
        // Lazily produced: the next reply is made only when the transport asks
        // for it, and the stream is dropped when the caller goes away.
        let replies = stream::unfold(0u32, move |i| {
            let this = this.clone();
            let message = req.message.clone();
            let metadata = metadata.clone();
            async move {
                if i >= req.count {
                    return None;
                }
                if i > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                let reply = this.reply(message, Vec::new(), i.into(), metadata);
                Some((Ok(reply), i + 1))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let metadata = echoed_metadata(request.metadata());
        let mut inbound = request.into_inner();
        let mut count: u64 = 0;
        let mut message = String::new();
        let mut payload = Vec::new();
        while let Some(req) = inbound.message().await? {
            apply_knobs(&req).await?;
            count += 1;
            message.push_str(&req.message);
            payload.extend_from_slice(&req.payload);
        }
        Ok(Response::new(self.reply(message, payload, count, metadata)))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        let metadata = echoed_metadata(request.metadata());
        let inbound = request.into_inner();
        let this = self.clone();
        struct State {
            inbound: Streaming<EchoRequest>,
            sequence: u64,
            done: bool,
        }
        let state = State {
            inbound,
            sequence: 0,
            done: false,
        };
        let replies = stream::unfold(state, move |mut st| {
            let this = this.clone();
            let metadata = metadata.clone();
            async move {
                if st.done {
                    return None;
                }
                match st.inbound.message().await {
                    Ok(Some(req)) => {
                        if let Err(status) = apply_knobs(&req).await {
                            st.done = true;
                            return Some((Err(status), st));
                        }
                        let reply = this.reply(req.message, req.payload, st.sequence, metadata);
                        st.sequence += 1;
                        Some((Ok(reply), st))
                    }
                    // End of the request stream: end the response stream (status OK).
                    Ok(None) => None,
                    // The request stream failed (e.g. the caller cancelled).
                    Err(status) => {
                        st.done = true;
                        Some((Err(status), st))
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

// ---------------------------------------------------------------------------
// Custom trailers
// ---------------------------------------------------------------------------

/// A tower service wrapping a gRPC server: when the request has an
/// `x-echo-trailer: V` header, the response gets an `x-echo-trailer: V` trailer
/// (in the trailers frame, or in the headers of a trailers-only response).
#[derive(Clone, Debug)]
pub struct EchoTrailers<S> {
    inner: S,
}

impl<S> EchoTrailers<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        EchoTrailers { inner }
    }
}

impl<S: NamedService> NamedService for EchoTrailers<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for EchoTrailers<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let trailer = req.headers().get(TRAILER_KEY).cloned();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            let Some(value) = trailer else {
                return Ok(response);
            };
            let name = HeaderName::from_static(TRAILER_KEY);
            let (mut parts, body) = response.into_parts();
            if parts.headers.contains_key("grpc-status") {
                // Trailers-only response (an error before any message).
                parts.headers.insert(name, value);
                return Ok(http::Response::from_parts(parts, body));
            }
            let body = Body::new(TrailerBody {
                inner: body,
                trailer: Some((name, value)),
            });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// A response body adding one header to its trailers frame.
struct TrailerBody {
    inner: Body,
    trailer: Option<(HeaderName, HeaderValue)>,
}

impl http_body::Body for TrailerBody {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        if let Some((name, value)) = this.trailer.take() {
                            trailers.insert(name, value);
                        }
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The Echo service as served: the generated server with [`EchoTrailers`].
pub type EchoService = EchoTrailers<EchoServer<Echoer>>;

/// The Echo service, replies saying `served_by` [`default_served_by`].
pub fn service() -> EchoService {
    service_with(Echoer::default(), None)
}

/// The Echo service around `echoer`, with an optional maximum message size
/// (both directions; tonic's default otherwise: 4 MiB for decoding).
pub fn service_with(echoer: Echoer, max_message_size: Option<usize>) -> EchoService {
    let mut server = EchoServer::new(echoer);
    if let Some(max) = max_message_size {
        server = server
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
    }
    EchoTrailers::new(server)
}

// ---------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------

/// What the health service reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthMode {
    /// `grpc.health.v1.Health` served; "" and the Echo service SERVING.
    Serving,
    /// `grpc.health.v1.Health` served; "" and the Echo service NOT_SERVING forever.
    NotServing,
    /// No health service.
    Disabled,
}

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// `EchoReply.served_by`.
    pub served_by: String,
    /// What the health service reports.
    pub health: HealthMode,
    /// Maximum message size, both directions (None: tonic's defaults).
    pub max_message_size: Option<usize>,
    /// After the shutdown signal, how long to wait for in-flight calls before
    /// dropping them (None: wait as long as they take).
    pub shutdown_grace: Option<Duration>,
    /// HTTP/2 streams served at once per connection (None: no limit).
    pub max_concurrent_streams: Option<u32>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            served_by: default_served_by(),
            health: HealthMode::Serving,
            max_message_size: None,
            max_concurrent_streams: None,
            shutdown_grace: None,
        }
    }
}

/// A bound listener, ready to serve.
#[derive(Debug)]
pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    /// Binds `addr`. For a Unix socket, a stale socket file at the path is
    /// removed first (any other kind of file there is an error).
    pub fn bind(addr: &Address) -> io::Result<Listener> {
        match addr {
            Address::Unix(path) => {
                match std::fs::symlink_metadata(path) {
                    Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a socket", path.display()),
                        ))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                Ok(Listener::Unix(UnixListener::bind(path)?, path.clone()))
            }
            Address::Tcp(sa) => {
                let std_listener = std::net::TcpListener::bind(sa)?;
                std_listener.set_nonblocking(true)?;
                Ok(Listener::Tcp(TcpListener::from_std(std_listener)?))
            }
        }
    }

    /// The address actually bound (with the real port for `tcp:…:0`).
    pub fn local_address(&self) -> io::Result<Address> {
        match self {
            Listener::Unix(_, path) => Ok(Address::Unix(path.clone())),
            Listener::Tcp(l) => Ok(Address::Tcp(l.local_addr()?)),
        }
    }
}

/// Binds `addr` and serves until `shutdown` completes (see [`serve_on`]).
pub async fn serve(
    addr: &Address,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listener = Listener::bind(addr)?;
    serve_on(listener, options, shutdown).await?;
    Ok(())
}

/// Serves Echo (and health, per the options) on `listener` until `shutdown`
/// completes; then stops accepting, reports NOT_SERVING, lets in-flight calls
/// finish (up to `options.shutdown_grace`), and removes the Unix socket file.
pub async fn serve_on(
    listener: Listener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let echo = service_with(Echoer::new(options.served_by), options.max_message_size);

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = match options.health {
        HealthMode::Serving => {
            reporter.set_serving::<EchoService>().await;
            Some(health_service)
        }
        HealthMode::NotServing => {
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
            reporter.set_not_serving::<EchoService>().await;
            Some(health_service)
        }
        HealthMode::Disabled => None,
    };

    let router = Server::builder()
        .max_concurrent_streams(options.max_concurrent_streams)
        .add_optional_service(health)
        .add_service(echo);

    let (fired_tx, fired_rx) = oneshot::channel::<()>();
    let signal = {
        let reporter = reporter.clone();
        async move {
            shutdown.await;
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
            reporter.set_not_serving::<EchoService>().await;
            let _ = fired_tx.send(());
        }
    };
    let grace = options.shutdown_grace;
    let deadline = async move {
        match (fired_rx.await, grace) {
            (Ok(()), Some(grace)) => tokio::time::sleep(grace).await,
            _ => std::future::pending().await,
        }
    };

    let (result, socket) = match listener {
        Listener::Unix(l, path) => {
            let incoming = UnixListenerStream::new(l);
            let served = router.serve_with_incoming_shutdown(incoming, signal);
            let result = tokio::select! {
                r = served => r,
                () = deadline => {
                    eprintln!("vimana-example: shutdown grace period over, dropping in-flight calls");
                    Ok(())
                }
            };
            (result, Some(path))
        }
        Listener::Tcp(l) => {
            let incoming = TcpListenerStream::new(l);
            let served = router.serve_with_incoming_shutdown(incoming, signal);
            let result = tokio::select! {
                r = served => r,
                () = deadline => {
                    eprintln!("vimana-example: shutdown grace period over, dropping in-flight calls");
                    Ok(())
                }
            };
            (result, None)
        }
    };
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    result
}

// ---------------------------------------------------------------------------
// Helpers for tests
// ---------------------------------------------------------------------------

/// A channel to a server at `addr` (connects before returning).
pub async fn connect(addr: &Address) -> Result<Channel, tonic::transport::Error> {
    match addr {
        Address::Unix(path) => connect_unix(path).await,
        Address::Tcp(sa) => {
            Endpoint::from_shared(format!("http://{sa}"))?
                .connect()
                .await
        }
    }
}

/// A channel to a server on the Unix socket `path` (HTTP/2 cleartext).
pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("unix:{}", path.as_ref().display()))?
        .connect()
        .await
}

/// An Echo client on the Unix socket `path`.
pub async fn echo_client_unix(
    path: impl AsRef<Path>,
) -> Result<EchoClient<Channel>, tonic::transport::Error> {
    Ok(EchoClient::new(connect_unix(path).await?))
}

/// A server running in-process (see [`spawn`]).
#[derive(Debug)]
pub struct RunningServer {
    address: Address,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// Where it listens.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// A new channel to it.
    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        connect(&self.address).await
    }

    /// A new Echo client to it.
    pub async fn client(&self) -> Result<EchoClient<Channel>, tonic::transport::Error> {
        Ok(EchoClient::new(self.channel().await?))
    }

    /// Graceful shutdown: waits for in-flight calls, returns the server's result.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if self.shutdown.is_some() {
            self.task.abort();
        }
    }
}

/// Binds `addr` and serves on a tokio task; returns once the socket is bound
/// (so it accepts connections at once). Must be called within a tokio runtime. Dropping the handle aborts the server;
/// [`RunningServer::shutdown`] stops it gracefully.
pub fn spawn(addr: &Address, options: ServeOptions) -> io::Result<RunningServer> {
    let listener = Listener::bind(addr)?;
    let address = listener.local_address()?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_on(listener, options, async move {
        let _ = rx.await;
    }));
    Ok(RunningServer {
        address,
        shutdown: Some(tx),
        task,
    })
}
