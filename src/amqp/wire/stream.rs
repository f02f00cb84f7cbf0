//! The socket the AMQP client reads through: inbound bytes pass the [`FrameFilter`];
//! outbound ones go straight to the socket, or, on a connection that puts messages back
//! byte for byte ([`super::FrameCheck::verbatim`]), through the [`Outbound`] filter.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_io::{AsyncRead, AsyncWrite};

use super::frames::{FrameCheck, FrameFilter};
use super::outbound::Outbound;

const READ_CHUNK: usize = 64 * 1024;

/// A stream whose inbound frames are checked before the client sees them.
pub struct CheckedStream<S> {
    inner: S,
    filter: FrameFilter,
    read: Box<[u8]>,
    /// Checked bytes the client has not read yet, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    /// Only on a connection that asked for substitutes.
    outbound: Option<Outbound>,
    /// Bytes the client wrote (as the outbound filter passed them) that the socket has
    /// not taken yet, from `pending_at`: written before anything more is taken.
    pending: Vec<u8>,
    pending_at: usize,
}

impl<S> CheckedStream<S> {
    pub fn new(inner: S, check: FrameCheck) -> Self {
        CheckedStream {
            inner,
            outbound: check.verbatim.clone().map(Outbound::new),
            filter: FrameFilter::new(check),
            read: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
            out_at: 0,
            pending: Vec::new(),
            pending_at: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> CheckedStream<S> {
    /// Writes what is pending to the socket: ready once all of it is written.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while self.pending_at < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.pending_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_at += n;
        }
        self.pending.clear();
        self.pending_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes all of `bufs` through the outbound filter: what was pending is written
    /// first (until then nothing is taken), and what the filter passes is written as far
    /// as the socket takes it now; the rest at the next write or flush (the client
    /// flushes after every write).
    fn poll_filtered(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        let Some(outbound) = self.outbound.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let mut taken = 0;
        for buf in bufs {
            outbound.feed(buf, &mut self.pending);
            taken += buf.len();
        }
        if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
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
        let this = self.get_mut();
        if this.outbound.is_some() {
            return this.poll_filtered(cx, &[io::IoSlice::new(buf)]);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.outbound.is_some() {
            return this.poll_filtered(cx, bufs);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::AsyncWriteExt;
    use futures_lite::future::block_on;

    use super::*;
    use crate::amqp::wire::Verbatim;

    /// A socket that takes at most `at_once` bytes a write, and every other write (and
    /// flush) is not ready yet (waking at once).
    #[derive(Default)]
    struct Stingy {
        written: Vec<u8>,
        at_once: usize,
        calls: usize,
    }

    impl Stingy {
        fn not_now(&mut self, cx: &mut Context<'_>) -> bool {
            self.calls += 1;
            if self.calls % 2 == 0 {
                cx.waker().wake_by_ref();
                return true;
            }
            false
        }
    }

    impl AsyncWrite for Stingy {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.not_now(cx) {
                return Poll::Pending;
            }
            let n = buf.len().min(this.at_once);
            this.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.get_mut().not_now(cx) {
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A frame of `kind` on channel 1.
    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind, 0, 1];
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out.push(0xCE);
        out
    }

    /// A content header with body size 5 and this cluster id.
    fn header_with_cluster_id(id: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 60, 0, 0];
        out.extend_from_slice(&5u64.to_be_bytes());
        out.extend_from_slice(&(1u16 << 2).to_be_bytes());
        out.push(u8::try_from(id.len()).unwrap());
        out.extend_from_slice(id);
        out
    }

    /// Written in pieces of any size to a socket that takes few bytes at a time and is
    /// often not ready, everything arrives once, in order, the marked header swapped.
    #[test]
    fn partial_writes_lose_nothing_and_repeat_nothing() {
        for (piece, at_once) in [(1, 1), (3, 2), (10, 7), (64, 5), (4096, 4096)] {
            let verbatim = Verbatim::default();
            let substitute = [vec![0; 12], vec![0x80, 0, 3], b"abc".to_vec()].concat();
            let marker = verbatim.register(substitute);
            let body = frame(3, &[0xAB; 300]);
            let input = [
                frame(1, &[0, 60, 0, 40]),
                frame(2, &header_with_cluster_id(marker.as_bytes())),
                body.clone(),
            ]
            .concat();
            let mut want_header = vec![0, 60, 0, 0];
            want_header.extend_from_slice(&5u64.to_be_bytes());
            want_header.extend_from_slice(&[0x80, 0, 3]);
            want_header.extend_from_slice(b"abc");
            let want = [frame(1, &[0, 60, 0, 40]), frame(2, &want_header), body].concat();
            let check = FrameCheck {
                verbatim: Some(verbatim),
                ..FrameCheck::default()
            };
            let mut stream = CheckedStream::new(
                Stingy {
                    at_once,
                    ..Stingy::default()
                },
                check,
            );
            block_on(async {
                for part in input.chunks(piece) {
                    stream.write_all(part).await.unwrap();
                }
                stream.flush().await.unwrap();
            });
            assert_eq!(
                stream.inner.written, want,
                "pieces of {piece}, {at_once} at once"
            );
        }
    }
}
