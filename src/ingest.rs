//! The reference gateway (`webhook-normalizer ingest`): what the raw-message contract
//! asks of a gateway and nothing more. `POST /webhooks/{vendor}` with the vendor's body;
//! the bytes are published as received, with `x-vendor`, `x-received-at`, a fresh
//! `message_id` and the vendor's signature headers, persistent and `mandatory`, and the
//! answer is 200 only once the broker has confirmed them; 503 otherwise (the broker
//! unreachable, a nack, a return, a timeout), so that the vendor retries.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::{GatewayPublisher, Published, RawBody};
use crate::canonical::{Vendor, rfc3339_utc};
use crate::config::Settings;

/// The vendors' signature headers, forwarded as they are (the worker verifies them).
pub const FORWARDED_HEADERS: [&str; 4] = [
    "x-entuitive-signature",
    "x-deel-signature",
    "x-deel-hmac-label",
    "x-deel-webhook-version",
];

struct Gateway {
    publisher: GatewayPublisher,
    max_body_bytes: usize,
    request_timeout: Duration,
}

/// Serves on `listener` until `shutdown` is cancelled; requests in progress finish.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let gateway = Arc::new(Gateway {
        max_body_bytes: settings.limits.max_body_bytes,
        request_timeout: settings.ingest.request_timeout(),
        publisher: GatewayPublisher::new(settings),
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/webhooks/{vendor}", post(receive))
        .with_state(gateway);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn receive(
    State(gateway): State<Arc<Gateway>>,
    Path(vendor): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, &'static str) {
    let Ok(vendor) = vendor.parse::<Vendor>() else {
        return (
            StatusCode::NOT_FOUND,
            "no such vendor: /webhooks/entuitive, /webhooks/authenticate or /webhooks/deel\n",
        );
    };
    let received_at = rfc3339_utc::format(&chrono::Utc::now());
    match tokio::time::timeout(
        gateway.request_timeout,
        accept(&gateway, vendor, &headers, body, received_at),
    )
    .await
    {
        Ok(answer) => answer,
        Err(_) => {
            warn!(vendor = vendor.key(), "not confirmed in time; answered 503");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not accepted in time; retry\n",
            )
        }
    }
}

async fn accept(
    gateway: &Gateway,
    vendor: Vendor,
    headers: &HeaderMap,
    body: Body,
    received_at: String,
) -> (StatusCode, &'static str) {
    let body = match axum::body::to_bytes(body, gateway.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, "body over the limit\n");
        }
    };
    let forwarded = FORWARDED_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.to_owned()))
        })
        .collect();
    let message_id = format!("ingest-{:032x}", fastrand::u128(..));
    let raw = RawBody {
        body: body.to_vec(),
        routing_key: vendor.key().to_owned(),
        vendor: Some(vendor.key().to_owned()),
        message_id: Some(message_id.clone()),
        received_at,
        headers: forwarded,
    };
    match gateway.publisher.publish(&raw).await {
        Ok(Published::Confirmed) => {
            debug!(
                vendor = vendor.key(),
                message_id,
                bytes = raw.body.len(),
                "accepted"
            );
            (StatusCode::OK, "accepted\n")
        }
        Ok(outcome) => {
            warn!(
                vendor = vendor.key(),
                ?outcome,
                "the broker did not take it; answered 503"
            );
            (StatusCode::SERVICE_UNAVAILABLE, "not accepted; retry\n")
        }
        Err(e) => {
            warn!(error = %e, "cannot publish; answered 503");
            (StatusCode::SERVICE_UNAVAILABLE, "not accepted; retry\n")
        }
    }
}
