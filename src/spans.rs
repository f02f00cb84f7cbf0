//! Spans of the worker (one per raw message) and of `ingest` (one per request), exported
//! over OTLP (HTTP, JSON) when `tracing.otlp_endpoint` is set. Off, nothing is built or
//! exported, and the trace context is still propagated ([`crate::trace_context`]): a
//! span's context is then drawn at random, as the SDK would draw it.
//!
//! Names and attributes follow the OpenTelemetry semantic conventions
//! [`SEMANTIC_CONVENTIONS`] (messaging spans for RabbitMQ, HTTP server spans).

use std::fmt;

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::trace_context::TraceParent;

/// The semantic-conventions version the span names and attributes follow.
pub const SEMANTIC_CONVENTIONS: &str = "1.27.0";

pub use opentelemetry::trace::SpanKind as Kind;

/// Where spans go: nowhere ([`Spans::off`]), or to an OTLP endpoint.
#[derive(Clone, Default)]
pub struct Spans {
    exporting: Option<(SdkTracerProvider, SdkTracer)>,
}

impl fmt::Debug for Spans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.exporting.is_some() {
            "Spans(otlp)"
        } else {
            "Spans(off)"
        })
    }
}

/// A span in progress; it ends when dropped. Boxed: the SDK's span is large, and what
/// holds one (the worker's raw message, off or on) stays small.
pub struct OpenSpan(Box<opentelemetry_sdk::trace::Span>);

impl OpenSpan {
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.0.set_attribute(KeyValue::new(key, value));
    }
}

impl Spans {
    /// No export.
    pub fn off() -> Spans {
        Spans::default()
    }

    /// Exports to `endpoint` (`http://host:4318/v1/traces`) as `service`, in batches,
    /// from a thread of the SDK's own. Of the traces started here, `sample_ratio` are
    /// sampled (by trace id, so every process samples a trace alike); a span with a
    /// parent is sampled when its parent is, whatever the ratio, so a trace is exported
    /// whole or not at all.
    pub fn otlp(endpoint: &str, service: &'static str, sample_ratio: f64) -> Result<Spans, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("the OTLP exporter for {endpoint}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                sample_ratio,
            ))))
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer(service);
        Ok(Spans {
            exporting: Some((provider, tracer)),
        })
    }

    pub fn is_exporting(&self) -> bool {
        self.exporting.is_some()
    }

    /// Starts a span named `name`, a child of `parent` (else the root of a new trace),
    /// linked to `link`; `attributes` are only asked for when the span is exported.
    /// Returns the context its children see, and the span to drop when it ends.
    #[inline]
    pub fn start(
        &self,
        name: impl FnOnce() -> String,
        kind: SpanKind,
        parent: Option<TraceParent>,
        link: Option<TraceParent>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> (TraceParent, Option<OpenSpan>) {
        match &self.exporting {
            None => {
                let context = match parent {
                    Some(parent) => parent.child(|| fastrand::u64(..)),
                    None => TraceParent::start(|| fastrand::u64(..)),
                };
                (context, None)
            }
            Some((_, tracer)) => {
                let (context, span) = exported(tracer, name(), kind, parent, link, attributes());
                (context, Some(span))
            }
        }
    }

    /// Exports what is left (at exit).
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.exporting {
            let _ = provider.shutdown();
        }
    }
}

/// [`Spans::start`] of an exported span: apart, so that the SDK's code stays out of the
/// callers' (the worker's per-message path) when nothing is exported.
#[inline(never)]
fn exported(
    tracer: &SdkTracer,
    name: String,
    kind: SpanKind,
    parent: Option<TraceParent>,
    link: Option<TraceParent>,
    attributes: Vec<KeyValue>,
) -> (TraceParent, OpenSpan) {
    let context = match parent {
        Some(p) => Context::new().with_remote_span_context(span_context(p)),
        None => Context::new(),
    };
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .with_links(
            link.map(|l| vec![Link::with_context(span_context(l))])
                .unwrap_or_default(),
        )
        .start_with_context(tracer, &context);
    let own = span.span_context();
    let traceparent = TraceParent {
        trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(own.span_id().to_bytes()),
        flags: own.trace_flags().to_u8(),
    };
    (traceparent, OpenSpan(Box::new(span)))
}

/// A context received from elsewhere.
fn span_context(p: TraceParent) -> SpanContext {
    SpanContext::new(
        TraceId::from(p.trace_id),
        SpanId::from(p.span_id),
        TraceFlags::new(p.flags),
        true,
        TraceState::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_span_is_one_pointer() {
        assert_eq!(
            std::mem::size_of::<Option<OpenSpan>>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn off_a_span_continues_its_parent_or_starts_a_trace() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let mut asked = false;
        let (child, span) = Spans::off().start(
            || String::from("x"),
            SpanKind::Consumer,
            Some(parent),
            None,
            || {
                asked = true;
                Vec::new()
            },
        );
        assert!(span.is_none());
        assert!(!asked, "no attributes are built for nothing");
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        let (root, _) = Spans::off().start(String::new, SpanKind::Server, None, None, Vec::new);
        assert_ne!(root.trace_id, parent.trace_id);
    }
}
