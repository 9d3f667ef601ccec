//! The in-process limit for an ONNX model on ONNX Runtime: the backend Kiln serves
//! (same library, same execution provider and options), called directly, with no
//! network, queue or batching in between. Two ways:
//!   batch N    one thread, batches of N rows;
//!   threads N  N threads, one row per call, all on one loaded model (as N clients
//!              of a server without batching would be).
//!
//!     cargo bench -p kiln-backend-ort --bench ort_inprocess -- \
//!         MODEL_DIR [--device cuda:0] [--seconds 2] [--batches 1,8,64] [--threads 1,8,64]
//!
//! Prints CSV: model,mode,n,samples_per_s,p50_ms,p99_ms,calls. The ONNX Runtime
//! library is found as Kiln finds it (ORT_DYLIB_PATH, ...); inputs are FP32.

use kiln_backend_ort::OrtFactory;
use kiln_core::backend::{Backend, BackendFactory, LoadRequest};
use kiln_core::config::ModelConfig;
use kiln_core::{Device, Tensor, Version};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn list(v: &str) -> Vec<usize> {
    v.split(',').filter_map(|n| n.trim().parse().ok()).collect()
}

fn input(backend: &dyn Backend, rows: usize) -> Vec<Tensor> {
    backend
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| if i == 0 { rows } else { d.max(1) as usize })
                .collect();
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
                .collect();
            Tensor::from_vec(shape, values).expect("an FP32 input")
        })
        .collect()
}

/// Calls `f` until `secs` pass; returns the call durations.
fn time(secs: f64, mut f: impl FnMut()) -> Vec<Duration> {
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs_f64(secs) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times
}

fn report(
    model: &str,
    mode: &str,
    n: usize,
    rows: usize,
    wall: Duration,
    mut times: Vec<Duration>,
) {
    times.sort();
    let q = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "{model},{mode},{n},{:.1},{:.3},{:.3},{}",
        (rows * times.len()) as f64 / wall.as_secs_f64(),
        q(0.5).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        times.len()
    );
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut dir: Option<PathBuf> = None;
    let (mut device, mut secs) = (Device::Cpu, 2.0f64);
    let (mut batches, mut threads) = (vec![1, 8, 64], vec![1, 8, 64]);
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--device" => device = Device::parse(&value()).expect("a device"),
            "--seconds" => secs = value().parse().expect("seconds"),
            "--batches" => batches = list(&value()),
            "--threads" => threads = list(&value()),
            other => dir = Some(PathBuf::from(other)),
        }
    }
    let Some(dir) = dir else {
        eprintln!("usage: ort_inprocess MODEL_DIR [--device cuda:0] [--seconds 2] [--batches 1,8] [--threads 1,8]");
        return;
    };
    let model = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let cfg = ModelConfig::load(&dir).expect("config");
    let path = dir.join("1/model.onnx");
    let backend = OrtFactory::new(None)
        .load(&LoadRequest {
            model_name: &model,
            version: Version(1),
            path: &path,
            config: &cfg,
            device,
        })
        .expect("load");
    let backend: &dyn Backend = backend.as_ref();
    for &b in &batches {
        let x = input(backend, b);
        for _ in 0..20 {
            backend.run(x.clone()).expect("warm-up");
        }
        let start = Instant::now();
        let times = time(secs, || {
            backend.run(x.clone()).expect("run");
        });
        report(&model, "batch", b, b, start.elapsed(), times);
    }
    for &n in &threads {
        let x = input(backend, 1);
        let start = Instant::now();
        let times: Vec<Duration> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..n)
                .map(|_| {
                    let x = x.clone();
                    s.spawn(move || {
                        time(secs, || {
                            backend.run(x.clone()).expect("run");
                        })
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("worker"))
                .collect()
        });
        report(&model, "threads", n, 1, start.elapsed(), times);
    }
}
