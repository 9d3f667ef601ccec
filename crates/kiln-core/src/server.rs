//! Admission and inference: a request is admitted (unless the server drains),
//! routed to a version, validated, queued on that version's scheduler and
//! answered; its outcome is counted however it ends.

use crate::error::{ErrorKind, KilnError};
use crate::infer::{validate, InferOutput, InferRequest, InferResponse, Timing};
use crate::metrics::Outcome;
use crate::registry::{ModelVersion, Registry};
use crate::scheduler::Computed;
use crate::tensor::Tensor;
use crate::traffic::routing::{route, Route};
use crate::traffic::shadow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether new requests are taken, and how many are between their admission and
/// their answer.
#[derive(Default)]
struct Admission {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Woken when `in_flight` falls to 0 while draining.
    idle: tokio::sync::Notify,
}

/// One admitted inference request; dropping it (answer sent, or the client
/// went away) lets a drain finish.
struct InFlight(Arc<Admission>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.draining.load(Ordering::SeqCst)
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// The inference path over the registry.
pub struct Server {
    registry: Arc<Registry>,
    admission: Arc<Admission>,
}

impl Server {
    pub fn new(registry: Arc<Registry>) -> Self {
        Server {
            registry,
            admission: Arc::default(),
        }
    }

    /// New inference requests are refused as unavailable from now on; requests
    /// already admitted (queued or computing) finish.
    pub fn begin_drain(&self) {
        self.admission.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.admission.draining.load(Ordering::SeqCst)
    }

    /// Inference requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.admission.in_flight.load(Ordering::SeqCst)
    }

    /// Resolves once draining has begun and no admitted request is left.
    pub async fn drained(&self) {
        loop {
            let idle = self.admission.idle.notified();
            tokio::pin!(idle);
            // Registers the waiter before the check, so a wake-up in between is kept.
            idle.as_mut().enable();
            if self.is_draining() && self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Counts a request as in flight, unless the server is draining. The count
    /// goes up before draining is read: a request that is admitted is therefore
    /// always seen by [`Server::drained`].
    fn admit(&self) -> Result<InFlight, KilnError> {
        self.admission.in_flight.fetch_add(1, Ordering::SeqCst);
        let ticket = InFlight(self.admission.clone());
        if self.is_draining() {
            return Err(KilnError::unavailable("the server is shutting down"));
        }
        Ok(ticket)
    }

    /// Runs one inference request through validation, the version's queue and its
    /// backend.
    pub async fn infer(&self, req: InferRequest) -> Result<InferResponse, KilnError> {
        let started = Instant::now();
        let _admitted = self.admit()?;
        let Route {
            primary: mv,
            shadow,
        } = route(
            &self.registry,
            &req.model,
            req.version.as_deref(),
            req.routing_key.as_deref(),
            true,
        )?;
        // Counts the request's outcome when this future ends, even when it is
        // dropped because the client went away.
        let mut guard = OutcomeGuard::new(&mv, started);
        let shadow = shadow.map(|sh| (sh, req.inputs.clone()));
        let valid = validate(
            &mv.label,
            &mv.signature.inputs,
            &mv.signature.outputs,
            mv.max_batch_size,
            req.inputs,
            &req.outputs,
        )
        .inspect_err(|_| guard.outcome = Outcome::Invalid)?;
        let timeout = req.timeout.into_iter().chain(mv.config.timeout).min();
        // A timeout too large for the clock is no deadline at all.
        let deadline = timeout.and_then(|t| started.checked_add(t));
        let rx = mv
            .scheduler
            .submit(valid.inputs, valid.batch_size, deadline, req.trace.as_ref())
            .inspect_err(|_| guard.outcome = Outcome::Rejected)?;
        let answer = match deadline {
            None => rx.await,
            Some(d) => match tokio::time::timeout_at(d.into(), rx).await {
                Ok(answer) => answer,
                Err(_) => {
                    // Dropping the receiver tells the scheduler not to compute it.
                    guard.outcome = Outcome::Timeout;
                    return Err(timed_out(&mv.label, timeout.unwrap_or_default()));
                }
            },
        };
        let Ok(done) = answer else {
            guard.outcome = Outcome::Error;
            return Err(KilnError::internal(format!(
                "model {}: compute thread stopped",
                mv.label
            )));
        };
        let Computed {
            outputs: all,
            queue,
            compute,
            batch_size,
        } = done;
        mv.metrics.queue.record(queue.as_secs_f64());
        let all = all.inspect_err(|e| {
            guard.outcome = match e.kind {
                ErrorKind::Unavailable => Outcome::Rejected,
                ErrorKind::DeadlineExceeded => Outcome::Timeout,
                ErrorKind::InvalidArgument => Outcome::Invalid,
                _ => Outcome::Error,
            }
        })?;
        mv.metrics.compute.record(compute.total().as_secs_f64());
        if all.len() != mv.signature.outputs.len() {
            guard.outcome = Outcome::Error;
            return Err(KilnError::internal(format!(
                "model {}: backend returned {} outputs, expected {}",
                mv.label,
                all.len(),
                mv.signature.outputs.len()
            )));
        }
        // Validation rejects duplicate output names, so each slot is taken once.
        let mut all: Vec<Option<Tensor>> = all.into_iter().map(Some).collect();
        let mut outputs = Vec::with_capacity(valid.outputs.len());
        for &i in &valid.outputs {
            if let Some(tensor) = all[i].take() {
                outputs.push(InferOutput {
                    name: mv.signature.outputs[i].name.clone(),
                    tensor,
                });
            }
        }
        guard.outcome = Outcome::Success;
        if let Some((sh, inputs)) = shadow {
            let primary: Vec<(String, Tensor)> = outputs
                .iter()
                .map(|o| (o.name.clone(), o.tensor.clone()))
                .collect();
            tokio::spawn(shadow::run(sh, inputs, primary));
        }
        let total = started.elapsed();
        mv.metrics.request.record(total.as_secs_f64());
        mv.metrics.inferences.increment(valid.batch_size as u64);
        mv.stats
            .record_success(valid.batch_size, total, queue, &compute);
        guard.recorded = true;
        Ok(InferResponse {
            model: mv.name.clone(),
            version: mv.version,
            id: req.id,
            outputs,
            timing: Timing {
                queue,
                compute: compute.total(),
                total,
            },
            batch_size,
        })
    }
}

fn timed_out(label: &str, limit: Duration) -> KilnError {
    KilnError::new(
        ErrorKind::DeadlineExceeded,
        format!(
            "model {label}: the request timed out after {} µs before it was answered",
            limit.as_micros()
        ),
    )
}

/// Counts a request's outcome and keeps the in-flight gauge, however the request ends.
struct OutcomeGuard<'a> {
    mv: &'a ModelVersion,
    started: Instant,
    outcome: Outcome,
    /// Statistics were recorded on the success path.
    recorded: bool,
}

impl<'a> OutcomeGuard<'a> {
    fn new(mv: &'a ModelVersion, started: Instant) -> Self {
        mv.metrics.inflight.increment(1.0);
        OutcomeGuard {
            mv,
            started,
            outcome: Outcome::Cancelled,
            recorded: false,
        }
    }
}

impl Drop for OutcomeGuard<'_> {
    fn drop(&mut self) {
        self.mv.metrics.inflight.decrement(1.0);
        self.mv.metrics.count(self.outcome);
        let elapsed = self.started.elapsed();
        if !self.recorded {
            self.mv.stats.record_failure(elapsed);
        }
        // What the client did wrong or gave up on says nothing of the version.
        if !matches!(self.outcome, Outcome::Invalid | Outcome::Cancelled) {
            self.mv
                .health
                .record(self.outcome == Outcome::Success, elapsed);
        }
    }
}
