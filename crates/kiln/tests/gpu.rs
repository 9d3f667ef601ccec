//! On a machine with an NVIDIA GPU (and ONNX Runtime from the onnxruntime-gpu
//! wheel): every example ONNX model served on `cuda:0` answers as the same model
//! on the CPU does, within tolerance; the GPU shows in the model config and the
//! metrics. Without a GPU it is skipped, saying why; `KILN_GPU_TESTS=1` makes a
//! missing GPU a failure, `KILN_GPU_TESTS=0` skips it anyway.
//!
//! On the lent GPU machine, which has no Rust toolchain, the test binary built
//! here runs with `KILN_TEST_BIN` and `KILN_TEST_ROOT` set (scripts/gpu/check.sh).

mod common;

use common::{get, post_json, repo_root};
use serde_json::{json, Value};
use std::path::Path;

/// Why the GPU tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    let wanted = std::env::var("KILN_GPU_TESTS").ok();
    if wanted.as_deref() == Some("0") {
        return Some("KILN_GPU_TESTS=0".into());
    }
    let gpu = Path::new("/dev/nvidia0").exists();
    match (gpu, wanted.as_deref()) {
        (true, _) => None,
        (false, Some("1")) => panic!("KILN_GPU_TESTS=1 but /dev/nvidia0 does not exist"),
        (false, _) => Some("no NVIDIA GPU on this machine (/dev/nvidia0 does not exist)".into()),
    }
}

/// A copy of an example model under another name, with extra config lines.
fn copy_model(repo: &Path, from: &str, to: &str, config: &str) {
    let dst = repo.join(to).join("1");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(
        repo_root().join("models").join(from).join("1/model.onnx"),
        dst.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(repo.join(to).join("config.toml"), config).unwrap();
}

/// Deterministic inputs in [-2, 2).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn infer(port: u16, model: &str, shape: &[usize], x: &[f32]) -> Vec<(String, Vec<f64>)> {
    let meta = get(port, &format!("/v2/models/{model}")).json();
    let input = meta["inputs"][0]["name"].as_str().unwrap().to_string();
    let r = post_json(
        port,
        &format!("/v2/models/{model}/infer"),
        &json!({"inputs": [{"name": input, "shape": shape, "datatype": "FP32", "data": x}]}),
    );
    assert_eq!(
        r.status,
        200,
        "{model}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let v = o["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_f64().unwrap_or(f64::NAN))
                .collect();
            (o["name"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// Largest |a - b| / (1 + |b|) over all outputs.
fn max_rel_diff(a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert_eq!(va.len(), vb.len(), "{na}");
        for (x, y) in va.iter().zip(vb) {
            let d = (x - y).abs() / (1.0 + y.abs());
            assert!(d.is_finite(), "{na}: {x} vs {y}");
            worst = worst.max(d);
        }
    }
    worst
}

#[test]
fn example_models_on_cuda_match_the_cpu() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let repo = tempfile::tempdir().unwrap();
    let models: [(&str, &[usize]); 3] = [
        ("mlp_tiny", &[16]),
        ("cnn_small", &[1, 28, 28]),
        ("digits_mlp", &[64]),
    ];
    for (m, _) in models {
        copy_model(
            repo.path(),
            m,
            &format!("{m}_cpu"),
            "backend = \"onnxruntime\"\ndevice = \"cpu\"\n",
        );
        copy_model(
            repo.path(),
            m,
            &format!("{m}_gpu"),
            "device = \"cuda:0\"\ntf32 = false\n",
        );
        copy_model(
            repo.path(),
            m,
            &format!("{m}_tf32"),
            "device = \"cuda:0\"\n",
        );
        // One instance on the GPU and one on the CPU behind the same queue.
        copy_model(
            repo.path(),
            m,
            &format!("{m}_mixed"),
            "devices = [\"cuda:0\", \"cpu\"]\ntf32 = false\ndynamic_batching = false\n",
        );
    }
    let srv = common::start(repo.path().to_str().unwrap(), &["--gpu-metrics-secs", "1"]);
    for (m, row) in models {
        for (seed, batch) in [(1u64, 1usize), (2, 8), (3, 32)] {
            let mut shape = vec![batch];
            shape.extend_from_slice(row);
            let x = data(shape.iter().product(), seed);
            let cpu = infer(srv.http, &format!("{m}_cpu"), &shape, &x);
            let fp32 = max_rel_diff(&infer(srv.http, &format!("{m}_gpu"), &shape, &x), &cpu);
            let tf32 = max_rel_diff(&infer(srv.http, &format!("{m}_tf32"), &shape, &x), &cpu);
            // The mixed model answers from either instance: both must match.
            // Concurrent requests, so that both instances take some.
            let mixed = std::thread::scope(|s| {
                let calls: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| infer(srv.http, &format!("{m}_mixed"), &shape, &x)))
                    .collect();
                calls
                    .into_iter()
                    .map(|c| max_rel_diff(&c.join().unwrap(), &cpu))
                    .fold(0.0, f64::max)
            });
            eprintln!(
                "{m} batch {batch}: max |gpu - cpu| / (1 + |cpu|): fp32 {fp32:.2e}, tf32 {tf32:.2e}, mixed {mixed:.2e}"
            );
            assert!(
                fp32 < 1e-4,
                "{m} batch {batch}: fp32 on the GPU differs by {fp32}"
            );
            assert!(mixed < 1e-4, "{m} batch {batch}: mixed differs by {mixed}");
            assert!(
                tf32 < 1e-2,
                "{m} batch {batch}: tf32 on the GPU differs by {tf32}"
            );
        }
        let c = get(srv.http, &format!("/v2/models/{m}_gpu/config")).json();
        assert_eq!(
            c["instance_group"],
            json!([{"name": format!("{m}_gpu_0"), "kind": "KIND_GPU", "count": 1, "gpus": [0]}])
        );
        let c = get(srv.http, &format!("/v2/models/{m}_mixed/config")).json();
        let kinds: Vec<&Value> = c["instance_group"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| &g["kind"])
            .collect();
        assert_eq!(kinds, [&json!("KIND_GPU"), &json!("KIND_CPU")], "{c}");
    }
    // Per-version series carry the device; NVML reports the GPU.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let metrics = String::from_utf8(get(srv.http, "/metrics").body).unwrap();
    for needle in [
        "kiln_requests_total{model=\"mlp_tiny_gpu\",version=\"1\",device=\"cuda:0\",outcome=\"success\"} 3",
        "kiln_requests_total{model=\"mlp_tiny_mixed\",version=\"1\",device=\"cuda:0,cpu\",outcome=\"success\"} 24",
        "kiln_requests_total{model=\"mlp_tiny_cpu\",version=\"1\",device=\"cpu\",outcome=\"success\"} 3",
        "kiln_gpu_memory_used_bytes{gpu=\"0\"",
        "kiln_gpu_utilization_ratio{gpu=\"0\"",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
}
