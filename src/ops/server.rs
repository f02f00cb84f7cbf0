//! The worker's HTTP endpoints, over the [`Health`] state:
//!
//! - `GET /healthz`: 200 while the process runs (liveness).
//! - `GET /readyz`: 200 while the worker is consuming, 503 otherwise (connecting,
//!   blocked by a broker alarm, retrying publishes, isolating a refused publish,
//!   draining); the JSON body ([`HealthSnapshot`]) says which and why, and carries the
//!   counts.
//! - `GET /metrics`: the [`Metrics`](super::Metrics) in the OpenMetrics text format, for
//!   Prometheus: the same counters the `/readyz` counts are read from.
//!
//! [`HealthSnapshot`]: super::HealthSnapshot

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Health;
use super::metrics;

/// Listens on every address `http.listen` resolved to ([`ListenAddr::resolve`]). With
/// port 0 the first address picks a free port and the others take the same one. An
/// address this host cannot listen on for want of it (`::1` where IPv6 is off) is skipped
/// with a warning; a port in use or not permitted is an error, and so is listening
/// nowhere.
///
/// [`ListenAddr::resolve`]: crate::config::ListenAddr::resolve
pub async fn listen(addrs: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    let mut picked_port = None;
    let mut skipped = Vec::new();
    for &addr in addrs {
        let mut addr = addr;
        if let Some(port) = picked_port.filter(|_| addr.port() == 0) {
            addr.set_port(port);
        }
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                picked_port.get_or_insert(listener.local_addr()?.port());
                listeners.push(listener);
            }
            Err(e) => {
                let e = io::Error::new(e.kind(), format!("{addr}: {e}"));
                if matches!(
                    e.kind(),
                    io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
                ) {
                    return Err(e);
                }
                skipped.push(e);
            }
        }
    }
    if listeners.is_empty() {
        return Err(skipped.into_iter().next().unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no address to listen on")
        }));
    }
    for e in skipped {
        warn!(error = %e, "cannot listen on this address of http.listen; skipped");
    }
    Ok(listeners)
}

/// Serves the endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(health);
    // Whoever can reach this port could otherwise hold every descriptor the process has
    // (and the broker connections need some): few connections, closed when idle.
    let bounds = crate::http::Bounds {
        max_connections: MAX_CONNECTIONS,
        header_timeout: HEADER_TIMEOUT,
        max_header_bytes: 16 * 1024,
    };
    crate::http::serve(listener, app, bounds, Arc::default(), shutdown).await
}

/// Connections the health endpoints keep open at once (a scraper and a probe or two
/// need a handful); at the limit a new one closes the one idle the longest.
pub const MAX_CONNECTIONS: usize = 64;

/// Longest a client of the health endpoints may take to send its headers or stay idle.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn metrics_text(State(health): State<Health>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        health.metrics().encode(),
    )
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let snapshot = health.snapshot();
    let status = if snapshot.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // serde_json directly rather than axum's `json` feature, which turns on serde_json's
    // `raw_value` for the whole build.
    let body = serde_json::to_string(&snapshot).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn listens_on_every_address_with_one_port() {
        // 192.0.2.1 (TEST-NET-1) is no address of this host: skipped, since another binds.
        let listeners = listen(&addrs(&["127.0.0.1:0", "192.0.2.1:0", "127.0.0.2:0"]))
            .await
            .unwrap();
        let bound: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        assert_eq!(bound.len(), 2, "{bound:?}");
        assert_ne!(bound[0].port(), 0);
        assert_eq!(bound[0].port(), bound[1].port());
    }

    #[tokio::test]
    async fn listening_nowhere_or_on_a_taken_port_is_an_error() {
        let e = listen(&addrs(&["192.0.2.1:0"])).await.unwrap_err();
        assert!(e.to_string().starts_with("192.0.2.1:0: "), "{e}");
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = listen(&addrs(&["192.0.2.1:0", &format!("127.0.0.1:{port}")]))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    }
}
