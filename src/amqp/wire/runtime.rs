//! The runtime the AMQP client is given: tokio's, except that its TCP streams are
//! [`CheckedStream`]s, over TLS for `amqps://`. The client opens its socket through the
//! runtime, so this is the one place where the bytes can be checked before it parses
//! them (after TLS has decrypted them).

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_rs::Tokio;
use async_rs::traits::{Executor, Reactor, RuntimeKit};
use async_rs::util::Task;
use futures_core::Stream;

use super::frames::FrameCheck;
use super::stream::CheckedStream;
use crate::amqp::tls::{self, TlsTarget, Transport};

/// Tokio, with checked TCP streams whose findings go to `check`, through TLS to `tls`.
#[derive(Debug, Clone)]
pub struct CheckedTokio {
    tokio: Tokio,
    check: FrameCheck,
    tls: Option<TlsTarget>,
}

impl CheckedTokio {
    /// Bound to the current tokio runtime.
    pub fn current(check: FrameCheck) -> Self {
        CheckedTokio {
            tokio: Tokio::current(),
            check,
            tls: None,
        }
    }

    /// Every connection it opens goes through TLS to `target`.
    pub(crate) fn with_tls(mut self, target: Option<TlsTarget>) -> Self {
        self.tls = target;
        self
    }
}

impl RuntimeKit for CheckedTokio {}

impl Executor for CheckedTokio {
    type Task<T: Send + 'static> = <Tokio as Executor>::Task<T>;

    fn block_on<T, F: Future<Output = T>>(&self, f: F) -> T {
        self.tokio.block_on(f)
    }

    fn spawn<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Self::Task<T>> {
        self.tokio.spawn(f)
    }

    fn spawn_blocking<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Self::Task<T>> {
        self.tokio.spawn_blocking(f)
    }
}

impl Reactor for CheckedTokio {
    type TcpStream = CheckedStream<Transport<<Tokio as Reactor>::TcpStream>>;
    type Sleep = <Tokio as Reactor>::Sleep;

    /// Not used by the client (it only connects): every stream it gets must be checked,
    /// so a raw handle is refused.
    fn register<H: Read + Write + Send + 'static>(
        &self,
        _socket: H,
    ) -> io::Result<impl futures_io::AsyncRead + futures_io::AsyncWrite + Send + Unpin + 'static>
    {
        Err::<Self::TcpStream, _>(io::Error::new(
            io::ErrorKind::Unsupported,
            "only connected TCP streams are checked",
        ))
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.tokio.sleep(dur)
    }

    fn interval(&self, dur: Duration) -> impl Stream<Item = Instant> + Send + 'static {
        self.tokio.interval(dur)
    }

    fn tcp_connect_addr(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        let connect = self.tokio.tcp_connect_addr(addr);
        let check = self.check.clone();
        let target = self.tls.clone();
        async move {
            let transport = tls::over(connect.await?, target.as_ref()).await?;
            Ok(CheckedStream::new(transport, check))
        }
    }
}
