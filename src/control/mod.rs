//! The control plane: the tokio control thread.
//!
//! Owns the CRI server on its Unix socket, the pod lifecycle and the store,
//! container processes and the image store. It publishes the pod pool for
//! the data plane through `crate::pool` and never touches `crate::shard`.

mod authority;
pub mod container;
pub mod cri;
pub mod downstream;
mod error;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz;
pub mod image;
mod lifecycle;
pub mod metrics;
mod persist;
mod recover;
mod runtime;
mod state;
mod stats;
pub mod streaming;
mod transaction;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

pub use error::Error;
pub use runtime::{Config, Runtime};

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;

/// How long CRI calls in flight may take once shutdown begins.
const CRI_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves CRI on `config.cri_socket` until `shutdown` completes, then
/// removes the socket. Containers keep running: they belong to the kubelet.
pub async fn serve(
    config: Config,
    publisher: crate::pool::Publisher,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let socket = config.cri_socket.clone();
    let listener = bind_socket(&socket)?;
    let metrics = metrics::Metrics::new(config.data_plane_metrics.clone());
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await.map_err(Error::io(format!(
            "bind the metrics listener on {addr} (--metrics-listen)"
        )))?),
        None => None,
    };
    let runtime = Runtime::new(config, publisher, Arc::clone(&metrics))?;
    runtime.recover()?;
    if let Some(listener) = metrics_listener {
        tracing::info!(address = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "serving metrics");
        tokio::spawn(metrics::serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&runtime),
        ));
    }
    if let Some(every) = runtime.config.republish_every {
        // Benchmarks only: see `Runtime::republish_every`.
        tokio::spawn(Runtime::republish_every(Arc::downgrade(&runtime), every));
    }
    let streaming = streaming::Server::start(Arc::clone(&runtime)).await?;
    let cri = cri::Cri::new(Arc::clone(&runtime), streaming);
    // Every CRI call passes the router: to vimanad or the downstream. It
    // sits inside the metrics layer (both sides' calls are counted) and
    // vimanad's own Exec/Attach/PortForward still reach its streaming server.
    let cri = downstream::Router::new(
        cri,
        &runtime.config.runtime_handler,
        runtime.config.downstream.as_ref(),
    );
    tracing::info!(socket = %socket.display(), "serving CRI");
    // Every client is served whatever `:authority` it sends (authority.rs).
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        |conn| conn.map(authority::FixedAuthority::new),
    );
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    metrics.set_ready();
    let server = tonic::transport::Server::builder()
        .layer(metrics::CriLayer::new(Arc::clone(&metrics)))
        .add_service(RuntimeServiceServer::new(cri.clone()).max_decoding_message_size(16 << 20))
        .add_service(ImageServiceServer::new(cri).max_decoding_message_size(16 << 20))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stopping.wait_for(|s| *s).await;
        });
    // A kubelet keeps its CRI connection open: calls in flight get a grace
    // period, then the server stops regardless.
    let stop = async {
        shutdown.await;
        let _ = stopping_tx.send(true);
        tokio::time::sleep(CRI_SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        result = server => result,
        () = stop => Ok(()),
    };
    let _ = std::fs::remove_file(&socket);
    result.map_err(|e| Error::Io {
        what: format!("serve CRI on {}", socket.display()),
        source: std::io::Error::other(e),
    })
}

/// Binds the CRI socket, replacing a stale file but never a live runtime's.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::FailedPrecondition(format!(
            "CRI socket {} is in use: another runtime is serving there",
            path.display()
        )));
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(Error::io(format!("bind CRI socket {}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    Ok(listener)
}
