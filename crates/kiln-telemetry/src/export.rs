//! Ended spans leave the request path through a bounded queue, and one thread
//! of their own sends them to the collector in batches.
//!
//! A span's end costs the request a `try_send`: when the queue is full (the
//! collector is slow, stalled or down), the span is dropped and counted in
//! `kiln_trace_spans_dropped_total{reason="queue_full"}`; a batch the collector
//! refuses or does not answer within the export timeout is dropped and counted
//! with `reason="export_failed"`. Nothing a collector does can block, slow or
//! fail a request, and the memory spans take is bounded by the queue. The SDK's
//! own batch processor would do the same but count nothing that an operator
//! can see.
//!
//! The thread wakes every `delay`, or as soon as a batch's worth of spans is
//! queued, and sends all that is queued: not once per span, since a thread
//! woken per span costs more than the span (a futex wake and a context switch
//! for each, measured in benches/README.md). The exporter runs on a
//! single-threaded tokio runtime on that thread (tonic and hyper need one),
//! apart from the runtime that serves requests.

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::Duration;

pub const SPANS_EXPORTED: &str = "kiln_trace_spans_exported_total";
pub const SPANS_DROPPED: &str = "kiln_trace_spans_dropped_total";

pub(crate) fn describe_metrics() {
    metrics::describe_counter!(SPANS_EXPORTED, "Spans the OTLP collector accepted.");
    metrics::describe_counter!(
        SPANS_DROPPED,
        "Spans dropped rather than delay requests, by reason: queue_full (the collector is slower than the spans come) or export_failed (it refused a batch or did not answer in time)."
    );
}

/// How spans are batched on their way out.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Ended spans waiting to be sent; one more is dropped.
    pub queue: usize,
    /// Most spans in one export.
    pub batch: usize,
    /// How long the first span of a batch waits for others.
    pub delay: Duration,
    /// How long one export may take before its batch is dropped.
    pub timeout: Duration,
}

enum Message {
    Span(Box<SpanData>),
    /// Send what is queued, then answer.
    Flush(Sender<()>),
    /// What the spans' process is (service name and attributes), for the exporter.
    Resource(Resource),
}

/// A [`SpanProcessor`] whose queue is bounded and whose export never blocks
/// the thread that ends a span.
#[derive(Debug)]
pub struct BoundedExport {
    queue: Sender<Message>,
    /// The export thread, to wake when a batch is ready.
    exporter: Thread,
    /// Whether it has been woken since it last looked at the queue.
    woken: Arc<AtomicBool>,
    batch: usize,
    timeout: Duration,
}

impl BoundedExport {
    /// Starts the export thread; `make` builds the exporter inside its runtime.
    pub fn start<E, F>(cfg: Batching, make: F) -> std::io::Result<Self>
    where
        E: SpanExporter + 'static,
        F: FnOnce() -> Result<E, String> + Send + 'static,
    {
        let (queue, rx) = crossbeam_channel::bounded(cfg.queue.max(1));
        let woken = Arc::new(AtomicBool::new(false));
        let awake = woken.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-trace-export".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("trace export: cannot start its runtime: {e}");
                        return;
                    }
                };
                let exporter = {
                    let _in_runtime = rt.enter();
                    match make() {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::error!("trace export: {e}");
                            return;
                        }
                    }
                };
                send_batches(&rt, exporter, &rx, &awake, cfg);
            })?;
        Ok(BoundedExport {
            queue,
            // The thread is detached (its handle dropped): a stalled collector
            // must not hold up exit.
            exporter: thread.thread().clone(),
            woken,
            batch: cfg.batch.max(1),
            timeout: cfg.timeout,
        })
    }

    /// Wakes the export thread (once until it next looks at the queue).
    fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.exporter.unpark();
        }
    }

    fn flush(&self, wait: Duration) -> OTelSdkResult {
        let (done, answered) = crossbeam_channel::bounded(1);
        self.queue
            .send_timeout(Message::Flush(done), wait)
            .map_err(|_| OTelSdkError::Timeout(wait))?;
        self.wake();
        answered
            .recv_timeout(wait)
            .map_err(|_| OTelSdkError::Timeout(wait))
    }
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        match self.queue.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {
                if self.queue.len() >= self.batch {
                    self.wake();
                }
            }
            Err(TrySendError::Full(_)) => {
                metrics::counter!(SPANS_DROPPED, "reason" => "queue_full").increment(1)
            }
            // The export thread has stopped (shutdown, or it could not start).
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush(self.timeout)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // The thread exits when the queue's sender goes; it is never joined.
        self.flush(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Sent before any span: the provider sets it as it is built.
        let _ = self.queue.send(Message::Resource(resource.clone()));
    }
}

/// The export thread's loop: at each wake-up (a tick of `delay`, or a full
/// batch queued) sends what is queued, in batches; ends when the processor is
/// gone.
fn send_batches<E: SpanExporter>(
    rt: &tokio::runtime::Runtime,
    mut exporter: E,
    rx: &Receiver<Message>,
    woken: &AtomicBool,
    cfg: Batching,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(cfg.batch);
    loop {
        std::thread::park_timeout(cfg.delay);
        woken.store(false, Ordering::Release);
        loop {
            match rx.try_recv() {
                Ok(Message::Span(span)) => {
                    batch.push(*span);
                    if batch.len() >= cfg.batch {
                        export(rt, &exporter, &mut batch, cfg.timeout);
                    }
                }
                Ok(Message::Resource(r)) => exporter.set_resource(&r),
                Ok(Message::Flush(done)) => {
                    export(rt, &exporter, &mut batch, cfg.timeout);
                    let _ = done.send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    export(rt, &exporter, &mut batch, cfg.timeout);
                    let _ = exporter.shutdown_with_timeout(cfg.timeout);
                    return;
                }
            }
        }
        export(rt, &exporter, &mut batch, cfg.timeout);
    }
}

fn export<E: SpanExporter>(
    rt: &tokio::runtime::Runtime,
    exporter: &E,
    batch: &mut Vec<SpanData>,
    timeout: Duration,
) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let spans = std::mem::take(batch);
    // The export future and its timer are made inside the runtime (tonic's
    // client needs its reactor from the start).
    let sent = rt.block_on(async { tokio::time::timeout(timeout, exporter.export(spans)).await });
    match sent {
        Ok(Ok(())) => metrics::counter!(SPANS_EXPORTED).increment(n),
        Ok(Err(e)) => {
            metrics::counter!(SPANS_DROPPED, "reason" => "export_failed").increment(n);
            tracing::debug!("trace export failed, {n} spans dropped: {e}");
        }
        Err(_) => {
            metrics::counter!(SPANS_DROPPED, "reason" => "export_failed").increment(n);
            tracing::debug!("trace export timed out, {n} spans dropped");
        }
    }
}
