//! Attach from vimanad's side: connects to the container's attach relay
//! (`container::attach`, a child of its shim, so it outlives vimanad) and
//! bridges its frames to a transport's stdio. Ends when the container's
//! output ends or the client goes away.

use std::path::PathBuf;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::exec::Io;
use super::exec_shim::Outcome;
use super::StreamError;
use crate::control::container::attach::{CLOSE_STDIN, RESIZE, STDERR, STDIN, STDOUT};

const MAX_FRAME: usize = 1 << 20;

/// A running container's relay.
#[derive(Debug, Clone)]
pub struct AttachTarget {
    pub container_id: String,
    /// `attach.sock` in its state directory (the host's, root only).
    pub socket: PathBuf,
}

fn frame(channel: u8, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + data.len());
    out.put_u8(channel);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

pub async fn attach(target: &AttachTarget, io: Io) -> Result<Outcome, StreamError> {
    let stream = UnixStream::connect(&target.socket).await.map_err(|e| {
        StreamError::NotRunning(format!(
            "container {}: its attach relay does not answer ({e}); was it started by this version?",
            target.container_id
        ))
    })?;
    let (mut from_relay, mut to_relay) = stream.into_split();
    let Io {
        stdin,
        stdout,
        stderr,
        resize,
    } = io;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    if let Some(mut stdin) = stdin {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(data) = stdin.recv().await {
                if tx.send(frame(STDIN, &data)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(frame(CLOSE_STDIN, &[])).await;
        });
    }
    if let Some(mut resize) = resize {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some((width, height)) = resize.recv().await {
                let mut size = [0u8; 4];
                size[..2].copy_from_slice(&width.to_be_bytes());
                size[2..].copy_from_slice(&height.to_be_bytes());
                if tx.send(frame(RESIZE, &size)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let writer = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if to_relay.write_all(&data).await.is_err() {
                return;
            }
        }
    });
    let mut head = [0u8; 5];
    let mut data = Vec::new();
    loop {
        if from_relay.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            break;
        }
        data.resize(len, 0);
        if from_relay.read_exact(&mut data).await.is_err() {
            break;
        }
        let to = match head[0] {
            STDOUT => stdout.as_ref(),
            STDERR => stderr.as_ref(),
            _ => None,
        };
        if let Some(to) = to {
            if to.send(Bytes::copy_from_slice(&data)).await.is_err() {
                break;
            }
        }
    }
    writer.abort();
    Ok(Outcome::Exited {
        code: 0,
        signal: None,
    })
}
