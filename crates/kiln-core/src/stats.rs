//! Triton's statistics extension: cumulative counts and nanoseconds per model
//! version, kept with atomics so that recording never blocks a request.
//!
//! Request-level figures (success, fail, queue, compute_*) are charged per request:
//! a request computed in a batch is charged the whole batch's compute time, as Triton
//! does. `execution_count` and `batch_stats` count backend executions.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and the nanoseconds it took in total.
#[derive(Debug, Default)]
struct Cumulative {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Cumulative {
    fn add(&self, d: Duration) {
        self.count.fetch_add(1, Relaxed);
        self.ns.fetch_add(nanos(d), Relaxed);
    }
    fn snapshot(&self) -> StatDuration {
        StatDuration {
            count: self.count.load(Relaxed),
            ns: self.ns.load(Relaxed),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Triton's `StatisticDuration`: how many and how long in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatDuration {
    pub count: u64,
    pub ns: u64,
}

/// The time one execution spent in each compute phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComputeTimes {
    /// Gathering the requests' inputs into the batch.
    pub input: Duration,
    /// The backend's run.
    pub infer: Duration,
    /// Splitting the batch's outputs back to the requests.
    pub output: Duration,
}

impl ComputeTimes {
    pub fn total(&self) -> Duration {
        self.input + self.infer + self.output
    }
}

/// Per batch size: executions and their compute phases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub batch_size: u64,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
}

/// A snapshot of one version's statistics, in Triton's field names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Milliseconds since the Unix epoch of the last successful request; 0: none yet.
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: StatDuration,
    pub fail: StatDuration,
    pub queue: StatDuration,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
    /// Kiln has no response cache; always zero.
    pub cache_hit: StatDuration,
    pub cache_miss: StatDuration,
    pub batch_stats: Vec<BatchStats>,
}

#[derive(Debug, Default)]
struct BatchCell {
    input: Duration,
    infer: Duration,
    output: Duration,
    count: u64,
}

/// One version's statistics.
#[derive(Debug, Default)]
pub struct VersionStats {
    last_inference: AtomicU64,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    success: Cumulative,
    fail: Cumulative,
    queue: Cumulative,
    compute_input: Cumulative,
    compute_infer: Cumulative,
    compute_output: Cumulative,
    batches: Mutex<BTreeMap<usize, BatchCell>>,
}

impl VersionStats {
    /// A request answered with outputs: `rows` inferences.
    pub fn record_success(
        &self,
        rows: usize,
        total: Duration,
        queue: Duration,
        compute: &ComputeTimes,
    ) {
        self.success.add(total);
        self.queue.add(queue);
        self.compute_input.add(compute.input);
        self.compute_infer.add(compute.infer);
        self.compute_output.add(compute.output);
        self.inference_count.fetch_add(rows as u64, Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_inference.fetch_max(now, Relaxed);
    }

    /// A request that reached this version and was not answered with outputs.
    pub fn record_failure(&self, total: Duration) {
        self.fail.add(total);
    }

    /// One backend execution of `batch_size` rows.
    pub fn record_execution(&self, batch_size: usize, compute: &ComputeTimes) {
        self.execution_count.fetch_add(1, Relaxed);
        let mut b = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        let cell = b.entry(batch_size).or_default();
        cell.count += 1;
        cell.input += compute.input;
        cell.infer += compute.infer;
        cell.output += compute.output;
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let batch_stats = {
            let b = self.batches.lock().unwrap_or_else(|p| p.into_inner());
            b.iter()
                .map(|(&size, c)| {
                    let d = |t: Duration| StatDuration {
                        count: c.count,
                        ns: nanos(t),
                    };
                    BatchStats {
                        batch_size: size as u64,
                        compute_input: d(c.input),
                        compute_infer: d(c.infer),
                        compute_output: d(c.output),
                    }
                })
                .collect()
        };
        StatsSnapshot {
            last_inference: self.last_inference.load(Relaxed),
            inference_count: self.inference_count.load(Relaxed),
            execution_count: self.execution_count.load(Relaxed),
            success: self.success.snapshot(),
            fail: self.fail.snapshot(),
            queue: self.queue.snapshot(),
            compute_input: self.compute_input.snapshot(),
            compute_infer: self.compute_infer.snapshot(),
            compute_output: self.compute_output.snapshot(),
            cache_hit: StatDuration::default(),
            cache_miss: StatDuration::default(),
            batch_stats,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_and_executions() {
        let s = VersionStats::default();
        let c = ComputeTimes {
            input: Duration::from_nanos(10),
            infer: Duration::from_nanos(100),
            output: Duration::from_nanos(5),
        };
        s.record_execution(3, &c);
        s.record_success(1, Duration::from_nanos(500), Duration::from_nanos(50), &c);
        s.record_success(2, Duration::from_nanos(600), Duration::from_nanos(60), &c);
        s.record_failure(Duration::from_nanos(7));
        let snap = s.snapshot();
        assert_eq!(snap.inference_count, 3);
        assert_eq!(snap.execution_count, 1);
        assert_eq!(snap.success, StatDuration { count: 2, ns: 1100 });
        assert_eq!(snap.fail, StatDuration { count: 1, ns: 7 });
        assert_eq!(snap.queue, StatDuration { count: 2, ns: 110 });
        assert_eq!(snap.compute_infer, StatDuration { count: 2, ns: 200 });
        assert_eq!(snap.batch_stats.len(), 1);
        assert_eq!(snap.batch_stats[0].batch_size, 3);
        assert_eq!(
            snap.batch_stats[0].compute_infer,
            StatDuration { count: 1, ns: 100 }
        );
        assert!(snap.last_inference > 0);
    }
}
