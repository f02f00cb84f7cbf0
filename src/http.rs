//! Serving HTTP/1 within bounds, for the gateway (`ingest`) and the health endpoints
//! (`http.listen`): whoever connects can hold a descriptor and a buffer, so both are
//! limited, and a connection that sends nothing useful is closed.
//!
//! - **Connections**: at most [`Bounds::max_connections`] open at once. At the limit, a new
//!   connection closes the one idle the longest (no request in progress: idle between
//!   requests, or still sending its first headers), as nginx reuses its keep-alive
//!   connections; when every one is busy, the new one is closed at once. A closed
//!   connection's descriptor is freed when its task ends, so the server accepts no more
//!   while [`SLACK`] connections beyond the limit still await their end: the process
//!   never runs out of descriptors on their account, so its broker connections never do.
//! - **Headers**: a request's headers must arrive within [`Bounds::header_timeout`],
//!   which is also how long a connection may stay idle between requests; at most
//!   [`Bounds::max_header_bytes`] of them are buffered (more: 431).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;
use tracing::{debug, warn};

/// How much a server lets its clients hold.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
}

/// What the bounds did, for metrics.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// New connections closed at once: every open one was busy.
    pub refused: AtomicU64,
}

/// One open connection, as the accept loop sees it.
struct Tracked {
    /// Requests in progress on it.
    busy: Arc<AtomicUsize>,
    close: CancellationToken,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Open {
    next: u64,
    by_age: BTreeMap<u64, Tracked>,
}

impl Open {
    /// Makes room for one more connection: closes the oldest idle one when at `max`.
    /// `None` when every open connection is busy.
    fn admit(&mut self, max: usize, counts: &ConnectionCounts) -> Option<(u64, Tracked)> {
        if self.by_age.len() >= max {
            let idle = self
                .by_age
                .iter()
                .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id)?;
            if let Some(evicted) = self.by_age.remove(&idle) {
                evicted.close.cancel();
                counts.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = self.next;
        self.next += 1;
        let tracked = Tracked {
            busy: Arc::default(),
            close: CancellationToken::new(),
        };
        self.by_age.insert(
            id,
            Tracked {
                busy: tracked.busy.clone(),
                close: tracked.close.clone(),
            },
        );
        Some((id, tracked))
    }
}

/// Marks a connection busy while a request is in progress.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn start(count: &Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::AcqRel);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many connections beyond [`Bounds::max_connections`] may be closed and not yet
/// ended (their descriptors still open) before the server stops accepting until one ends.
pub const SLACK: usize = 8;

/// Serves `router` on `listener` within `bounds` until `shutdown` is cancelled; then
/// stops accepting, lets requests in progress finish and closes idle connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    counts: Arc<ConnectionCounts>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let open = Arc::new(Mutex::new(Open::default()));
    let tasks = TaskTracker::new();
    // One per descriptor a connection holds, from its accept to its task's end.
    let descriptors = Arc::new(tokio::sync::Semaphore::new(
        bounds.max_connections.saturating_add(SLACK),
    ));
    loop {
        let descriptor = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = descriptors.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (other than ours) or a connection reset before it was
                // accepted: wait a little rather than spin.
                warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(bounds.max_connections, &counts);
        let Some((id, tracked)) = admitted else {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            debug!("every connection busy; a new one closed");
            continue;
        };
        counts.open.fetch_add(1, Ordering::Relaxed);
        let router = router.clone();
        let open = open.clone();
        let counts = counts.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _descriptor = descriptor;
            let busy = tracked.busy;
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let busy = Busy::start(&busy);
                let mut router = router.clone();
                async move {
                    let _busy = busy;
                    router.call(request.map(Body::new)).await
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_timeout)
                .max_buf_size(bounds.max_header_bytes)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                // Evicted: dropped, which closes it.
                () = tracked.close.cancelled() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            open.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .by_age
                .remove(&id);
            counts.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_oldest_idle_connection_makes_room() {
        let counts = ConnectionCounts::default();
        let mut open = Open::default();
        let (_, first) = open.admit(2, &counts).unwrap();
        let (_, second) = open.admit(2, &counts).unwrap();
        let _busy = Busy::start(&first.busy);
        let (_, third) = open.admit(2, &counts).unwrap();
        assert!(!first.close.is_cancelled(), "busy: kept");
        assert!(second.close.is_cancelled(), "the oldest idle one");
        assert_eq!(counts.evicted.load(Ordering::Relaxed), 1);
        let _busy3 = Busy::start(&third.busy);
        assert!(open.admit(2, &counts).is_none(), "every one busy");
    }
}
