//! The spans the core adds to a traced request: its wait in the queue, and its
//! batch's compute. They are plain `tracing` spans under one target; the binary
//! decides whether anything records them (OpenTelemetry, when traces are on).
//!
//! A request is traced when its front end hands the core the request's span
//! ([`InferRequest::trace`](crate::InferRequest::trace)); an untraced request
//! costs the core nothing here. A batch's compute is one span, a child of the
//! first traced request it serves and linked (`follows_from`) to every traced
//! request it serves, so that a batch of 32 does not make 32 copies of it.

use tracing::Span;

/// The target of every span Kiln exports.
pub const TARGET: &str = "kiln::trace";

/// A queued request's spans: its own, and its wait in the queue (which ends
/// when its batch starts).
pub(crate) struct Queued {
    pub request: Span,
    queue: Span,
}

impl Queued {
    pub fn new(request: Span) -> Self {
        let queue = tracing::info_span!(target: TARGET, parent: &request, "queue");
        Queued { request, queue }
    }

    /// Ends the wait (a span ends when its last handle goes).
    pub fn dequeued(&mut self) {
        self.queue = Span::none();
    }
}

/// The compute span of a batch of `rows` rows and `count` requests, of which
/// `traced` are traced (none when none is).
pub(crate) fn compute<'a>(
    mut traced: impl Iterator<Item = &'a Span>,
    rows: usize,
    count: usize,
) -> Span {
    let Some(first) = traced.next() else {
        return Span::none();
    };
    let span = tracing::info_span!(
        target: TARGET,
        parent: first,
        "compute",
        kiln.batch_size = rows as i64,
        kiln.batch_requests = count as i64,
    );
    span.follows_from(first);
    for r in traced {
        span.follows_from(r);
    }
    span
}
