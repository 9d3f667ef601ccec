//! The process's one `tracing` subscriber: logs to stderr (text or JSON) and,
//! when traces are on, Kiln's request spans to an OTLP collector.

use crate::export::{self, Batching, BoundedExport};
use crate::json_log::JsonWithTrace;
use kiln_core::trace::TARGET;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where and how log lines are written.
pub struct Logs {
    pub format: LogFormat,
    pub filter: EnvFilter,
    /// ANSI colour in text logs (only when a person reads them on a terminal).
    pub colour: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (the collector's port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// Where spans go.
pub struct Traces {
    /// The collector's base URL, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub batching: Batching,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("--otlp-endpoint {0:?}: {1}")]
    Endpoint(String, &'static str),
    #[error("cannot start the trace export thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
}

/// What [`install`] set up; [`Installed::shutdown`] sends the spans still queued.
pub struct Installed {
    provider: Option<SdkTracerProvider>,
}

impl Installed {
    /// Whether spans are exported.
    pub fn traces(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes queued spans, waiting at most `wait` (a stalled collector
    /// cannot hold up exit).
    pub fn shutdown(self, wait: std::time::Duration) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown_with_timeout(wait) {
                tracing::debug!("trace export at exit: {e}");
            }
        }
    }
}

/// Installs the global subscriber.
pub fn install(logs: Logs, traces: Option<Traces>) -> Result<Installed, PipelineError> {
    export::describe_metrics();
    // The log layer leaves Kiln's request spans alone (what it would record
    // of them, per request, nobody reads); a JSON line finds its span's trace
    // ids without it.
    // (A directive, not a predicate: the filter's decision per call site is
    // then cached, rather than asked again at every event of every library.)
    let filter = match format!("{TARGET}=off").parse() {
        Ok(d) => logs.filter.add_directive(d),
        Err(_) => logs.filter,
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match logs.format {
        LogFormat::Text => fmt.with_ansi(logs.colour).with_filter(filter).boxed(),
        LogFormat::Json => fmt.event_format(JsonWithTrace).with_filter(filter).boxed(),
    };
    let provider = traces.map(provider).transpose()?;
    // Only Kiln's request spans become OpenTelemetry spans: not the events,
    // and not the spans of the libraries underneath.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("kiln"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            // Nothing else in the process reads OpenTelemetry's current context.
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            // INFO, not TRACE: Kiln's spans are all INFO, and a TRACE here would
            // raise the subscriber's level hint, letting every trace! call site of
            // h2, hyper and tonic past the macros' first check (+3-8 µs per request
            // at ratio 0, benches/README.md).
            .with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO))
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| PipelineError::Subscriber(e.to_string()))?;
    Ok(Installed { provider })
}

fn provider(t: Traces) -> Result<SdkTracerProvider, PipelineError> {
    let endpoint = t.endpoint.trim_end_matches('/').to_string();
    if !endpoint.starts_with("http://") {
        return Err(PipelineError::Endpoint(
            t.endpoint,
            "must be an http:// URL (OTLP over TLS is not built in: send to a collector or agent next to Kiln)",
        ));
    }
    let timeout = t.batching.timeout;
    let processor = match t.protocol {
        OtlpProtocol::Grpc => BoundedExport::start(t.batching, move || {
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .build()
                .map_err(|e| e.to_string())
        })?,
        OtlpProtocol::HttpProtobuf => BoundedExport::start(t.batching, move || {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(format!("{endpoint}/v1/traces"))
                .with_timeout(timeout)
                .build()
                .map_err(|e| e.to_string())
        })?,
    };
    // Sampling was decided before the span was made (see `Telemetry::begin`):
    // every span that exists is sampled.
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource())
        .build())
}

/// `service.name` and further attributes from `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES`; the service is `kiln` unless they name it.
fn resource() -> Resource {
    let from_env = Resource::builder().build();
    let named = from_env
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let mut b = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !named {
        b = b.with_service_name("kiln");
    }
    b.build()
}
