//! Runs a loaded version's backend on dedicated OS threads behind a bounded queue.
//!
//! Requests arrive from the async front ends through `submit`, wait in the queue,
//! and are answered on a oneshot channel. A request whose receiver is gone (the
//! client left) is skipped, a full queue rejects at once, and a backend panic fails
//! only the request it was computing.

use crate::backend::Backend;
use crate::error::KilnError;
use crate::tensor::Tensor;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the compute thread sends back.
#[derive(Debug)]
pub struct Computed {
    pub outputs: Result<Vec<Tensor>, KilnError>,
    pub queue: Duration,
    pub compute: Duration,
}

struct Job {
    inputs: Vec<Tensor>,
    enqueued: Instant,
    reply: oneshot::Sender<Computed>,
}

pub struct Executor {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    label: String,
}

impl Executor {
    /// Starts `instances` compute threads for `backend`.
    pub fn start(
        label: String,
        backend: Arc<dyn Backend>,
        instances: usize,
        queue_size: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue_size);
        let mut threads = Vec::with_capacity(instances);
        for i in 0..instances.max(1) {
            let rx = rx.clone();
            let backend = backend.clone();
            let thread_label = label.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("kiln-{label}-{i}"))
                    .spawn(move || worker(&thread_label, &*backend, rx))?,
            );
        }
        Ok(Executor {
            tx: Some(tx),
            threads,
            label,
        })
    }

    /// Queues a request; fails at once when the queue is full.
    pub fn submit(&self, inputs: Vec<Tensor>) -> Result<oneshot::Receiver<Computed>, KilnError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            enqueued: Instant::now(),
            reply,
        };
        let Some(tx) = &self.tx else {
            return Err(KilnError::unavailable(format!(
                "model {} is unloading",
                self.label
            )));
        };
        match tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(KilnError::unavailable(format!(
                "model {}: the request queue is full ({} waiting); retry later",
                self.label,
                tx.len()
            ))),
            Err(TrySendError::Disconnected(_)) => Err(KilnError::unavailable(format!(
                "model {} is unloading",
                self.label
            ))),
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.tx.as_ref().map_or(0, |t| t.len())
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Closing the channel lets the workers finish what is queued and exit.
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(label: &str, backend: &dyn Backend, rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        if job.reply.is_closed() {
            tracing::debug!(model = label, "client went away before compute; skipped");
            continue;
        }
        let started = Instant::now();
        let queue = started - job.enqueued;
        let outputs = match std::panic::catch_unwind(AssertUnwindSafe(|| backend.run(job.inputs))) {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(e)) => Err(KilnError::internal(format!("model {label}: {e}"))),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(model = label, "backend panicked: {what}");
                Err(KilnError::internal(format!(
                    "model {label}: backend panicked: {what}"
                )))
            }
        };
        let _ = job.reply.send(Computed {
            outputs,
            queue,
            compute: started.elapsed(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;
    use crate::model::ModelSignature;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Echo {
        sig: ModelSignature,
        calls: AtomicUsize,
        delay: Duration,
    }
    impl Backend for Echo {
        fn signature(&self) -> &ModelSignature {
            &self.sig
        }
        fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            let v = inputs[0]
                .to_vec::<f32>()
                .map_err(|e| BackendError::Run(e.to_string()))?;
            if v[0] < 0.0 {
                panic!("negative input");
            }
            Ok(inputs)
        }
    }

    fn echo(delay: Duration) -> Arc<Echo> {
        Arc::new(Echo {
            sig: ModelSignature::default(),
            calls: AtomicUsize::new(0),
            delay,
        })
    }

    fn t(x: f32) -> Vec<Tensor> {
        vec![Tensor::from_vec(vec![1], vec![x]).unwrap()]
    }

    #[tokio::test]
    async fn results_return_to_their_requests() {
        let ex = Executor::start("echo:1".into(), echo(Duration::ZERO), 2, 64).unwrap();
        let rxs: Vec<_> = (0..20).map(|i| ex.submit(t(i as f32)).unwrap()).collect();
        for (i, rx) in rxs.into_iter().enumerate() {
            let out = rx.await.unwrap().outputs.unwrap();
            assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![i as f32]);
        }
    }

    #[tokio::test]
    async fn panic_fails_only_its_request() {
        let ex = Executor::start("echo:1".into(), echo(Duration::ZERO), 1, 8).unwrap();
        let bad = ex.submit(t(-1.0)).unwrap().await.unwrap();
        let e = bad.outputs.unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::Internal);
        assert!(e.message.contains("negative input"), "{}", e.message);
        let good = ex.submit(t(2.0)).unwrap().await.unwrap();
        assert!(good.outputs.is_ok());
    }

    #[tokio::test]
    async fn full_queue_rejects_and_departed_clients_are_skipped() {
        let b = echo(Duration::from_millis(100));
        let ex = Executor::start("echo:1".into(), b.clone(), 1, 2).unwrap();
        let first = ex.submit(t(1.0)).unwrap();
        // Let the worker take the first job, then fill the queue.
        std::thread::sleep(Duration::from_millis(30));
        let abandoned = ex.submit(t(2.0)).unwrap();
        let kept = ex.submit(t(3.0)).unwrap();
        let e = ex.submit(t(4.0)).unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::Unavailable);
        assert!(e.message.contains("queue is full"));
        drop(abandoned);
        assert!(first.await.unwrap().outputs.is_ok());
        assert!(kept.await.unwrap().outputs.is_ok());
        assert_eq!(
            b.calls.load(Ordering::SeqCst),
            2,
            "the abandoned request was computed"
        );
    }
}
