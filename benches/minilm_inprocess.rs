//! The in-process limit for MiniLM on the Candle backend: the same backend Kiln
//! serves, called directly on this thread with batches of the sizes the server
//! forms, no network or queue in between.
//!
//!     cargo bench -p kiln-backend-candle --bench minilm_inprocess [-- SECONDS] \
//!         [--model-dir models/minilm] [--device cuda:0] [--batches 1,8,32]
//!
//! Needs models/minilm (scripts/fetch_minilm.py); `--device cuda:0` needs
//! `--features cuda`. Prints sentences/s and the
//! p50/p99 of one call per (text length, batch size).

use kiln_backend_candle::CandleFactory;
use kiln_core::backend::{BackendFactory, LoadRequest};
use kiln_core::config::ModelConfig;
use kiln_core::{Device, Tensor, Version};
use std::path::Path;
use std::time::{Duration, Instant};

/// 12 tokens, and 128 tokens (WordPiece, [CLS]/[SEP] included).
pub const SHORT: &str = "A man is eating a piece of bread today.";
pub const LONG_SEED: &str =
    "The quick brown fox jumps over the lazy dog while the server answers every request in order. ";

fn long_text() -> String {
    // 19 tokens per seed sentence: 6 of them, 18 more words and [CLS]/[SEP] make 128.
    LONG_SEED.repeat(6) + "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen"
}

fn main() {
    // [SECONDS] [--model-dir DIR] [--device cuda:0] [--batches 1,8,32]
    let (mut secs, mut dir, mut device) = (3.0f64, None, None);
    let mut batches = vec![1usize, 8, 32];
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model-dir" => dir = args.next().map(std::path::PathBuf::from),
            "--device" => device = args.next().map(|d| Device::parse(&d).expect("a device")),
            "--batches" => {
                batches = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|n| n.parse().ok())
                    .collect()
            }
            other => secs = other.parse().unwrap_or(secs),
        }
    }
    let dir =
        dir.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/minilm"));
    if !dir.join("1/model.safetensors").is_file() {
        eprintln!("{} is missing: run scripts/fetch_minilm.py", dir.display());
        return;
    }
    let cfg = ModelConfig::load(&dir).expect("config");
    let path = dir.join("1/model.safetensors");
    let backend = CandleFactory
        .load(&LoadRequest {
            model_name: "minilm",
            version: Version(1),
            path: &path,
            config: &cfg,
            device: device.unwrap_or_else(|| cfg.devices[0]),
        })
        .expect("load");
    let long = long_text();
    println!("length,batch,sentences_per_s,p50_ms,p99_ms,calls");
    for (name, text) in [("short", SHORT), ("long", long.as_str())] {
        for &batch in &batches {
            let input =
                || Tensor::from_byte_elements(vec![batch], &vec![text.as_bytes(); batch]).unwrap();
            backend.run(vec![input()]).unwrap(); // warm
            let mut times = Vec::new();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs_f64(secs) {
                let t = Instant::now();
                backend.run(vec![input()]).unwrap();
                times.push(t.elapsed());
            }
            times.sort();
            let total: Duration = times.iter().sum();
            let q = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
            println!(
                "{name},{batch},{:.1},{:.2},{:.2},{}",
                (batch * times.len()) as f64 / total.as_secs_f64(),
                q(0.5).as_secs_f64() * 1e3,
                q(0.99).as_secs_f64() * 1e3,
                times.len()
            );
        }
    }
}
