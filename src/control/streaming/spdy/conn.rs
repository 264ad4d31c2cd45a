//! A server-side SPDY/3.1 connection: the client opens streams, the server
//! answers each SYN_STREAM with a SYN_REPLY and exchanges data on it.
//!
//! One reader task demultiplexes frames into per-stream bounded channels;
//! one writer task owns the socket's write half and the deflate stream. A
//! stream's consumer that stops reading stops the reader (TCP backpressure
//! on the client), and a client that stops reading fills the writer's
//! bounded queue, which stops the producers: memory stays bounded either way.
//! client-go's SPDY peer (moby/spdystream) uses no SPDY flow control, so
//! WINDOW_UPDATE and SETTINGS are read and ignored.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frame::{Decoder, Encoder, Frame, HeaderList, RST_PROTOCOL_ERROR, RST_REFUSED_STREAM};

/// Most streams open at once on one connection (exec needs 5, each
/// forwarded TCP connection 2).
const MAX_STREAMS: usize = 256;
/// Data frames queued per inbound stream before the reader waits.
const INBOUND_DEPTH: usize = 8;
/// Frames queued for the writer before producers wait.
const OUTBOUND_DEPTH: usize = 32;
/// Largest data frame written (client-go reads any size; keep it small).
pub const MAX_DATA: usize = 32 * 1024;

/// A stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: HeaderList,
    /// Its data; ends at the client's FIN or RST_STREAM.
    pub data: mpsc::Receiver<Bytes>,
}

/// Writes to the connection; cheap to clone, one per producer.
#[derive(Clone)]
pub struct Writer {
    out: mpsc::Sender<Frame>,
}

impl Writer {
    /// Sends `data` on stream `id`, in frames of at most [`MAX_DATA`];
    /// waits while the client is not reading. False once the connection is
    /// gone.
    pub async fn data(&self, id: u32, mut data: Bytes) -> bool {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA));
            if self
                .out
                .send(Frame::Data {
                    id,
                    fin: false,
                    data: chunk,
                })
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Half-closes stream `id` from the server's side.
    pub async fn fin(&self, id: u32) {
        let _ = self
            .out
            .send(Frame::Data {
                id,
                fin: true,
                data: Bytes::new(),
            })
            .await;
    }

    pub async fn reset(&self, id: u32, status: u32) {
        let _ = self.out.send(Frame::RstStream { id, status }).await;
    }

    /// Ends the connection: GOAWAY, then the writer closes the socket once
    /// everything queued before it is written.
    pub async fn go_away(&self) {
        let _ = self
            .out
            .send(Frame::GoAway {
                last_good: 0,
                status: 0,
            })
            .await;
    }
}

/// Starts the connection's tasks; returns the writer and the streams the
/// client opens, in order.
pub fn serve<R, W>(reader: R, writer: W) -> (Writer, mpsc::Receiver<Stream>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_DEPTH);
    let (streams_tx, streams_rx) = mpsc::channel(16);
    tokio::spawn(write_loop(writer, out_rx));
    tokio::spawn(read_loop(reader, out_tx.clone(), streams_tx));
    (Writer { out: out_tx }, streams_rx)
}

async fn write_loop<W: AsyncWrite + Unpin>(mut writer: W, mut frames: mpsc::Receiver<Frame>) {
    let mut encoder = Encoder::new();
    let mut buf = BytesMut::with_capacity(MAX_DATA + 64);
    while let Some(frame) = frames.recv().await {
        let last = matches!(frame, Frame::GoAway { .. });
        buf.clear();
        encoder.encode(&frame, &mut buf);
        // Batch what is already queued into one write.
        while !last && buf.len() < MAX_DATA {
            match frames.try_recv() {
                Ok(next) => {
                    let stop = matches!(next, Frame::GoAway { .. });
                    encoder.encode(&next, &mut buf);
                    if stop {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
            break;
        }
        if last {
            break;
        }
    }
    let _ = writer.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    out: mpsc::Sender<Frame>,
    new_streams: mpsc::Sender<Stream>,
) {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    loop {
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                buf.reserve(16 * 1024);
                match reader.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "SPDY: closing the connection");
                let _ = out
                    .send(Frame::GoAway {
                        last_good: 0,
                        status: RST_PROTOCOL_ERROR,
                    })
                    .await;
                break;
            }
        };
        match frame {
            Frame::SynStream { id, fin, headers } => {
                if id == 0 || id % 2 == 0 || open.contains_key(&id) || open.len() >= MAX_STREAMS {
                    let _ = out
                        .send(Frame::RstStream {
                            id,
                            status: RST_REFUSED_STREAM,
                        })
                        .await;
                    continue;
                }
                let (tx, rx) = mpsc::channel(INBOUND_DEPTH);
                if !fin {
                    open.insert(id, tx);
                }
                // The reply goes out before anything the consumer writes.
                let _ = out
                    .send(Frame::SynReply {
                        id,
                        fin: false,
                        headers: Vec::new(),
                    })
                    .await;
                let stream = Stream {
                    id,
                    headers,
                    data: rx,
                };
                if new_streams.send(stream).await.is_err() {
                    // Nobody takes streams any more: refuse this one.
                    open.remove(&id);
                    let _ = out
                        .send(Frame::RstStream {
                            id,
                            status: RST_REFUSED_STREAM,
                        })
                        .await;
                }
            }
            Frame::Data { id, fin, data } => {
                if let Some(tx) = open.get(&id) {
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        // The consumer is done with it; drop further data.
                        open.remove(&id);
                    }
                }
                if fin {
                    open.remove(&id);
                }
            }
            Frame::RstStream { id, .. } => {
                open.remove(&id);
            }
            Frame::Ping(id) => {
                let _ = out.send(Frame::Ping(id)).await;
            }
            Frame::GoAway { .. } => break,
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Settings
            | Frame::Unknown => {}
        }
    }
    // Every inbound stream ends here: consumers see EOF.
}
