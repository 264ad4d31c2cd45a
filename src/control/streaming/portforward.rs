//! Port-forward, fitted to components: whatever port the client names, a
//! forwarded connection reaches the component's gRPC socket (the pod's
//! `grpc.sock`, through `pool::socket`'s safe connect with the container's
//! peer check), so `kubectl port-forward POD 8080:50051` and then any
//! HTTP/2 client on localhost:8080 talks to the component.
//!
//! Protocol `portforward.k8s.io` over SPDY: for every connection the client
//! opens an `error` and a `data` stream with the same `requestID` header
//! (and a `port` header); bytes on `data` are the connection's, and a
//! failure to connect is written as text on `error`.

use std::collections::HashMap;
use std::path::PathBuf;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use super::spdy::conn::{self, Stream, Writer};
use super::spdy::frame::{header, RST_PROTOCOL_ERROR};

pub const PROTOCOL: &str = "portforward.k8s.io";
/// Streams waiting for their partner, at most.
const MAX_PENDING: usize = 64;

/// The pod a port-forward URL reaches.
#[derive(Debug, Clone)]
pub struct PodTarget {
    pub pod_id: String,
    /// The component's socket on the host.
    pub socket: PathBuf,
    /// The container's init (host PID): its PID namespace must be the
    /// listener's.
    pub pid: i32,
}

/// The one way a forwarded connection reaches a component.
pub fn connect_component(target: &PodTarget) -> std::io::Result<UnixStream> {
    let peer = crate::pool::socket::Peer::of_pid(target.pid)?;
    UnixStream::from_std(crate::pool::socket::connect(&target.socket, Some(peer))?)
}

#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
}

/// Serves one port-forward connection (plain or tunnelled SPDY).
pub async fn serve<R, W>(reader: R, writer: W, target: PodTarget)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, mut incoming) = conn::serve(reader, writer);
    let mut pending: HashMap<String, Pair> = HashMap::new();
    while let Some(stream) = incoming.recv().await {
        let kind = header(&stream.headers, "streamtype")
            .unwrap_or("")
            .to_owned();
        // Old clients send no requestID: their data stream follows the
        // error stream, two IDs on.
        let request = match header(&stream.headers, "requestid") {
            Some(id) => id.to_owned(),
            None if kind == "data" => (stream.id.saturating_sub(2)).to_string(),
            None => stream.id.to_string(),
        };
        let port_ok = header(&stream.headers, "port").is_some_and(|p| p.parse::<u16>().is_ok());
        if !port_ok || (kind != "error" && kind != "data") {
            out.reset(stream.id, RST_PROTOCOL_ERROR).await;
            continue;
        }
        if !pending.contains_key(&request) && pending.len() >= MAX_PENDING {
            out.reset(stream.id, RST_PROTOCOL_ERROR).await;
            continue;
        }
        let pair = pending.entry(request.clone()).or_default();
        let slot = if kind == "error" {
            &mut pair.error
        } else {
            &mut pair.data
        };
        if slot.is_some() {
            out.reset(stream.id, RST_PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_some() && pair.data.is_some() {
            let Some(Pair {
                error: Some(error),
                data: Some(data),
            }) = pending.remove(&request)
            else {
                continue;
            };
            tokio::spawn(forward(error, data, out.clone(), target.clone()));
        }
    }
}

async fn forward(error: Stream, data: Stream, out: Writer, target: PodTarget) {
    let port = header(&data.headers, "port").unwrap_or("?").to_owned();
    let socket = match connect_component(&target) {
        Ok(socket) => socket,
        Err(e) => {
            let message = format!(
                "an error occurred forwarding port {port} of pod {}: connect to the component's gRPC socket: {e}",
                target.pod_id
            );
            out.data(error.id, Bytes::from(message)).await;
            out.fin(error.id).await;
            out.fin(data.id).await;
            return;
        }
    };
    let (mut from_component, mut to_component) = socket.into_split();
    let Stream {
        id: data_id,
        data: mut from_client,
        ..
    } = data;
    let upstream = async move {
        while let Some(bytes) = from_client.recv().await {
            if to_component.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to_component.shutdown().await;
    };
    let out_down = out.clone();
    let downstream = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_component.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !out_down
                        .data(data_id, Bytes::copy_from_slice(&buf[..n]))
                        .await
                    {
                        return;
                    }
                }
            }
        }
        out_down.fin(data_id).await;
    };
    tokio::join!(upstream, downstream);
    out.fin(error.id).await;
}
