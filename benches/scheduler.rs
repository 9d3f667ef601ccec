//! Criterion micro-benchmarks of the scheduler's own overhead, with a backend that
//! does no work (it hands its inputs back), so that what is measured is Kiln:
//! enqueue, waking an instance thread, forming the batch (concatenation), splitting
//! the outputs and answering each request.
//!
//!     cargo bench -p kiln-core --bench scheduler
//!
//! Results and the machine they ran on: benches/README.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln_core::backend::{Backend, BackendError};
use kiln_core::metrics::VersionMetrics;
use kiln_core::model::{ModelSignature, TensorSpec};
use kiln_core::scheduler::{Scheduler, SchedulerConfig};
use kiln_core::stats::VersionStats;
use kiln_core::{DataType, Tensor};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

/// Returns its inputs as outputs: zero compute.
struct NoOp(ModelSignature);

impl Backend for NoOp {
    fn signature(&self) -> &ModelSignature {
        &self.0
    }
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        Ok(inputs)
    }
}

fn noop() -> Arc<NoOp> {
    let spec = |n: &str| TensorSpec {
        name: n.into(),
        dtype: DataType::Fp32,
        shape: vec![-1, 16],
    };
    Arc::new(NoOp(ModelSignature {
        inputs: vec![spec("x")],
        outputs: vec![spec("y")],
    }))
}

fn scheduler(max_batch_size: usize, delay: Duration) -> Scheduler {
    let cfg = SchedulerConfig {
        label: "bench:1".into(),
        max_batch_size,
        dynamic_batching: true,
        max_queue_delay: delay,
        preferred_batch_sizes: vec![],
        max_queue_size: 1024,
        instances: 1,
        max_batch_cost: None,
    };
    Scheduler::start(
        cfg,
        vec![noop()],
        Arc::new(VersionMetrics::new("bench", "1", "cpu")),
        Arc::new(VersionStats::default()),
    )
    .expect("start scheduler")
}

fn row() -> Tensor {
    Tensor::from_vec(vec![1, 16], (0..16).map(|i| i as f32).collect()).expect("tensor")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let input = row();

    // One request on an idle scheduler: submit, wake the instance, run, answer.
    let s = scheduler(32, Duration::ZERO);
    c.bench_function("round_trip/1_request", |b| {
        b.iter(|| {
            rt.block_on(async {
                let rx = s
                    .submit(vec![input.clone()], 1, None, None)
                    .expect("submit");
                black_box(rx.await.expect("answer").outputs.expect("outputs"))
            })
        })
    });
    drop(s);

    // N requests that become one batch: the batch dispatches when the N-th arrives
    // (max_batch_size = N, a delay far longer than the benchmark), so each iteration
    // is N enqueues, one concatenation, one run, one split and N answers.
    let mut group = c.benchmark_group("batch");
    for n in [8usize, 32] {
        let s = scheduler(n, Duration::from_secs(10));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                rt.block_on(async {
                    let rxs: Vec<_> = (0..n)
                        .map(|_| {
                            s.submit(vec![input.clone()], 1, None, None)
                                .expect("submit")
                        })
                        .collect();
                    for rx in rxs {
                        black_box(rx.await.expect("answer").outputs.expect("outputs"));
                    }
                })
            })
        });
    }
    group.finish();

    // The data movement alone: joining 32 one-row requests and splitting them back.
    let parts: Vec<Tensor> = (0..32).map(|_| row()).collect();
    let refs: Vec<&Tensor> = parts.iter().collect();
    let sizes = vec![1usize; 32];
    c.bench_function("concat_split/32x16_fp32", |b| {
        b.iter(|| {
            let joined = Tensor::concat_batch(black_box(&refs)).expect("concat");
            black_box(joined.split_batch(&sizes).expect("split"))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
