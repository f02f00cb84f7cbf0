//! The reference gateway (`webhook-normalizer ingest`): what the raw-message contract
//! asks of a gateway, made safe to face the internet. `POST /webhooks/{vendor}` (or
//! `/webhooks/{vendor}/{token}`) with the vendor's body; the bytes are published as
//! received, with `x-vendor`, `x-received-at`, a fresh `message_id` and the vendor's
//! signature headers, persistent and `mandatory`, and the answer is 200 only once the
//! broker has confirmed them; 503 otherwise (the broker unreachable or blocking, a nack,
//! a return, a timeout), so that the vendor retries.
//!
//! Before publishing, a request must get in ([`access`]: a path token or basic auth, for
//! vendors configured so) and, where `signatures.{vendor}` has secrets and
//! `ingest.verify_signatures` is on, carry a valid signature: otherwise 401, counted, and
//! nothing stored. Every request and connection is bounded ([`crate::http`],
//! [`memory_bound`]).

pub mod access;
pub mod metrics;
mod publisher;

pub use publisher::{
    GatewayPublisher, Published, RawBody, Readiness as GatewayReadiness, publish_bodies,
};

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::access::Presented;
use self::metrics::{IngestMetrics, Outcome};
use crate::canonical::{Vendor, rfc3339_utc};
use crate::config::{Access, GatewaySettings};
use crate::http::{Bounds, ConnectionCounts};
use crate::signatures::Signatures;
use crate::spans::{Kind, Spans};
use crate::trace_context::{TRACEPARENT, TraceParent};
use opentelemetry::KeyValue;

/// The vendors' signature headers, forwarded as they are (the worker verifies them too).
pub const FORWARDED_HEADERS: [&str; 4] = [
    "x-entuitive-signature",
    "x-deel-signature",
    "x-deel-hmac-label",
    "x-deel-webhook-version",
];

/// Longest forwarded header value taken: a signature is 64 hex digits, a label or a
/// version a few characters. Longer is refused (400): forwarded as it was, it could
/// make the message's properties larger than the broker takes in one frame, and the
/// broker would close the connection every request shares.
pub const MAX_FORWARDED_HEADER_BYTES: usize = 256;

/// Bytes of request headers buffered per connection; more is refused (431).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Descriptors kept for everything but client connections (broker connections, the
/// listeners, logs), when `ingest.max_connections` is set above what the process may
/// open.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Memory not counted per connection or request: the runtime, the broker connection,
/// the allocator's slack.
const BASE_MEMORY: u64 = 64 * 1024 * 1024;

/// The most memory `ingest` uses with these settings, stated in `docs/gateways.md` and logged
/// at start: per connection, its header buffer and hyper's own state; per request
/// holding a turn, its body up to four times (read into a growing buffer, published
/// into the client's frames); and a base.
pub fn memory_bound(settings: &GatewaySettings, max_connections: usize) -> u64 {
    let per_connection = MAX_HEADER_BYTES as u64 + 16 * 1024;
    let per_request = 4 * settings.max_body_bytes as u64;
    max_connections as u64 * per_connection
        + settings.max_concurrent_requests as u64 * per_request
        + BASE_MEMORY
}

/// `ingest.max_connections`, or fewer when the process may not open that many
/// descriptors (`RLIMIT_NOFILE`, less [`RESERVED_DESCRIPTORS`]).
pub fn max_connections(settings: &GatewaySettings) -> usize {
    let configured = settings.max_connections;
    let Ok(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .ok_or(())
    else {
        return configured;
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    if room < configured {
        warn!(
            configured,
            descriptors = limit,
            using = room,
            "ingest.max_connections is more than this process may open descriptors for; using fewer"
        );
        return room.max(1);
    }
    configured
}

struct Gateway {
    publisher: GatewayPublisher,
    max_body_bytes: usize,
    request_timeout: Duration,
    /// The secrets to check signatures with, when `ingest.verify_signatures` is on.
    signatures: Option<Signatures>,
    access: Access,
    /// `ingest.trust_traceparent`.
    trust_traceparent: bool,
    /// One span per request published, when spans are exported.
    spans: Spans,
    /// Turns: requests holding one have their body in memory.
    turns: Semaphore,
    metrics: IngestMetrics,
}

/// The gateway, shared by every address it listens on.
pub struct Ingest {
    gateway: Arc<Gateway>,
    bounds: Bounds,
    connections: Arc<ConnectionCounts>,
}

impl Ingest {
    pub fn new(settings: GatewaySettings) -> Ingest {
        let max_connections = max_connections(&settings);
        let bound = memory_bound(&settings, max_connections);
        info!(
            max_connections,
            max_concurrent_requests = settings.max_concurrent_requests,
            memory_bound_mib = bound / (1024 * 1024),
            "ingest: bounds"
        );
        let connections = Arc::new(ConnectionCounts::default());
        let bounds = Bounds {
            max_connections,
            header_timeout: settings.header_timeout,
            max_header_bytes: MAX_HEADER_BYTES,
        };
        let gateway = Arc::new(Gateway {
            max_body_bytes: settings.max_body_bytes,
            request_timeout: settings.request_timeout,
            turns: Semaphore::new(settings.max_concurrent_requests),
            metrics: IngestMetrics::new(bound, connections.clone()),
            publisher: GatewayPublisher::new(settings.amqp, settings.exchange),
            signatures: settings.signatures,
            access: settings.access,
            trust_traceparent: settings.trust_traceparent,
            spans: settings.spans,
        });
        Ingest {
            gateway,
            bounds,
            connections,
        }
    }

    /// Serves on `listener` until `shutdown` is cancelled; requests in progress finish.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readiness))
            .route("/metrics", get(metrics_text))
            .route("/webhooks/{vendor}", post(receive))
            .route("/webhooks/{vendor}/{token}", post(receive_with_token))
            .with_state(self.gateway.clone());
        crate::http::serve(
            listener,
            app,
            self.bounds,
            self.connections.clone(),
            shutdown,
        )
        .await
    }
}

async fn metrics_text(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::ops::METRICS_CONTENT_TYPE)],
        gateway.metrics.encode(),
    )
}

/// `GET /readyz`: 200 when a webhook now would be sent to the broker, else 503 and why
/// (JSON: `ready`, `state`, and `reason` when the broker cannot be reached).
async fn readiness(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let (status, state, reason) = match gateway.publisher.readiness() {
        GatewayReadiness::Ready => (StatusCode::OK, "ready", None),
        GatewayReadiness::Blocked => (StatusCode::SERVICE_UNAVAILABLE, "broker_blocked", None),
        GatewayReadiness::Connecting => (StatusCode::SERVICE_UNAVAILABLE, "connecting", None),
        GatewayReadiness::Unreachable(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, "unreachable", Some(why))
        }
    };
    let mut doc = serde_json::json!({"ready": status == StatusCode::OK, "state": state});
    if let Some(why) = reason {
        doc["reason"] = why.into();
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string() + "\n",
    )
}

async fn receive(
    State(gateway): State<Arc<Gateway>>,
    Path(vendor): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, &'static str) {
    answer(&gateway, &vendor, None, &headers, body).await
}

async fn receive_with_token(
    State(gateway): State<Arc<Gateway>>,
    Path((vendor, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, &'static str) {
    answer(&gateway, &vendor, Some(&token), &headers, body).await
}

async fn answer(
    gateway: &Gateway,
    vendor: &str,
    token: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> (StatusCode, &'static str) {
    let Ok(vendor) = vendor.parse::<Vendor>() else {
        return (
            StatusCode::NOT_FOUND,
            "no such vendor: /webhooks/entuitive, /webhooks/authenticate or /webhooks/deel\n",
        );
    };
    let received_at = rfc3339_utc::format(&chrono::Utc::now());
    let started = Instant::now();
    let deadline = started + gateway.request_timeout;
    let (status, text, outcome) = match tokio::time::timeout_at(
        deadline,
        accept(gateway, vendor, token, headers, body, received_at, deadline),
    )
    .await
    {
        Ok(answer) => answer,
        Err(_) => {
            warn!(vendor = vendor.key(), "not confirmed in time; answered 503");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not accepted in time; retry\n",
                Outcome::unavailable,
            )
        }
    };
    let took = started.elapsed();
    gateway.metrics.answered(vendor.key(), outcome, took);
    // The access log: what and how, never who (no address, no header, no body).
    info!(
        target: "webhook_normalizer::ingest::access",
        vendor = vendor.key(),
        status = status.as_u16(),
        outcome = ?outcome,
        millis = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        "ingest: access"
    );
    (status, text)
}

type Answer = (StatusCode, &'static str, Outcome);

const UNAUTHORIZED: Answer = (
    StatusCode::UNAUTHORIZED,
    "not signed or authorized as the vendor\n",
    Outcome::unauthorized,
);

async fn accept(
    gateway: &Gateway,
    vendor: Vendor,
    token: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    received_at: String,
    deadline: Instant,
) -> Answer {
    let presented = Presented {
        path_token: token,
        authorization: headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
    };
    if let Err(denied) = access::check(&gateway.access, vendor, presented) {
        warn!(vendor = vendor.key(), reason = %denied, "answered 401");
        return UNAUTHORIZED;
    }
    let mut forwarded = Vec::new();
    for name in FORWARDED_HEADERS {
        let Some(value) = headers.get(name) else {
            continue;
        };
        match value.to_str() {
            Ok(text) if text.len() <= MAX_FORWARDED_HEADER_BYTES => {
                forwarded.push((name.to_owned(), text.to_owned()));
            }
            _ => {
                warn!(
                    vendor = vendor.key(),
                    header = name,
                    bytes = value.len(),
                    "a forwarded header is over {MAX_FORWARDED_HEADER_BYTES} bytes or not text; answered 400"
                );
                return (
                    StatusCode::BAD_REQUEST,
                    "a signature header is too long or not text\n",
                    Outcome::bad_request,
                );
            }
        }
    }
    // A turn before the body is read: only requests holding one have it in memory.
    let Ok(Ok(_turn)) = tokio::time::timeout_at(deadline, gateway.turns.acquire()).await else {
        warn!(
            vendor = vendor.key(),
            "no turn within the request timeout; answered 503"
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "busy; retry\n",
            Outcome::busy,
        );
    };
    // The request's trace: the client's own only when trusted; else a trace of ours,
    // linked to the client's (anyone on the internet could choose its ids).
    let sent = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let (parent, link) = if gateway.trust_traceparent {
        (sent, None)
    } else {
        (None, sent)
    };
    let (trace, mut span) = gateway.spans.start(
        || String::from("POST /webhooks/{vendor}"),
        Kind::Server,
        parent,
        link,
        || {
            // The route, never the path: a path may hold the vendor's secret token.
            vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", "/webhooks/{vendor}"),
                KeyValue::new("webhook_normalizer.vendor", vendor.key()),
            ]
        },
    );
    gateway.metrics.in_progress().inc();
    let answer = publish(gateway, vendor, forwarded, body, received_at, trace).await;
    if let Some(span) = span.as_mut() {
        span.set("http.response.status_code", i64::from(answer.0.as_u16()));
    }
    gateway.metrics.in_progress().dec();
    answer
}

async fn publish(
    gateway: &Gateway,
    vendor: Vendor,
    forwarded: Vec<(String, String)>,
    body: Body,
    received_at: String,
    trace: TraceParent,
) -> Answer {
    let body = match axum::body::to_bytes(body, gateway.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body over the limit\n",
                Outcome::too_large,
            );
        }
    };
    if let Some(signatures) = &gateway.signatures {
        let header = |name: &str| {
            forwarded
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if let Err(e) = crate::signatures::verify(signatures, vendor, header, &body) {
            warn!(vendor = vendor.key(), reason = %e, "answered 401");
            return UNAUTHORIZED;
        }
    }
    let message_id = format!("ingest-{:032x}", fastrand::u128(..));
    let mut headers = forwarded;
    headers.push((TRACEPARENT.to_owned(), trace.header()));
    let raw = RawBody {
        body: Vec::from(body),
        routing_key: vendor.key().to_owned(),
        vendor: Some(vendor.key().to_owned()),
        message_id: Some(message_id.clone()),
        received_at,
        headers,
    };
    match gateway.publisher.publish(&raw).await {
        Ok(Published::Confirmed) => {
            debug!(
                vendor = vendor.key(),
                message_id,
                trace_id = trace.trace_id_hex(),
                bytes = raw.body.len(),
                "accepted"
            );
            (StatusCode::OK, "accepted\n", Outcome::accepted)
        }
        Ok(Published::Blocked) => {
            warn!(
                vendor = vendor.key(),
                "the broker blocks publishing (a resource alarm); not sent; answered 503"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not accepted; retry\n",
                Outcome::broker_blocked,
            )
        }
        Ok(outcome) => {
            warn!(
                vendor = vendor.key(),
                ?outcome,
                "the broker did not take it; answered 503"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not accepted; retry\n",
                Outcome::unavailable,
            )
        }
        Err(e) => {
            warn!(error = %e, "cannot publish; answered 503");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not accepted; retry\n",
                Outcome::unavailable,
            )
        }
    }
}
