//! JSON log lines: one object per line with the time, level, target, message
//! and the event's own fields, and the trace and span ids of the span the
//! event happened in when that span is exported (so that a log line and its
//! trace find each other in a log store).

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub(crate) struct JsonWithTrace;

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let meta = event.metadata();
        let mut obj = Map::new();
        obj.insert("timestamp".into(), Value::String(time));
        obj.insert("level".into(), Value::String(meta.level().to_string()));
        obj.insert("target".into(), Value::String(meta.target().to_string()));
        let mut fields = Fields(&mut obj);
        event.record(&mut fields);
        // The event's span as the registry knows it, not as this layer's
        // filter sees it: the log layer does not record Kiln's request spans.
        let cx = tracing::dispatcher::get_default(|d| {
            let id = match event.parent() {
                Some(id) => Some(id.clone()),
                None if event.is_contextual() => d.current_span().id().cloned(),
                None => None,
            };
            id.and_then(|id| tracing_opentelemetry::get_otel_context(&id, d))
        });
        if let Some(cx) = cx {
            let sc = cx.span().span_context().clone();
            if sc.is_valid() {
                obj.insert("trace_id".into(), Value::String(sc.trace_id().to_string()));
                obj.insert("span_id".into(), Value::String(sc.span_id().to_string()));
            }
        }
        let line = serde_json::to_string(&obj).map_err(|_| fmt::Error)?;
        writeln!(w, "{line}")
    }
}

/// An event's fields as the object's own members.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().into(), Value::String(v.into()));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.0.insert(f.name().into(), Value::String(v.to_string()));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        // `message` is written with Display-like text, other values as Debug.
        self.0
            .insert(f.name().into(), Value::String(format!("{v:?}")));
    }
}
