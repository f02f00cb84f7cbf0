//! Each component's own settings, made once from the validated [`Settings`]: what the
//! worker, its pipeline, the gateway and the tools take, instead of the whole of them.
//! Nothing is checked here; [`Settings::load`] did.

use std::time::Duration;

use super::{
    Access, AmqpSettings, DeadLetterSettings, HistorySettings, InputSettings, OutputSettings,
    Settings,
};
use crate::canonical::SchemaBase;
use crate::delivery::RetryPolicy;
use crate::normalize::Limits;
use crate::signatures::Signatures;
use crate::spans::Spans;
use crate::vendors::Unmapped;

/// The exchanges and queues, with what they are declared with: what
/// [`crate::amqp::declare_topology`] declares (or checks) and what the printed
/// permissions name.
#[derive(Debug, Clone)]
pub struct Topology {
    pub input: InputSettings,
    pub output: OutputSettings,
    pub dead_letter: DeadLetterSettings,
    pub history: HistorySettings,
    /// `amqp.declare_topology`: declare it all at each session; off, check that it
    /// exists (passively) and declare nothing.
    pub declare: bool,
}

/// What the pipeline decides with: the bounds, the retry policy, the vendors' secrets
/// and what becomes of unmapped types.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// `limits`, as the mapping takes them.
    pub limits: Limits,
    /// `limits.max_in_flight_bytes`: most bytes of output held at once.
    pub max_in_flight_bytes: usize,
    /// `input.prefetch`: most deliveries held at once.
    pub prefetch: u16,
    /// `retry`: how a refused publish is retried, and for how long.
    pub retry: RetryPolicy,
    pub signatures: Signatures,
    pub unmapped: Unmapped,
    /// `schemas.base_uri`, which every event's `dataschema` is made from.
    pub schema_base: SchemaBase,
}

/// The worker's (`webhook-normalizer run`): the connection, the topology it declares and
/// consumes from, its pipeline, and its timings.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub amqp: AmqpSettings,
    pub topology: Topology,
    pub pipeline: PipelineSettings,
    /// `shutdown.drain_timeout_secs`.
    pub drain_timeout: Duration,
    /// `log.summary_secs`, when summaries are logged.
    pub summary_every: Option<Duration>,
    /// Where its spans go (`tracing.otlp_endpoint`): off here; the binary sets it.
    pub spans: Spans,
}

/// The reference gateway's (`webhook-normalizer ingest`), its listen address aside (the
/// binary resolves it).
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub amqp: AmqpSettings,
    /// `input.exchange`, where the bodies are published.
    pub exchange: String,
    /// `limits.max_body_bytes`: a larger body is refused (413).
    pub max_body_bytes: usize,
    /// `ingest.request_timeout_secs`.
    pub request_timeout: Duration,
    /// `ingest.header_timeout_secs`.
    pub header_timeout: Duration,
    /// `ingest.max_concurrent_requests`.
    pub max_concurrent_requests: usize,
    /// `ingest.max_connections`, as configured.
    pub max_connections: usize,
    /// The secrets to check signatures with, when `ingest.verify_signatures` is on.
    pub signatures: Option<Signatures>,
    /// `ingest.access`.
    pub access: Access,
    /// `ingest.trust_traceparent`.
    pub trust_traceparent: bool,
    /// Where its spans go (`tracing.otlp_endpoint`): off here; the binary sets it.
    pub spans: Spans,
}

/// What the `dlq` walk reads and replays with.
#[derive(Debug, Clone)]
pub struct DlqSettings {
    /// `dead_letter.queue`.
    pub queue: String,
    /// Where a replay may publish ([`Settings::replay_exchanges`]).
    pub replay_to: Vec<String>,
    /// `limits.max_body_bytes`: a larger body was left to the broker, unread.
    pub max_body_bytes: usize,
}

impl Settings {
    /// The exchanges and queues.
    pub fn topology(&self) -> Topology {
        Topology {
            input: self.input.clone(),
            output: self.output.clone(),
            dead_letter: self.dead_letter.clone(),
            history: self.history.clone(),
            declare: self.amqp.declare_topology,
        }
    }

    /// The pipeline's settings.
    pub fn pipeline(&self) -> PipelineSettings {
        PipelineSettings {
            limits: self.limits(),
            max_in_flight_bytes: self.limits.max_in_flight_bytes,
            prefetch: self.input.prefetch,
            retry: self.retry.policy(),
            signatures: self.signatures.clone(),
            unmapped: self.unmapped,
            schema_base: self.schemas.base_uri,
        }
    }

    /// The worker's settings.
    pub fn worker(&self) -> WorkerSettings {
        WorkerSettings {
            amqp: self.amqp.clone(),
            topology: self.topology(),
            pipeline: self.pipeline(),
            drain_timeout: self.shutdown.drain_timeout(),
            summary_every: self.log.summary_every(),
            spans: Spans::off(),
        }
    }

    /// The gateway's settings.
    pub fn gateway(&self) -> GatewaySettings {
        let ingest = &self.ingest;
        GatewaySettings {
            amqp: self.amqp.clone(),
            exchange: self.input.exchange.clone(),
            max_body_bytes: self.limits.max_body_bytes,
            request_timeout: ingest.request_timeout(),
            header_timeout: Duration::from_secs(ingest.header_timeout_secs),
            max_concurrent_requests: ingest.max_concurrent_requests,
            max_connections: ingest.max_connections,
            signatures: ingest.verify_signatures.then(|| self.signatures.clone()),
            access: ingest.access.clone(),
            trust_traceparent: ingest.trust_traceparent,
            spans: Spans::off(),
        }
    }

    /// The `dlq` walk's settings.
    pub fn dlq(&self) -> DlqSettings {
        DlqSettings {
            queue: self.dead_letter.queue.clone(),
            replay_to: self
                .replay_exchanges()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            max_body_bytes: self.limits.max_body_bytes,
        }
    }
}
