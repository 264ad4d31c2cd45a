//! CRI calls counted at the server's edge: a tower layer around the tonic
//! server records each call's method, gRPC code and latency. The code is
//! the `grpc-status` of the response headers (tonic answers errors
//! trailers-only); a response without one is a success whose status
//! follows in its trailers.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use super::Metrics;

/// Distinct method labels at most; a client inventing method names counts
/// as "other" past it.
const MAX_METHODS: usize = 96;

#[derive(Clone)]
pub struct Layer {
    metrics: Arc<Metrics>,
    methods: Arc<Mutex<HashSet<String>>>,
}

impl Layer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            methods: Arc::default(),
        }
    }

    /// The method label of a request path (`/runtime.v1.RuntimeService/Version`).
    fn method(&self, path: &str) -> String {
        let name = ["/runtime.v1.RuntimeService/", "/runtime.v1.ImageService/"]
            .iter()
            .find_map(|prefix| path.strip_prefix(prefix))
            .filter(|m| m.len() <= 48 && m.bytes().all(|b| b.is_ascii_alphanumeric()));
        let Some(name) = name else {
            return "other".into();
        };
        let mut known = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        if known.contains(name) || known.len() < MAX_METHODS {
            known.insert(name.to_owned());
            name.to_owned()
        } else {
            "other".into()
        }
    }
}

impl<S> tower::Layer<S> for Layer {
    type Service = Service<S>;
    fn layer(&self, inner: S) -> Service<S> {
        Service {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Service<S> {
    inner: S,
    layer: Layer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Service<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = self.layer.method(req.uri().path());
        let metrics = Arc::clone(&self.layer.metrics);
        let start = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await;
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from),
                Err(_) => tonic::Code::Unavailable,
            };
            metrics.cri_call(&method, code, start.elapsed());
            response
        })
    }
}
