//! The operator's endpoint: Prometheus metrics, health, and the pod pool.
//!
//! One HTTP/1.1 listener on the control thread (`--metrics-listen`, on
//! loopback by default) serves
//! - `/metrics`: the Prometheus text format (0.0.4), from the `prometheus`
//!   crate, or OpenMetrics 1.0.0 when the scraper's `Accept` asks for it
//!   (`openmetrics.rs`; Prometheus does): the control plane's own series (CRI calls, pods by state,
//!   container events, image pulls, state commits), the data plane's
//!   per-shard blocks read at scrape time (`dataplane.rs`), and the
//!   process collector (RSS, CPU, open fds);
//! - `/healthz`: the process serves; `/readyz`: CRI is up and the shards
//!   are bound;
//! - `/debug/pool`: the published routing snapshot as JSON (`pool.rs`).
//!
//! Owns the exposition and the control plane's counters. It reads the
//! shards' counters and the snapshot, never writes them, and it is not on
//! any request path: counting stays where the work is.

mod cri;
mod dataplane;
mod openmetrics;
mod pool;

pub use cri::Layer as CriLayer;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use super::runtime::Runtime;
use crate::pool::metrics::NodeMetrics;

/// The control plane's series, and the registry they and the collectors
/// live in.
pub struct Metrics {
    registry: Registry,
    /// CRI calls by method and gRPC code.
    pub cri_calls: IntCounterVec,
    pub cri_duration: HistogramVec,
    /// Container starts, restarts, exits by reason.
    pub container_events: IntCounterVec,
    /// Registry pulls by result, and bytes fetched.
    pub image_pulls: IntCounterVec,
    pub image_pull_bytes: IntCounter,
    /// State database commits.
    pub db_commit: HistogramVec,
    pods: IntGaugeVec,
    ready: AtomicBool,
}

const CRI_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0, 30.0,
];

impl Metrics {
    pub fn new(data_plane: Option<Arc<NodeMetrics>>) -> Arc<Self> {
        let registry = Registry::new();
        let cri_calls = IntCounterVec::new(
            Opts::new(
                "vimanad_cri_calls_total",
                "CRI calls by method and gRPC code",
            ),
            &["method", "code"],
        )
        .expect("valid metric");
        let cri_duration = HistogramVec::new(
            HistogramOpts::new("vimanad_cri_call_duration_seconds", "CRI call latency")
                .buckets(CRI_BUCKETS.to_vec()),
            &["method"],
        )
        .expect("valid metric");
        let container_events = IntCounterVec::new(
            Opts::new(
                "vimanad_container_events_total",
                "Container starts, restarts and exits, by event and reason",
            ),
            &["event", "reason"],
        )
        .expect("valid metric");
        let image_pulls = IntCounterVec::new(
            Opts::new("vimanad_image_pulls_total", "Registry pulls by result"),
            &["result"],
        )
        .expect("valid metric");
        let image_pull_bytes = IntCounter::new(
            "vimanad_image_pull_bytes_total",
            "Bytes of image blobs fetched from registries",
        )
        .expect("valid metric");
        let db_commit = HistogramVec::new(
            HistogramOpts::new(
                "vimanad_state_commit_duration_seconds",
                "State database commits (redb), by what was written",
            )
            .buckets(CRI_BUCKETS.to_vec()),
            &["what"],
        )
        .expect("valid metric");
        let pods = IntGaugeVec::new(
            Opts::new("vimanad_pods", "Pods by lifecycle state"),
            &["state"],
        )
        .expect("valid metric");
        for c in [&cri_calls, &container_events, &image_pulls] {
            registry.register(Box::new(c.clone())).expect("unique");
        }
        registry
            .register(Box::new(image_pull_bytes.clone()))
            .expect("unique");
        for h in [&cri_duration, &db_commit] {
            registry.register(Box::new(h.clone())).expect("unique");
        }
        registry.register(Box::new(pods.clone())).expect("unique");
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique");
        if let Some(node) = data_plane {
            registry
                .register(Box::new(dataplane::Collector::new(node)))
                .expect("unique");
        }
        Arc::new(Self {
            registry,
            cri_calls,
            cri_duration,
            container_events,
            image_pulls,
            image_pull_bytes,
            db_commit,
            pods,
            ready: AtomicBool::new(false),
        })
    }

    /// CRI is serving (the shards were bound before the control plane
    /// started): `/readyz` answers 200 from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Records one finished CRI call.
    pub fn cri_call(&self, method: &str, code: tonic::Code, took: Duration) {
        self.cri_calls
            .with_label_values(&[method, code_name(code)])
            .inc();
        self.cri_duration
            .with_label_values(&[method])
            .observe(took.as_secs_f64());
    }

    /// The exposition, in OpenMetrics text or else the Prometheus text
    /// format.
    fn render(&self, runtime: &Runtime, openmetrics: bool) -> String {
        for (state, count) in runtime.pods_by_state() {
            self.pods.with_label_values(&[state]).set(count as i64);
        }
        // The puller counts its bytes itself; renders run one at a time on
        // the control thread, so catching the counter up is exact.
        let fetched = runtime.puller.bytes_fetched();
        self.image_pull_bytes
            .inc_by(fetched.saturating_sub(self.image_pull_bytes.get()));
        let families = self.registry.gather();
        if openmetrics {
            return openmetrics::encode(&families);
        }
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The gRPC code's canonical name, as grpc-go spells it in metrics.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Binds `listen` now (so a taken port fails the start) and serves until
/// the runtime is dropped with the control thread.
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await
}

/// Serves the endpoint on `listener`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    runtime: Arc<Runtime>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        let runtime = Arc::clone(&runtime);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = answer(&req, &metrics, &runtime);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

fn answer<B>(req: &Request<B>, metrics: &Metrics, runtime: &Runtime) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let openmetrics = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(openmetrics::wanted);
            let mut response = text(StatusCode::OK, metrics.render(runtime, openmetrics));
            let kind = if openmetrics {
                openmetrics::CONTENT_TYPE
            } else {
                prometheus::TEXT_FORMAT
            };
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(kind),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if metrics.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: CRI is not serving yet\n".into(),
        ),
        "/debug/pool" => {
            let mut response = text(StatusCode::OK, pool::json(runtime));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz, /debug/pool\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
