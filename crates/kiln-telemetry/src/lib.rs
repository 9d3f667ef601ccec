//! What an operator sees of each inference request beyond the metrics: its
//! trace (OpenTelemetry, exported over OTLP, sampled at the head), its request
//! id, and its access log line. Both front ends use it the same way:
//! [`Telemetry::begin`] when a request arrives, [`RequestScope::finish`] when
//! it is answered.
//!
//! Sampling is decided here, once per request, before any span exists: a
//! caller's `traceparent` that says sampled is always followed, one that says
//! not sampled never is, and a request without one is traced with the
//! configured probability. An untraced request gets no span at all, so traces
//! off, or a request the draw passes over, costs a header lookup and a random
//! number.

mod export;
mod json_log;
mod pipeline;

pub use export::{Batching, SPANS_DROPPED, SPANS_EXPORTED};
pub use pipeline::{install, Installed, LogFormat, Logs, OtlpProtocol, PipelineError, Traces};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::time::Instant;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of access log lines (`--log-requests`).
pub const ACCESS_TARGET: &str = "kiln::access";

/// Header (HTTP) and metadata key (gRPC) a request id travels in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// How requests are traced and logged; shared by both front ends.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// Whether spans are exported at all (an OTLP endpoint is configured).
    traces: bool,
    /// Probability that a request without a sampled parent is traced.
    sample_ratio: f64,
    /// Probability that a request gets an access log line.
    log_ratio: f64,
}

impl Telemetry {
    /// Nothing traced, nothing logged per request.
    pub fn off() -> Self {
        Telemetry::default()
    }

    /// `traces`: whether a span exporter is installed; ratios are clamped to 0..=1.
    pub fn new(traces: bool, sample_ratio: f64, log_ratio: f64) -> Self {
        Telemetry {
            traces,
            sample_ratio: sample_ratio.clamp(0.0, 1.0),
            log_ratio: log_ratio.clamp(0.0, 1.0),
        }
    }

    /// Starts a request's telemetry. `header` looks up the request's headers
    /// (HTTP) or metadata (gRPC) by lower-case name, for `traceparent`.
    pub fn begin<'h>(
        &self,
        protocol: &'static str,
        model: &str,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> RequestScope {
        let span = if self.traces {
            self.request_span(protocol, model, header)
        } else {
            Span::none()
        };
        RequestScope {
            span,
            started: Instant::now(),
            protocol,
            log: self.log_ratio > 0.0 && fastrand::f64() < self.log_ratio,
        }
    }

    fn request_span<'h>(
        &self,
        protocol: &'static str,
        model: &str,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Span {
        let getter = Headers(header, std::marker::PhantomData);
        // Only a well-formed `traceparent` is looked at further.
        let parent = getter
            .get("traceparent")
            .map(|_| TraceContextPropagator::new().extract(&getter));
        let remote = parent
            .as_ref()
            .map(|cx| cx.span().span_context().clone())
            .filter(|sc| sc.is_valid());
        let traced = match &remote {
            Some(sc) => sc.is_sampled(),
            None => self.sample_ratio > 0.0 && fastrand::f64() < self.sample_ratio,
        };
        if !traced {
            return Span::none();
        }
        let span = tracing::info_span!(
            target: kiln_core::trace::TARGET,
            parent: None,
            "infer",
            otel.kind = "server",
            otel.status_code = Empty,
            otel.status_description = Empty,
            kiln.protocol = protocol,
            kiln.model = model,
            kiln.version = Empty,
            kiln.request_id = Empty,
            kiln.outcome = Empty,
            kiln.batch_size = Empty,
        );
        if let (Some(cx), Some(_)) = (parent, remote) {
            // Cannot fail: the span was made just now and is not yet started.
            let _ = span.set_parent(cx);
        }
        span
    }
}

/// Longest request id that goes into headers, logs and spans: a client's
/// longer id (a V2 `id` can be as long as the body) is cut there, so that one
/// request cannot write megabytes into every log line about it.
pub const MAX_REQUEST_ID_BYTES: usize = 256;

/// A request's id: the one its client gave (the V2 `id`, else the header, at
/// most [`MAX_REQUEST_ID_BYTES`]), else a new one (128 random bits in hex,
/// like a trace id).
pub fn request_id(given: Option<&str>) -> String {
    match given.filter(|g| !g.is_empty()) {
        Some(g) => {
            let mut end = g.len().min(MAX_REQUEST_ID_BYTES);
            while !g.is_char_boundary(end) {
                end -= 1;
            }
            g[..end].to_string()
        }
        None => format!("{:032x}", fastrand::u128(..)),
    }
}

/// What the end of a request says, for its span and its access log line.
pub struct Finished<'a> {
    pub request_id: &'a str,
    pub model: &'a str,
    /// The version that answered (none when the request failed before one was chosen).
    pub version: Option<u64>,
    pub batch_size: Option<usize>,
    /// The protocol's status: an HTTP status code or a gRPC code's name.
    pub status: &'a str,
    /// The error's message, when the request failed.
    pub error: Option<&'a str>,
}

/// One request's telemetry, from its arrival to its answer.
pub struct RequestScope {
    span: Span,
    started: Instant,
    protocol: &'static str,
    log: bool,
}

impl RequestScope {
    /// The request's span (disabled when it is not traced): the front end runs
    /// the request in it and hands it to the core.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Whether the request is traced.
    pub fn traced(&self) -> bool {
        !self.span.is_disabled()
    }

    /// Whether [`RequestScope::finish`] records anything (the request is
    /// traced or drawn for an access log line): a front end need not work
    /// out what it would be told otherwise.
    pub fn records(&self) -> bool {
        self.log || self.traced()
    }

    /// A child span for decoding the request.
    pub fn decode(&self) -> Span {
        if !self.traced() {
            return Span::none();
        }
        tracing::info_span!(target: kiln_core::trace::TARGET, parent: &self.span, "decode")
    }

    /// A child span for encoding the answer.
    pub fn encode(&self) -> Span {
        if !self.traced() {
            return Span::none();
        }
        tracing::info_span!(target: kiln_core::trace::TARGET, parent: &self.span, "encode")
    }

    /// Records how the request ended on its span and, when it was drawn for
    /// one, writes its access log line.
    pub fn finish(&self, f: &Finished<'_>) {
        if self.traced() {
            let s = &self.span;
            s.record("kiln.request_id", f.request_id);
            if let Some(v) = f.version {
                s.record("kiln.version", v as i64);
            }
            if let Some(b) = f.batch_size {
                s.record("kiln.batch_size", b as i64);
            }
            s.record("kiln.outcome", f.status);
            if let Some(e) = f.error {
                s.record("otel.status_code", "error");
                s.record("otel.status_description", e);
            }
        }
        if self.log {
            let duration_us = self.started.elapsed().as_micros() as u64;
            let version = f.version.map(|v| v.to_string()).unwrap_or_default();
            tracing::info!(
                target: ACCESS_TARGET,
                parent: &self.span,
                request_id = f.request_id,
                protocol = self.protocol,
                model = f.model,
                version,
                status = f.status,
                duration_us,
                error = f.error,
                "request"
            );
        }
    }
}

/// A request's headers or metadata as the propagator reads them.
/// (The marker ties the values' lifetime to the extractor's, which `get` needs.)
struct Headers<'h, F>(F, std::marker::PhantomData<&'h str>);

impl<'h, F: Fn(&str) -> Option<&'h str>> Extractor for Headers<'h, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }

    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests;
