//! Downloading one blob into the staging area: the network task streams
//! chunks to a blocking writer that verifies size and digest as it writes;
//! a cut download is reported with its cause. Also the pull's progress
//! log (bytes and blobs done).

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use super::super::error::{ErrorKind, ImageError};
use super::super::insert::Staging;
use super::super::oci::{blob_kind, Descriptor};
use super::remote::Remote;

/// Chunks buffered between the network and the file being written.
const CHANNEL_CHUNKS: usize = 16;
/// Progress is logged at most this often (and once per blob).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Downloads one blob into staging, verifying size and digest as it is
/// written.
pub(super) async fn fetch_blob(
    remote: &Remote,
    staging: &Arc<Staging>,
    desc: Descriptor,
    progress: &Progress,
) -> Result<(), ImageError> {
    let what = format!("{} {}", blob_kind(&desc), desc.digest);
    let sized = remote
        .client
        .pull_blob_stream(&remote.reference, desc.digest.as_str())
        .await
        .map_err(remote.fail(format!("fetching {what}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let writer = {
        let (staging, desc, image) = (Arc::clone(staging), desc.clone(), remote.image.clone());
        tokio::task::spawn_blocking(move || {
            staging.write_blob(&desc, ChannelReader::new(rx), &image)
        })
    };
    let mut stream = sized.stream;
    let mut received = 0u64;
    let mut cut: Option<io::Error> = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                received += chunk.len() as u64;
                progress.add(chunk.len() as u64);
                if tx.send(chunk).await.is_err() {
                    break; // the writer stopped: too much data, or a write error
                }
            }
            // oci-client's own digest check; ours (in `write_blob`) names
            // the expected and actual digests, so let it speak.
            Err(e) if is_digest_error(&e) => break,
            Err(e) => {
                cut = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| {
        ImageError::invalid_image(&remote.image, format!("{what}: writer failed: {e}"))
    })?;
    match (written, cut) {
        (Ok(_), _) => {
            progress.blob_done(&what);
            Ok(())
        }
        (Err(_), Some(cut)) => Err(ImageError::Registry {
            image: remote.image.clone(),
            kind: ErrorKind::Unavailable,
            reason: format!(
                "registry {}: fetching {what}: the download was cut short after {received} of {} bytes: {}",
                remote.registry,
                desc.size,
                cause_chain(&cut)
            ),
        }),
        (Err(e), None) => Err(e),
    }
}

fn is_digest_error(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>())
}

fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The blocking side of a download: chunks from the network task.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Bytes and blobs done, logged per blob and at most once a second.
pub(super) struct Progress {
    image: String,
    total_bytes: u64,
    total_blobs: usize,
    pub(super) done_bytes: AtomicU64,
    pub(super) blobs_done: AtomicUsize,
    last_log: Mutex<Instant>,
    /// Every pull's bytes, for `/metrics`.
    fetched: Arc<AtomicU64>,
}

impl Progress {
    pub(super) fn new(image: &str, wanted: &[Descriptor], fetched: Arc<AtomicU64>) -> Progress {
        Progress {
            image: image.to_string(),
            total_bytes: wanted.iter().map(|d| d.size).sum(),
            total_blobs: wanted.len(),
            done_bytes: AtomicU64::new(0),
            blobs_done: AtomicUsize::new(0),
            last_log: Mutex::new(Instant::now()),
            fetched,
        }
    }

    fn add(&self, n: u64) {
        self.fetched.fetch_add(n, Ordering::Relaxed);
        let done = self.done_bytes.fetch_add(n, Ordering::Relaxed) + n;
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= PROGRESS_EVERY {
            *last = Instant::now();
            tracing::info!(
                image = %self.image,
                bytes_done = done,
                bytes_total = self.total_bytes,
                blobs_done = self.blobs_done.load(Ordering::Relaxed),
                blobs_total = self.total_blobs,
                "pull progress"
            );
        }
    }

    fn blob_done(&self, what: &str) {
        let blobs = self.blobs_done.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            image = %self.image,
            blob = what,
            bytes_done = self.done_bytes.load(Ordering::Relaxed),
            bytes_total = self.total_bytes,
            blobs_done = blobs,
            blobs_total = self.total_blobs,
            "pull progress"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_reader_reassembles_chunks() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let feeder = std::thread::spawn(move || {
            for c in [&b"ab"[..], b"", b"cde"] {
                tx.blocking_send(Bytes::from_static(c)).unwrap();
            }
        });
        let mut out = Vec::new();
        ChannelReader::new(rx).read_to_end(&mut out).unwrap();
        feeder.join().unwrap();
        assert_eq!(out, b"abcde");
    }
}
