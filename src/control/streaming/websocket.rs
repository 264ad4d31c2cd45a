//! The WebSocket transports: remote commands over `v5.channel.k8s.io` and
//! `v4.channel.k8s.io` (client-go's WebSocket executor, `crictl
//! --transport websocket`, newer kubelets), and port-forward as SPDY
//! tunnelled in WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`,
//! client-go's tunnelling dialer).
//!
//! Channel protocol: every binary message starts with a channel byte (0
//! stdin, 1 stdout, 2 stderr, 3 error, 4 resize); v5 adds `[255, channel]`,
//! the client half-closing a channel. The server ends with a normal close,
//! which client-go reads as EOF on every channel.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::exec::Io;
use super::remotecommand::{resizes, run, status_json};
use super::Job;

/// Remote-command subprotocols, the server's preference first.
pub const EXEC_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Port-forward: SPDY tunnelled in WebSocket.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
}

/// Wraps an upgraded connection whose request head was already read
/// (`leftover`: bytes read past it).
pub async fn accept<S>(stream: S, leftover: Vec<u8>) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(config())).await
}

/// Serves one exec (or attach) over a WebSocket connection.
pub async fn serve_exec<S>(ws: WebSocketStream<S>, protocol: &str, job: Job)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let options = job.options();
    let v5 = protocol == EXEC_PROTOCOLS[0];
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            let last = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let send = |channel: u8, data: &[u8]| {
        let mut message = Vec::with_capacity(data.len() + 1);
        message.push(channel);
        message.extend_from_slice(data);
        Message::Binary(message.into())
    };
    // As the kubelet does: an empty message on the lowest channel the
    // server writes tells the client the streams are up.
    let first = if options.stdout {
        STDOUT
    } else if options.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out_tx.send(send(first, &[])).await;

    let mut io = Io::default();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(8);
    if options.stdin {
        io.stdin = Some(stdin_rx);
    }
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(4);
    if options.tty {
        let (tx, rx) = mpsc::channel(4);
        io.resize = Some(rx);
        tokio::spawn(resizes(resize_rx, tx));
    }
    let mut reader = tokio::spawn(async move {
        let mut stdin = options.stdin.then_some(stdin_tx);
        let mut resize = options.tty.then_some(resize_tx);
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, rest)) = data.split_first() else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(tx) = &stdin {
                        if !rest.is_empty() && tx.send(Bytes::copy_from_slice(rest)).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                }
                RESIZE => {
                    if let Some(tx) = &resize {
                        if tx.send(Bytes::copy_from_slice(rest)).await.is_err() {
                            resize = None;
                        }
                    }
                }
                CLOSE if v5 => match rest.first() {
                    Some(&STDIN) => stdin = None,
                    Some(&RESIZE) => resize = None,
                    _ => {}
                },
                _ => {}
            }
        }
    });
    let mut pumps = Vec::new();
    for (channel, on, slot) in [
        (STDOUT, options.stdout, &mut io.stdout),
        (STDERR, options.stderr, &mut io.stderr),
    ] {
        if on {
            let (tx, mut rx) = mpsc::channel::<Bytes>(4);
            *slot = Some(tx);
            let out = out_tx.clone();
            pumps.push(tokio::spawn(async move {
                while let Some(data) = rx.recv().await {
                    if out.send(send(channel, &data)).await.is_err() {
                        break;
                    }
                }
            }));
        }
    }
    // The client going away ends the command too (see remotecommand).
    let result = tokio::select! {
        result = run(&job, io) => result,
        _ = &mut reader => {
            tracing::debug!("exec/attach: the WebSocket client went away");
            drop(out_tx);
            let _ = writer.await;
            return;
        }
    };
    for pump in pumps {
        let _ = pump.await;
    }
    let _ = out_tx.send(send(ERROR, &status_json(&result))).await;
    let _ = out_tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    drop(out_tx);
    let _ = writer.await;
    reader.abort();
}

/// Carries a SPDY connection in WebSocket binary messages; returns the
/// byte-stream end the SPDY server runs on.
pub fn tunnel<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (spdy_side, ours) = tokio::io::duplex(64 * 1024);
    let (mut ours_r, mut ours_w) = tokio::io::split(ours);
    let (mut sink, mut source) = ws.split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match ours_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
    });
    tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            match message {
                Message::Binary(data) if ours_w.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = ours_w.shutdown().await;
    });
    spdy_side
}
