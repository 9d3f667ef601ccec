//! One loaded version's scheduler: a bounded queue, dynamic batching, and
//! `instance_count` backend instances on dedicated OS threads.
//!
//! There is no separate batching thread: an instance that falls idle forms its own
//! next batch from the queue, so a request on an idle server pays no extra thread
//! hop. A batch is dispatched when it holds `max_batch_size` rows, when it reaches
//! one of the preferred sizes, or when its oldest request has waited
//! `max_queue_delay`; with no delay (the default) an idle instance takes whatever
//! compatible work is queued at once, so batches form from the requests that
//! arrive while the instances are busy.
//!
//! Only requests whose dimensions after the first are equal share a batch. Each
//! request gets back exactly its own rows; a failed batch fails its own requests
//! only. Requests whose client went away are dropped unseen; requests past their
//! deadline are answered with DEADLINE_EXCEEDED without being computed.

use crate::backend::{Backend, BackendError};
use crate::error::{ErrorKind, KilnError};
use crate::metrics::VersionMetrics;
use crate::stats::{ComputeTimes, VersionStats};
use crate::tensor::Tensor;
use crate::trace::{self, Queued};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How a version schedules its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// `model:version`, for messages and thread names.
    pub label: String,
    /// Most rows one execution carries; 0 or 1 (or `dynamic_batching` off): each
    /// request runs alone.
    pub max_batch_size: usize,
    pub dynamic_batching: bool,
    /// How long the oldest queued request may wait for a batch to fill.
    pub max_queue_delay: Duration,
    /// Batch sizes dispatched at once, without waiting out the delay.
    pub preferred_batch_sizes: Vec<usize>,
    /// Requests that may wait; one more is rejected at once.
    pub max_queue_size: usize,
    /// Backend instances (threads) running executions in parallel.
    pub instances: usize,
    /// Most cost one execution carries: its rows times the largest row cost the
    /// backend reports (for text models, tokens after padding). `None`: rows only.
    pub max_batch_cost: Option<usize>,
}

impl SchedulerConfig {
    /// Whether concurrent requests are joined into one execution.
    pub fn batches(&self) -> bool {
        self.dynamic_batching && self.max_batch_size > 1
    }
}

/// What a request gets back from its execution.
#[derive(Debug)]
pub struct Computed {
    pub outputs: Result<Vec<Tensor>, KilnError>,
    /// From enqueue until its execution started.
    pub queue: Duration,
    /// The execution's compute phases (shared by every request in the batch).
    pub compute: ComputeTimes,
    /// Rows in the execution this request was part of.
    pub batch_size: usize,
}

struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    /// The backend's cost of one row of this request (e.g. its longest text's tokens).
    cost: usize,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Computed>,
    trace: Option<Queued>,
}

impl Job {
    /// Whether `other` may share an execution with `self`.
    fn fits(&self, other: &Job) -> bool {
        self.inputs
            .iter()
            .zip(&other.inputs)
            .all(|(a, b)| a.shape().get(1..) == b.shape().get(1..))
    }

    fn expire(self, label: &str) {
        let waited = self.enqueued.elapsed();
        let _ = self.reply.send(Computed {
            outputs: Err(KilnError::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "model {label}: the request's deadline passed after {} µs in the queue; it was not computed",
                    waited.as_micros()
                ),
            )),
            queue: waited,
            compute: ComputeTimes::default(),
            batch_size: 0,
        });
    }
}

struct State {
    jobs: VecDeque<Job>,
    closed: bool,
    /// Instances waiting on `work` for any job. A submitter wakes one only when
    /// there is one: an instance that is computing, or spinning, finds the job
    /// when it next looks (under the same lock), and a futex wake nobody waits
    /// for is a system call per request for nothing.
    idle: usize,
    /// Instances waiting on `work` for a batch to fill (`max_queue_delay`):
    /// woken only by a job that may complete the batch, not by every job.
    filling: usize,
}

impl State {
    /// Whether a job just queued may end a `filling` instance's wait early.
    fn may_dispatch(&self, cfg: &SchedulerConfig, deadline: bool) -> bool {
        if deadline || cfg.max_batch_cost.is_some() {
            return true;
        }
        let rows: usize = self.jobs.iter().map(|j| j.rows).sum();
        rows >= cfg.max_batch_size || cfg.preferred_batch_sizes.contains(&rows)
    }
}

/// How long an instance that ran out of work spins for the next job before it
/// sleeps, when its recent waits were shorter than that. Under load the next
/// request is microseconds away, and a sleep and wake-up (a futex wait, a
/// futex wake by the submitter, two context switches) costs this virtualised
/// kind of machine more CPU than the spin; an instance whose waits are longer
/// (a lightly loaded or idle server) sleeps at once and burns nothing.
const SPIN: Duration = Duration::from_micros(50);

struct Shared {
    cfg: SchedulerConfig,
    /// One per instance (instances on the same device share one copy).
    backends: Vec<Arc<dyn Backend>>,
    output_names: Vec<String>,
    metrics: Arc<VersionMetrics>,
    stats: Arc<VersionStats>,
    state: Mutex<State>,
    work: Condvar,
    /// `jobs.len()`, readable without the lock by a spinning instance.
    queued: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the queue's depth after it changed: the gauge, and the count a
    /// spinning instance reads.
    fn queue_changed(&self, st: &State) {
        self.metrics.queue_depth.set(st.jobs.len() as f64);
        self.queued.store(st.jobs.len(), Ordering::Release);
    }
}

pub struct Scheduler {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the version's instance threads: `cfg.instances` of them, instance `i`
    /// running `backends[i % backends.len()]`. `backends` must not be empty.
    pub fn start(
        cfg: SchedulerConfig,
        backends: Vec<Arc<dyn Backend>>,
        metrics: Arc<VersionMetrics>,
        stats: Arc<VersionStats>,
    ) -> std::io::Result<Self> {
        let Some(first) = backends.first() else {
            return Err(std::io::Error::other("no backend to run"));
        };
        let output_names = first
            .signature()
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .collect();
        let instances = cfg.instances.max(1);
        metrics.queue_capacity.set(cfg.max_queue_size as f64);
        let shared = Arc::new(Shared {
            cfg,
            backends,
            output_names,
            metrics,
            stats,
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
                idle: 0,
                filling: 0,
            }),
            work: Condvar::new(),
            queued: AtomicUsize::new(0),
        });
        let mut threads = Vec::with_capacity(instances);
        for i in 0..instances {
            let sh = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-{}-{i}", sh.cfg.label))
                .spawn(move || instance(&sh, i));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Stop the threads already started before reporting.
                    drop(Scheduler { shared, threads });
                    return Err(e);
                }
            }
        }
        Ok(Scheduler { shared, threads })
    }

    /// Queues a request of `rows` rows; fails at once when the queue is full.
    /// A traced request (`trace`, its span) gets queue and compute spans.
    pub fn submit(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        deadline: Option<Instant>,
        trace: Option<&tracing::Span>,
    ) -> Result<oneshot::Receiver<Computed>, KilnError> {
        let (reply, rx) = oneshot::channel();
        let sh = &*self.shared;
        // The backend's estimate (for text models, a tokenisation) is taken
        // before the lock, so that it never holds up the other submitters and
        // the instances forming batches.
        let cost = sh.backends[0].row_cost(&inputs).unwrap_or(1).max(1);
        let mut st = sh.lock();
        if st.closed {
            return Err(KilnError::unavailable(format!(
                "model {} is unloading",
                sh.cfg.label
            )));
        }
        if st.jobs.len() >= sh.cfg.max_queue_size {
            // Requests whose clients left or whose deadline passed give up their places.
            purge(&mut st.jobs, &sh.cfg.label, Instant::now());
        }
        if st.jobs.len() >= sh.cfg.max_queue_size {
            return Err(KilnError::unavailable(format!(
                "model {}: the request queue is full ({} waiting, max_queue_size {}); retry later",
                sh.cfg.label,
                st.jobs.len(),
                sh.cfg.max_queue_size
            )));
        }
        st.jobs.push_back(Job {
            inputs,
            rows,
            cost,
            enqueued: Instant::now(),
            deadline,
            reply,
            trace: trace.map(|span| Queued::new(span.clone())),
        });
        sh.queue_changed(&st);
        let wake = st.idle > 0 || (st.filling > 0 && st.may_dispatch(&sh.cfg, deadline.is_some()));
        drop(st);
        if wake {
            sh.work.notify_one();
        }
        Ok(rx)
    }

    pub fn queue_depth(&self) -> usize {
        self.shared.lock().jobs.len()
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.shared.cfg
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // The instances finish what is queued, then exit.
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
        if tokio::runtime::Handle::try_current().is_ok() {
            // Never block the async runtime: the threads exit on their own once
            // the queue is empty, releasing the backend.
            self.threads.clear();
            return;
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn instance(sh: &Shared, i: usize) {
    let backend = sh.backends[i % sh.backends.len()].as_ref();
    let mut spin = true;
    while let Some(batch) = next_batch(sh, &mut spin) {
        execute(sh, backend, batch);
    }
}

/// Spins until a job is queued, or for `SPIN`.
fn spin_for_work(sh: &Shared) {
    let until = Instant::now() + SPIN;
    loop {
        for _ in 0..64 {
            if sh.queued.load(Ordering::Acquire) > 0 {
                return;
            }
            std::hint::spin_loop();
        }
        if Instant::now() >= until {
            return;
        }
        // A thread of the network side waiting for this core runs first.
        std::thread::yield_now();
    }
}

/// Removes requests nobody waits for any more and answers those past their deadline.
fn purge(jobs: &mut VecDeque<Job>, label: &str, now: Instant) {
    if !jobs
        .iter()
        .any(|j| j.reply.is_closed() || j.deadline.is_some_and(|d| d <= now))
    {
        return;
    }
    let mut kept = VecDeque::with_capacity(jobs.len());
    for j in jobs.drain(..) {
        if j.reply.is_closed() {
            tracing::debug!(model = label, "client went away while queued; skipped");
        } else if j.deadline.is_some_and(|d| d <= now) {
            j.expire(label);
        } else {
            kept.push_back(j);
        }
    }
    *jobs = kept;
}

/// Waits for work and takes the next batch; `None` when the scheduler closed and
/// its queue is empty.
/// `spin`: whether to spin before sleeping (the last wait for work was
/// shorter than `SPIN`); updated with this wait.
fn next_batch(sh: &Shared, spin: &mut bool) -> Option<Vec<Job>> {
    let cfg = &sh.cfg;
    let mut st = sh.lock();
    let mut waiting_since = None;
    loop {
        let now = Instant::now();
        purge(&mut st.jobs, &cfg.label, now);
        if st.jobs.is_empty() {
            sh.queue_changed(&st);
            if st.closed {
                return None;
            }
            let since = *waiting_since.get_or_insert(now);
            if *spin && now.duration_since(since) < SPIN {
                drop(st);
                spin_for_work(sh);
                st = sh.lock();
                continue;
            }
            st.idle += 1;
            st = sh.work.wait(st).unwrap_or_else(|p| p.into_inner());
            st.idle -= 1;
            continue;
        }
        if let Some(since) = waiting_since.take() {
            *spin = since.elapsed() < SPIN;
        }
        let take = if cfg.batches() {
            let (rows, picks, full) = compatible(&st.jobs, cfg.max_batch_size, cfg.max_batch_cost);
            let dispatch_at = st.jobs[0].enqueued + cfg.max_queue_delay;
            let ready = full
                || cfg.preferred_batch_sizes.contains(&rows)
                || now >= dispatch_at
                || st.closed;
            if !ready {
                // Wake for a new request or when the oldest one's delay is up;
                // deadlines of queued requests also end the wait.
                let until = st
                    .jobs
                    .iter()
                    .filter_map(|j| j.deadline)
                    .fold(dispatch_at, Instant::min);
                let wait = until.saturating_duration_since(now);
                st.filling += 1;
                st = sh
                    .work
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                st.filling -= 1;
                continue;
            }
            picks
        } else {
            vec![0]
        };
        let batch = remove(&mut st.jobs, &take);
        sh.queue_changed(&st);
        let more = !st.jobs.is_empty() && st.idle + st.filling > 0;
        drop(st);
        if more {
            // Another idle instance can take what is left.
            sh.work.notify_one();
        }
        return Some(batch);
    }
}

/// Indices of the queued requests the head's batch would take (head first, in
/// queue order, within `max_rows` and the cost budget), their rows, and whether
/// the batch is full (no further row would fit).
fn compatible(
    jobs: &VecDeque<Job>,
    max_rows: usize,
    max_cost: Option<usize>,
) -> (usize, Vec<usize>, bool) {
    let head = &jobs[0];
    let mut rows = head.rows;
    let mut cost = head.cost;
    let mut picks = vec![0];
    let within = |rows: usize, cost: usize| max_cost.is_none_or(|b| rows.saturating_mul(cost) <= b);
    for (i, j) in jobs.iter().enumerate().skip(1) {
        if rows >= max_rows || !within(rows + 1, cost) {
            break;
        }
        if rows + j.rows <= max_rows && head.fits(j) && within(rows + j.rows, cost.max(j.cost)) {
            rows += j.rows;
            cost = cost.max(j.cost);
            picks.push(i);
        }
    }
    let full = rows >= max_rows || !within(rows + 1, cost);
    (rows, picks, full)
}

/// Takes the jobs at ascending `indices` out of the queue, keeping the rest in order.
fn remove(jobs: &mut VecDeque<Job>, indices: &[usize]) -> Vec<Job> {
    let contiguous = indices.iter().enumerate().all(|(k, &i)| k == i);
    if contiguous {
        return jobs.drain(..indices.len()).collect();
    }
    let mut out: Vec<Job> = indices
        .iter()
        .rev()
        .filter_map(|&i| jobs.remove(i))
        .collect();
    out.reverse();
    out
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs one batch and answers each of its requests.
fn execute(sh: &Shared, backend: &dyn Backend, mut batch: Vec<Job>) {
    let label = &sh.cfg.label;
    // A client may have left between batching and now.
    batch.retain(|j| !j.reply.is_closed());
    if batch.is_empty() {
        return;
    }
    let started = Instant::now();
    let rows: Vec<usize> = batch.iter().map(|j| j.rows).collect();
    let total_rows: usize = rows.iter().sum();
    for q in batch.iter_mut().filter_map(|j| j.trace.as_mut()) {
        q.dequeued();
    }
    let compute_span = trace::compute(
        batch
            .iter()
            .filter_map(|j| j.trace.as_ref().map(|q| &q.request)),
        total_rows,
        batch.len(),
    );
    let computing = compute_span.enter();
    let single = batch.len() == 1;
    // A lone request's inputs go to the backend as they are; a batch's are joined.
    let inputs: Result<Vec<Tensor>, String> = if single {
        Ok(std::mem::take(&mut batch[0].inputs))
    } else {
        (0..batch[0].inputs.len())
            .map(|k| {
                let parts: Vec<&Tensor> = batch.iter().map(|j| &j.inputs[k]).collect();
                Tensor::concat_batch(&parts).map_err(|e| e.to_string())
            })
            .collect()
    };
    let (replies, job_inputs): (Vec<_>, Vec<Vec<Tensor>>) = batch
        .into_iter()
        .map(|j| ((j.reply, j.enqueued), j.inputs))
        .unzip();
    let t_input = started.elapsed();
    let ran = Instant::now();
    let result: Result<Vec<Tensor>, KilnError> = match inputs {
        Err(e) => Err(KilnError::internal(format!(
            "model {label}: cannot form a batch: {e}"
        ))),
        Ok(inputs) => run_backend(sh, backend, inputs),
    };
    let t_infer = ran.elapsed();
    let split_at = Instant::now();
    // One result per request: its own outputs, or the batch's error.
    let answers: Vec<Result<Vec<Tensor>, KilnError>> = match result {
        // The model refused some request's input: run each request alone, so that
        // only the one at fault fails.
        Err(e) if !single && e.kind == ErrorKind::InvalidArgument => job_inputs
            .into_iter()
            .map(|i| run_backend(sh, backend, i))
            .collect(),
        Err(e) => vec![Err(e); replies.len()],
        Ok(outputs) if single => vec![Ok(outputs)],
        Ok(outputs) => split_outputs(sh, outputs, &rows, total_rows),
    };
    let compute = ComputeTimes {
        input: t_input,
        infer: t_infer,
        output: split_at.elapsed(),
    };
    // The compute span ends before any request is answered (and its span ends).
    drop(computing);
    drop(compute_span);
    sh.stats.record_execution(total_rows, &compute);
    sh.metrics.executions.increment(1);
    sh.metrics.batch_size.record(total_rows as f64);
    for ((reply, enqueued), outputs) in replies.into_iter().zip(answers) {
        let _ = reply.send(Computed {
            outputs,
            queue: started.saturating_duration_since(enqueued),
            compute,
            batch_size: total_rows,
        });
    }
}

/// Runs the backend, turning its errors and panics into the request's error.
fn run_backend(
    sh: &Shared,
    backend: &dyn Backend,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>, KilnError> {
    let label = &sh.cfg.label;
    match std::panic::catch_unwind(AssertUnwindSafe(|| backend.run(inputs))) {
        Ok(Ok(outputs)) => Ok(outputs),
        Ok(Err(BackendError::InvalidInput(e))) => {
            Err(KilnError::invalid(format!("model {label}: {e}")))
        }
        Ok(Err(e)) => Err(KilnError::internal(format!("model {label}: {e}"))),
        Err(panic) => {
            let what = panic_message(&*panic);
            tracing::error!(model = %label, "backend panicked: {what}");
            Err(KilnError::internal(format!(
                "model {label}: backend panicked: {what}"
            )))
        }
    }
}

fn split_outputs(
    sh: &Shared,
    outputs: Vec<Tensor>,
    rows: &[usize],
    total_rows: usize,
) -> Vec<Result<Vec<Tensor>, KilnError>> {
    let label = &sh.cfg.label;
    let mut per_request: Vec<Vec<Tensor>> = (0..rows.len())
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for (i, out) in outputs.into_iter().enumerate() {
        let name = sh.output_names.get(i).map_or("?", String::as_str);
        match out.split_batch(rows) {
            Ok(pieces) => {
                for (dst, piece) in per_request.iter_mut().zip(pieces) {
                    dst.push(piece);
                }
            }
            Err(e) => {
                let err = KilnError::internal(format!(
                    "model {label}: output '{name}' of a batch of {total_rows} rows cannot be split back to its requests ({e}); a model whose outputs do not follow the batch dimension needs dynamic_batching = false"
                ));
                return vec![Err(err); rows.len()];
            }
        }
    }
    per_request.into_iter().map(Ok).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DataType;
    use crate::model::{ModelSignature, TensorSpec};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Doubles its input; records each execution's rows; panics on a negative
    /// first element, fails on NaN.
    struct Doubler {
        sig: ModelSignature,
        delay: Duration,
        executions: Mutex<Vec<usize>>,
        running: AtomicUsize,
        max_running: AtomicUsize,
    }

    impl Backend for Doubler {
        fn signature(&self) -> &ModelSignature {
            &self.sig
        }
        fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            self.executions.lock().unwrap().push(inputs[0].rows());
            std::thread::sleep(self.delay);
            self.running.fetch_sub(1, Ordering::SeqCst);
            let v = inputs[0]
                .to_vec::<f32>()
                .map_err(|e| BackendError::Run(e.to_string()))?;
            if v[0] < 0.0 {
                panic!("negative input");
            }
            if v.iter().any(|x| x.is_nan()) {
                return Err(BackendError::Run("NaN in input".into()));
            }
            if v.iter().any(|x| x.is_infinite()) {
                return Err(BackendError::InvalidInput("infinite input".into()));
            }
            let doubled: Vec<f32> = v.iter().map(|x| x * 2.0).collect();
            Ok(vec![
                Tensor::from_vec(inputs[0].shape().to_vec(), doubled).unwrap()
            ])
        }
        /// A row costs its width (as a text costs its tokens).
        fn row_cost(&self, inputs: &[Tensor]) -> Option<usize> {
            inputs[0].shape().get(1).copied()
        }
    }

    fn doubler(delay: Duration) -> Arc<Doubler> {
        let spec = |n: &str| TensorSpec {
            name: n.into(),
            dtype: DataType::Fp32,
            shape: vec![-1, -1],
        };
        Arc::new(Doubler {
            sig: ModelSignature {
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
            },
            delay,
            executions: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
        })
    }

    fn cfg(
        max_batch_size: usize,
        delay_us: u64,
        queue: usize,
        instances: usize,
    ) -> SchedulerConfig {
        SchedulerConfig {
            label: "m:1".into(),
            max_batch_size,
            dynamic_batching: true,
            max_queue_delay: Duration::from_micros(delay_us),
            preferred_batch_sizes: vec![],
            max_queue_size: queue,
            instances,
            max_batch_cost: None,
        }
    }

    fn start(c: SchedulerConfig, b: Arc<Doubler>) -> (Scheduler, Arc<VersionStats>) {
        let stats = Arc::new(VersionStats::default());
        let m = Arc::new(VersionMetrics::new("m", "1", "cpu"));
        (
            Scheduler::start(c, vec![b], m, stats.clone()).unwrap(),
            stats,
        )
    }

    /// Waits until an instance has taken everything queued.
    fn wait_taken(s: &Scheduler) {
        let t0 = Instant::now();
        while s.queue_depth() > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "queue never drained"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn rows(n: usize, width: usize, base: f32) -> Vec<Tensor> {
        let v: Vec<f32> = (0..n * width).map(|i| base + i as f32).collect();
        vec![Tensor::from_vec(vec![n, width], v).unwrap()]
    }

    #[tokio::test]
    async fn batches_and_returns_each_request_its_own_rows() {
        let b = doubler(Duration::from_millis(2));
        let (s, stats) = start(cfg(8, 20_000, 64, 1), b.clone());
        let mut rxs = Vec::new();
        for i in 0..20 {
            let n = 1 + i % 3;
            rxs.push((
                n,
                i,
                s.submit(rows(n, 3, i as f32 * 100.0), n, None, None)
                    .unwrap(),
            ));
        }
        for (n, i, rx) in rxs {
            let done = rx.await.unwrap();
            let out = done.outputs.unwrap();
            let want: Vec<f32> = (0..n * 3)
                .map(|k| 2.0 * (i as f32 * 100.0 + k as f32))
                .collect();
            assert_eq!(out[0].shape(), &[n, 3]);
            assert_eq!(out[0].to_vec::<f32>().unwrap(), want, "request {i}");
            assert!(done.batch_size >= n && done.batch_size <= 8);
        }
        let execs = b.executions.lock().unwrap().clone();
        assert!(execs.iter().all(|&r| r <= 8), "{execs:?}");
        assert!(execs.len() < 20, "no batching happened: {execs:?}");
        assert_eq!(
            execs.iter().sum::<usize>(),
            (0..20).map(|i| 1 + i % 3).sum::<usize>()
        );
        assert_eq!(stats.snapshot().execution_count as usize, execs.len());
    }

    #[tokio::test]
    async fn different_trailing_shapes_never_share_a_batch() {
        let b = doubler(Duration::ZERO);
        let (s, _) = start(cfg(16, 50_000, 64, 1), b.clone());
        let narrow: Vec<_> = (0..4)
            .map(|i| s.submit(rows(1, 2, i as f32), 1, None, None).unwrap())
            .collect();
        let wide: Vec<_> = (0..4)
            .map(|i| s.submit(rows(1, 5, i as f32), 1, None, None).unwrap())
            .collect();
        for rx in narrow {
            assert_eq!(rx.await.unwrap().outputs.unwrap()[0].shape(), &[1, 2]);
        }
        for rx in wide {
            assert_eq!(rx.await.unwrap().outputs.unwrap()[0].shape(), &[1, 5]);
        }
        let execs = b.executions.lock().unwrap().clone();
        assert_eq!(execs, vec![4, 4]);
    }

    #[test]
    fn only_a_job_that_may_end_the_delay_wakes_a_filling_instance() {
        let mut c = cfg(8, 1000, 64, 1);
        c.preferred_batch_sizes = vec![4];
        // A queue holding `rows` rows, in one job.
        let at = |rows| State {
            jobs: VecDeque::from([Job {
                inputs: Vec::new(),
                rows,
                cost: 1,
                enqueued: Instant::now(),
                deadline: None,
                reply: oneshot::channel().0,
                trace: None,
            }]),
            closed: false,
            idle: 0,
            filling: 1,
        };
        assert!(!at(3).may_dispatch(&c, false));
        assert!(at(4).may_dispatch(&c, false), "a preferred size");
        assert!(!at(5).may_dispatch(&c, false));
        assert!(at(8).may_dispatch(&c, false), "a full batch");
        assert!(at(9).may_dispatch(&c, false));
        assert!(at(3).may_dispatch(&c, true), "a deadline may end the wait");
        c.max_batch_cost = Some(100);
        assert!(
            at(1).may_dispatch(&c, false),
            "a cost budget may fill first"
        );
    }

    #[tokio::test]
    async fn delay_fills_a_batch_and_max_size_dispatches_early() {
        let b = doubler(Duration::ZERO);
        // A long delay: only reaching max_batch_size dispatches.
        let (s, _) = start(cfg(4, 10_000_000, 64, 1), b.clone());
        let t0 = Instant::now();
        let rxs: Vec<_> = (0..4)
            .map(|i| s.submit(rows(1, 1, i as f32), 1, None, None).unwrap())
            .collect();
        for rx in rxs {
            rx.await.unwrap().outputs.unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(b.executions.lock().unwrap().clone(), vec![4]);
    }

    #[tokio::test]
    async fn preferred_size_dispatches_without_waiting() {
        let b = doubler(Duration::ZERO);
        let mut c = cfg(8, 10_000_000, 64, 1);
        c.preferred_batch_sizes = vec![2];
        let (s, _) = start(c, b.clone());
        let rxs: Vec<_> = (0..2)
            .map(|i| s.submit(rows(1, 1, i as f32), 1, None, None).unwrap())
            .collect();
        for rx in rxs {
            rx.await.unwrap().outputs.unwrap();
        }
        assert_eq!(b.executions.lock().unwrap().clone(), vec![2]);
    }

    #[tokio::test]
    async fn batching_off_runs_requests_alone() {
        let b = doubler(Duration::from_millis(1));
        let mut c = cfg(8, 0, 64, 1);
        c.dynamic_batching = false;
        let (s, _) = start(c, b.clone());
        let rxs: Vec<_> = (0..6)
            .map(|i| s.submit(rows(2, 1, i as f32), 2, None, None).unwrap())
            .collect();
        for rx in rxs {
            rx.await.unwrap().outputs.unwrap();
        }
        assert_eq!(b.executions.lock().unwrap().clone(), vec![2; 6]);
    }

    #[tokio::test]
    async fn failures_stay_within_their_batch() {
        let b = doubler(Duration::from_millis(20));
        let mut c = cfg(4, 0, 64, 1);
        c.dynamic_batching = false;
        let (s, _) = start(c, b.clone());
        let panics = s.submit(rows(1, 1, -5.0), 1, None, None).unwrap();
        let fails = s
            .submit(
                vec![Tensor::from_vec(vec![1, 1], vec![f32::NAN]).unwrap()],
                1,
                None,
                None,
            )
            .unwrap();
        let fine = s.submit(rows(1, 1, 3.0), 1, None, None).unwrap();
        let e = panics.await.unwrap().outputs.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(
            e.message.contains("panicked: negative input"),
            "{}",
            e.message
        );
        let e = fails.await.unwrap().outputs.unwrap_err();
        assert!(e.message.contains("NaN in input"), "{}", e.message);
        let ok = fine.await.unwrap().outputs.unwrap();
        assert_eq!(ok[0].to_vec::<f32>().unwrap(), vec![6.0]);
        // And the version keeps serving afterwards.
        let again = s
            .submit(rows(1, 1, 1.0), 1, None, None)
            .unwrap()
            .await
            .unwrap();
        assert!(again.outputs.is_ok());
    }

    #[tokio::test]
    async fn a_failed_batch_fails_only_its_requests() {
        let b = doubler(Duration::from_millis(30));
        let (s, _) = start(cfg(8, 0, 64, 1), b.clone());
        // Occupies the instance while the next requests queue up.
        let first = s.submit(rows(1, 1, 1.0), 1, None, None).unwrap();
        wait_taken(&s);
        let bad = s.submit(rows(1, 1, -1.0), 1, None, None).unwrap();
        let partner = s.submit(rows(1, 1, 2.0), 1, None, None).unwrap();
        assert!(first.await.unwrap().outputs.is_ok());
        // bad and partner were batched together, and both fail with the message.
        let e1 = bad.await.unwrap().outputs.unwrap_err();
        let e2 = partner.await.unwrap().outputs.unwrap_err();
        assert_eq!(e1.message, e2.message);
        let later = s
            .submit(rows(1, 1, 4.0), 1, None, None)
            .unwrap()
            .await
            .unwrap();
        assert_eq!(
            later.outputs.unwrap()[0].to_vec::<f32>().unwrap(),
            vec![8.0]
        );
    }

    #[tokio::test]
    async fn a_cost_budget_caps_batches() {
        let b = doubler(Duration::from_millis(30));
        let mut c = cfg(8, 0, 64, 1);
        c.max_batch_cost = Some(8);
        let (s, _) = start(c, b.clone());
        let first = s.submit(rows(1, 4, 1.0), 1, None, None).unwrap();
        wait_taken(&s);
        // Width 4 costs 4 a row: a budget of 8 takes two rows at a time, though
        // max_batch_size would take 8; a request over budget on its own still runs.
        let rest: Vec<_> = (0..5)
            .map(|i| s.submit(rows(1, 4, i as f32), 1, None, None).unwrap())
            .collect();
        let wide = s.submit(rows(1, 16, 0.0), 1, None, None).unwrap();
        assert!(first.await.unwrap().outputs.is_ok());
        for r in rest {
            assert!(r.await.unwrap().outputs.is_ok());
        }
        assert!(wide.await.unwrap().outputs.is_ok());
        assert_eq!(*b.executions.lock().unwrap(), vec![1, 2, 2, 1, 1]);
    }

    #[tokio::test]
    async fn an_input_the_model_refuses_fails_only_its_own_request() {
        let b = doubler(Duration::from_millis(30));
        let (s, _) = start(cfg(8, 0, 64, 1), b.clone());
        let first = s.submit(rows(1, 1, 1.0), 1, None, None).unwrap();
        wait_taken(&s);
        let bad = s.submit(rows(1, 1, f32::INFINITY), 1, None, None).unwrap();
        let partner = s.submit(rows(1, 1, 2.0), 1, None, None).unwrap();
        assert!(first.await.unwrap().outputs.is_ok());
        // Batched together, refused, then re-run one by one: only `bad` fails.
        let e = bad.await.unwrap().outputs.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("infinite"), "{}", e.message);
        let ok = partner.await.unwrap().outputs.unwrap();
        assert_eq!(ok[0].to_vec::<f32>().unwrap(), vec![4.0]);
        assert_eq!(*b.executions.lock().unwrap(), vec![1, 2, 1, 1]);
    }

    #[tokio::test]
    async fn full_queue_rejects_departed_and_expired_are_not_computed() {
        let b = doubler(Duration::from_millis(100));
        let mut c = cfg(4, 0, 3, 1);
        c.dynamic_batching = false;
        let (s, stats) = start(c, b.clone());
        let first = s.submit(rows(1, 1, 1.0), 1, None, None).unwrap();
        wait_taken(&s);
        let abandoned = s.submit(rows(1, 1, 2.0), 1, None, None).unwrap();
        let expiring = s
            .submit(
                rows(1, 1, 3.0),
                1,
                Some(Instant::now() + Duration::from_millis(10)),
                None,
            )
            .unwrap();
        let kept = s.submit(rows(1, 1, 4.0), 1, None, None).unwrap();
        let e = s.submit(rows(1, 1, 5.0), 1, None, None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("queue is full"), "{}", e.message);
        drop(abandoned);
        // The departed client's place is free again.
        let extra = s.submit(rows(1, 1, 6.0), 1, None, None).unwrap();
        assert!(first.await.unwrap().outputs.is_ok());
        let e = expiring.await.unwrap().outputs.unwrap_err();
        assert_eq!(e.kind, ErrorKind::DeadlineExceeded);
        assert!(e.message.contains("not computed"), "{}", e.message);
        assert!(kept.await.unwrap().outputs.is_ok());
        assert!(extra.await.unwrap().outputs.is_ok());
        assert_eq!(
            b.executions.lock().unwrap().len(),
            3,
            "only first, kept and extra ran"
        );
        assert_eq!(stats.snapshot().execution_count, 3);
    }

    #[tokio::test]
    async fn instances_run_in_parallel() {
        let b = doubler(Duration::from_millis(50));
        let mut c = cfg(4, 0, 64, 3);
        c.dynamic_batching = false;
        let (s, _) = start(c, b.clone());
        let rxs: Vec<_> = (0..6)
            .map(|i| s.submit(rows(1, 1, i as f32), 1, None, None).unwrap())
            .collect();
        for rx in rxs {
            rx.await.unwrap().outputs.unwrap();
        }
        assert_eq!(b.max_running.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn unsplittable_outputs_fail_with_a_clear_message() {
        struct Summer(ModelSignature);
        impl Backend for Summer {
            fn signature(&self) -> &ModelSignature {
                &self.0
            }
            fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
                std::thread::sleep(Duration::from_millis(20));
                let s: f32 = inputs[0].to_vec::<f32>().unwrap().iter().sum();
                Ok(vec![Tensor::from_vec(vec![1], vec![s]).unwrap()])
            }
        }
        let b = Arc::new(Summer(doubler(Duration::ZERO).sig.clone()));
        let stats = Arc::new(VersionStats::default());
        let m = Arc::new(VersionMetrics::new("m", "1", "cpu"));
        let s = Scheduler::start(cfg(8, 0, 64, 1), vec![b], m, stats).unwrap();
        let first = s.submit(rows(1, 1, 1.0), 1, None, None).unwrap();
        wait_taken(&s);
        let a = s.submit(rows(1, 1, 1.0), 1, None, None).unwrap();
        let c = s.submit(rows(1, 1, 1.0), 1, None, None).unwrap();
        assert!(first.await.unwrap().outputs.is_ok());
        let e = a.await.unwrap().outputs.unwrap_err();
        assert!(e.message.contains("cannot be split"), "{}", e.message);
        assert!(c.await.unwrap().outputs.is_err());
    }

    #[tokio::test]
    async fn dropping_the_scheduler_finishes_queued_work() {
        let b = doubler(Duration::from_millis(5));
        let (s, _) = start(cfg(1, 0, 64, 1), b.clone());
        let rxs: Vec<_> = (0..5)
            .map(|i| s.submit(rows(1, 1, i as f32), 1, None, None).unwrap())
            .collect();
        drop(s);
        for rx in rxs {
            assert!(rx.await.unwrap().outputs.is_ok());
        }
    }
}
