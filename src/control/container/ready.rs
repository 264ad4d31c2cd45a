//! Readiness: the component accepts on its socket and answers the standard
//! `grpc.health.v1.Health/Check` with SERVING (or has no health service).
//! Every connection goes through `pool::socket::connect`: no symlink is
//! followed and the listener must be the container's own process.

use std::path::{Path, PathBuf};

use crate::pool::socket::{self, Peer};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::{ExitRecord, Process};

/// How a component proved it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Health/Check answered SERVING.
    Serving,
    /// It accepted an HTTP/2 connection but has no health service.
    NoHealthService,
}

/// Why a component did not become ready.
#[derive(Debug)]
pub enum NotReady {
    Exited(ExitRecord),
    /// Timed out; the last thing the probe saw.
    Timeout(String),
}

/// Probes `socket` until the component is ready, it exits, or `timeout`.
pub async fn wait_ready(
    socket: &Path,
    process: &Process,
    timeout: Duration,
) -> Result<Readiness, NotReady> {
    let last = std::sync::Mutex::new(String::from("socket not created yet"));
    let peer = Peer::of_pid(process.pid).ok();
    let probing = async {
        let mut backoff = Duration::from_micros(250);
        loop {
            let result = match peer {
                Some(peer) => probe(socket, peer).await,
                None => Err(format!("container process {} is gone", process.pid)),
            };
            match result {
                Ok(readiness) => return readiness,
                Err(why) => *last.lock().unwrap_or_else(|p| p.into_inner()) = why,
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(20));
        }
    };
    tokio::select! {
        readiness = probing => Ok(readiness),
        record = process.wait() => Err(NotReady::Exited(record)),
        _ = tokio::time::sleep(timeout) => Err(NotReady::Timeout(last.lock().unwrap_or_else(|p| p.into_inner()).clone())),
    }
}

/// A tokio stream to the container's own listener on `path`.
pub fn connect(path: &Path, peer: Peer) -> std::io::Result<UnixStream> {
    UnixStream::from_std(socket::connect(path, Some(peer))?)
}

async fn probe(socket: &Path, peer: Peer) -> Result<Readiness, String> {
    // A cheap first look: most probes during start find no listener yet.
    connect(socket, peer).map_err(|e| format!("socket not accepting: {e}"))?;
    let path: PathBuf = socket.to_path_buf();
    let channel = Endpoint::from_static("http://component")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(connect(&path, peer)?)) }
        }))
        .await
        .map_err(|e| format!("HTTP/2 connection failed: {e}"))?;
    let request = HealthCheckRequest {
        service: String::new(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(response) => match response.into_inner().status() {
            ServingStatus::Serving => Ok(Readiness::Serving),
            other => Err(format!("health check answered {}", other.as_str_name())),
        },
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            Ok(Readiness::NoHealthService)
        }
        Err(status) => Err(format!("health check failed: {status}")),
    }
}
