//! The rewriter as a connection: reads pass through [`Rewriter`], writes go
//! to the client unchanged.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Rewriter;

const READ_CHUNK: usize = 16 * 1024;

/// A client connection whose header blocks reach the server with a valid
/// `:authority`.
pub struct FixedAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    /// Rewritten bytes the server has not read yet, from `pending_at`.
    pending: Vec<u8>,
    pending_at: usize,
    chunk: Box<[u8]>,
    failed: bool,
}

impl<S> FixedAuthority<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(),
            pending: Vec::new(),
            pending_at: 0,
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            failed: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixedAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pending_at < this.pending.len() {
                let n = (this.pending.len() - this.pending_at).min(dst.remaining());
                dst.put_slice(&this.pending[this.pending_at..this.pending_at + n]);
                this.pending_at += n;
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "CRI client sent malformed HTTP/2",
                )));
            }
            let mut read = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.pending.clear();
            this.pending_at = 0;
            let before = this.rewriter.rewritten;
            if let Err(e) = this.rewriter.feed(read.filled(), &mut this.pending) {
                // What was rewritten before the error still goes to the
                // server; then the connection ends.
                tracing::warn!(error = %e, "closing a CRI connection: malformed HTTP/2 from the client");
                this.failed = true;
            }
            if before == 0 && this.rewriter.rewritten > 0 {
                tracing::debug!("CRI client sends an invalid :authority; serving it as localhost");
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixedAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for FixedAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
