//! The socket the AMQP client reads through: inbound bytes pass the [`FrameFilter`],
//! outbound ones go straight to the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_io::{AsyncRead, AsyncWrite};

use super::frames::{FrameCheck, FrameFilter};

const READ_CHUNK: usize = 64 * 1024;

/// A stream whose inbound frames are checked before the client sees them.
pub struct CheckedStream<S> {
    inner: S,
    filter: FrameFilter,
    read: Box<[u8]>,
    /// Checked bytes the client has not read yet, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
}

impl<S> CheckedStream<S> {
    pub fn new(inner: S, check: FrameCheck) -> Self {
        CheckedStream {
            inner,
            filter: FrameFilter::new(check),
            read: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
            out_at: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CheckedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.len().min(this.out.len() - this.out_at);
                buf[..n].copy_from_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(n));
            }
            // Bytes of a body frame go straight into the client's buffer.
            let passing = this.filter.passing();
            if passing > 0 && !buf.is_empty() {
                let want = passing.min(buf.len());
                let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf[..want]))?;
                this.filter.passed(&buf[..n]);
                return Poll::Ready(Ok(n));
            }
            let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut this.read))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            this.filter.feed(&this.read[..n], &mut this.out);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CheckedStream<S> {
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}
