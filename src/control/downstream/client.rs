//! The tonic client of the downstream CRI runtime, over its Unix socket.
//!
//! One lazy channel: it connects on first use and again after the
//! downstream restarts, by itself. Every call has a deadline; a transport
//! failure or a missed deadline becomes UNAVAILABLE naming the downstream
//! and its socket. The downstream's own answers (NotFound, ...) pass
//! through unchanged.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Response, Status};

use super::Settings;

/// Largest message accepted from the downstream (lists of many pods).
const MAX_MESSAGE: usize = 16 << 20;
/// A mutating call without a caller's deadline: the kubelet's default
/// `--runtime-request-timeout` (2 min).
const MUTATE_DEFAULT: Duration = Duration::from_secs(120);

/// How long a call may take.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Status, List*, *Status, stats: `--downstream-timeout`.
    Read,
    /// Lifecycle verbs and pulls: the caller's own deadline (`grpc-timeout`),
    /// else 2 minutes.
    Mutate,
}

pub struct Client {
    /// As configured: `unix:///run/containerd/containerd.sock`.
    uri: String,
    channel: Channel,
    timeout: Duration,
    /// Set while the downstream fails; logs once per outage.
    failing: AtomicBool,
    /// Its `runtime_name` from Version.
    runtime_name: std::sync::OnceLock<String>,
}

impl Client {
    /// A client that connects on first use; never fails for a downstream
    /// that is down (calls do).
    pub fn new(settings: &Settings) -> Self {
        let connector_path = settings.socket.clone();
        let channel = Endpoint::from_static("http://localhost")
            .connect_timeout(settings.timeout)
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = connector_path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }));
        Self {
            uri: settings.uri.clone(),
            channel,
            timeout: settings.timeout,
            failing: AtomicBool::new(false),
            runtime_name: std::sync::OnceLock::new(),
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// The deadline of a call of `kind` forwarded for `req`.
    pub fn deadline<T>(&self, req: &Request<T>, kind: Kind) -> Duration {
        match kind {
            Kind::Read => self.timeout,
            Kind::Mutate => req
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_grpc_timeout)
                .unwrap_or(MUTATE_DEFAULT),
        }
    }

    /// Runs one downstream call `what` within `deadline`.
    pub async fn call<T>(
        &self,
        what: &str,
        deadline: Duration,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Status> {
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) if is_transport(&status) => Err(self.unavailable(what, &status)),
            Ok(Err(status)) => {
                self.healthy();
                return Err(status);
            }
            Err(_) => Err(Status::unavailable(format!(
                "downstream CRI runtime {} did not answer {what} within {deadline:?}",
                self.name()
            ))),
        };
        match &result {
            Ok(_) => self.healthy(),
            Err(e) => self.failed(e),
        }
        result
    }

    fn unavailable(&self, what: &str, status: &Status) -> Status {
        let cause = match std::error::Error::source(status) {
            Some(source) => format!("{}: {source}", status.message()),
            None => status.message().to_owned(),
        };
        Status::unavailable(format!(
            "downstream CRI runtime {} is unavailable for {what}: {cause}",
            self.name()
        ))
    }

    /// `containerd at unix:///PATH` (the name once it answered Version).
    fn name(&self) -> String {
        match self.runtime_name.get() {
            Some(runtime) => format!("{runtime} at {}", self.uri),
            None => self.uri.clone(),
        }
    }

    /// Remembers the downstream's name for error messages.
    pub fn set_name(&self, runtime: &str) {
        let _ = self.runtime_name.set(runtime.to_owned());
    }

    fn healthy(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(downstream = %self.uri, "downstream CRI runtime answers again");
        }
    }

    fn failed(&self, error: &Status) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                downstream = %self.uri,
                error = %error.message(),
                "downstream CRI runtime failing: its calls get UNAVAILABLE, merged lists serve its last good (stale) answers until it answers again"
            );
        }
    }
}

/// A failure of the connection rather than an answer of the downstream.
fn is_transport(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// gRPC's `grpc-timeout` header: up to 8 digits and a unit.
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("120S"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_grpc_timeout("1999m"),
            Some(Duration::from_millis(1999))
        );
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
