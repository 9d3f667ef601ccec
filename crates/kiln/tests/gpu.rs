//! On a machine with an NVIDIA GPU (and ONNX Runtime from the onnxruntime-gpu
//! wheel): every example ONNX model served on `cuda:0` answers as the same model
//! on the CPU does, within tolerance; the GPU shows in the model config and the
//! metrics. Without a GPU it is skipped, saying why; `KILN_GPU_TESTS=1` makes a
//! missing GPU a failure, `KILN_GPU_TESTS=0` skips it anyway.
//!
//! On the lent GPU machine, which has no Rust toolchain, the test binary built
//! here runs with `KILN_TEST_BIN` and `KILN_TEST_ROOT` set (scripts/gpu/check.sh).
//! `gpu_checks_run_with_the_cpu_standing_in` runs the same checks with "cpu" in
//! place of the GPU on every machine, so that their own code is tested too.

mod common;

use common::{get, post_json, repo_root};
use serde_json::{json, Value};
use std::path::Path;

/// The GPU under test.
fn gpu() -> String {
    "cuda:0".into()
}

/// Why the GPU tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    let wanted = std::env::var("KILN_GPU_TESTS").ok();
    if wanted.as_deref() == Some("0") {
        return Some("KILN_GPU_TESTS=0".into());
    }
    let present = Path::new("/dev/nvidia0").exists();
    match (present, wanted.as_deref()) {
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

/// Sends one input (its name read from the model's metadata) and returns each
/// output's name and values.
fn infer_one(
    port: u16,
    model: &str,
    shape: &[usize],
    datatype: &str,
    data: &Value,
) -> Vec<(String, Vec<f64>)> {
    let meta = get(port, &format!("/v2/models/{model}")).json();
    let input = meta["inputs"][0]["name"].as_str().unwrap().to_string();
    let r = post_json(
        port,
        &format!("/v2/models/{model}/infer"),
        &json!({"inputs": [{"name": input, "shape": shape, "datatype": datatype, "data": data}]}),
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

fn infer(port: u16, model: &str, shape: &[usize], x: &[f32]) -> Vec<(String, Vec<f64>)> {
    infer_one(port, model, shape, "FP32", &json!(x))
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
    match skip_reason() {
        Some(why) => eprintln!("skipped: {why}"),
        None => example_models_match_the_cpu(&gpu()),
    }
}

#[test]
fn minilm_on_candle_cuda_matches_the_cpu() {
    match skip_reason() {
        Some(why) => eprintln!("skipped: {why}"),
        None => minilm_matches_the_cpu(&gpu(), "candle"),
    }
}

#[test]
fn minilm_on_onnxruntime_cuda_matches_the_cpu() {
    match skip_reason() {
        Some(why) => eprintln!("skipped: {why}"),
        None => minilm_matches_the_cpu(&gpu(), "onnxruntime"),
    }
}

/// The same checks with the CPU standing in for the GPU, so that the GPU tests'
/// own code runs (and can fail) on every machine.
#[test]
fn gpu_checks_run_with_the_cpu_standing_in() {
    example_models_match_the_cpu("cpu");
    minilm_matches_the_cpu("cpu", "candle");
    minilm_matches_the_cpu("cpu", "onnxruntime");
}

fn example_models_match_the_cpu(dev: &str) {
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
            &format!("device = \"{}\"\ntf32 = false\n", dev),
        );
        copy_model(
            repo.path(),
            m,
            &format!("{m}_tf32"),
            &format!("device = \"{}\"\n", dev),
        );
        // One instance on the GPU and one on the CPU behind the same queue.
        copy_model(
            repo.path(),
            m,
            &format!("{m}_mixed"),
            &format!(
                "devices = [\"{}\", \"cpu\"]\ntf32 = false\ndynamic_batching = false\n",
                dev
            ),
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
        let on_gpu = dev != "cpu";
        let c = get(srv.http, &format!("/v2/models/{m}_gpu/config")).json();
        let want = if on_gpu {
            json!([{"name": format!("{m}_gpu_0"), "kind": "KIND_GPU", "count": 1, "gpus": [0]}])
        } else {
            json!([{"name": format!("{m}_gpu_0"), "kind": "KIND_CPU", "count": 1}])
        };
        assert_eq!(c["instance_group"], want);
        let c = get(srv.http, &format!("/v2/models/{m}_mixed/config")).json();
        let kinds: Vec<&Value> = c["instance_group"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| &g["kind"])
            .collect();
        if on_gpu {
            assert_eq!(kinds, [&json!("KIND_GPU"), &json!("KIND_CPU")], "{c}");
        } else {
            assert_eq!(c["instance_group"][0]["count"], 2, "{c}");
        }
    }
    // Per-version series carry the device; NVML reports the GPU.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let metrics = String::from_utf8(get(srv.http, "/metrics").body).unwrap();
    let g = dev;
    let mixed = if g == "cpu" {
        "cpu".to_string()
    } else {
        format!("{g},cpu")
    };
    let mut needles = vec![
        format!("kiln_requests_total{{model=\"mlp_tiny_gpu\",version=\"1\",device=\"{g}\",outcome=\"success\"}} 3"),
        format!("kiln_requests_total{{model=\"mlp_tiny_mixed\",version=\"1\",device=\"{mixed}\",outcome=\"success\"}} 24"),
        "kiln_requests_total{model=\"mlp_tiny_cpu\",version=\"1\",device=\"cpu\",outcome=\"success\"} 3".to_string(),
    ];
    if g != "cpu" {
        needles.push("kiln_gpu_memory_used_bytes{gpu=\"0\"".into());
        needles.push("kiln_gpu_utilization_ratio{gpu=\"0\"".into());
    }
    for needle in needles {
        assert!(metrics.contains(&needle), "{needle} not in\n{metrics}");
    }
}

/// MiniLM on `backend` (candle or onnxruntime), on `dev` and on the CPU.
fn minilm_matches_the_cpu(dev: &str, backend: &str) {
    let src = repo_root().join("models/minilm");
    let file = if backend == "candle" {
        "1/model.safetensors"
    } else {
        "1/model.onnx"
    };
    if !src.join(file).is_file() {
        eprintln!("skipped: models/minilm is missing (scripts/fetch_minilm.py)");
        return;
    }
    let repo = tempfile::tempdir().unwrap();
    let base =
        format!("backend = \"{backend}\"\nfamily = \"bert_embedding\"\nmax_batch_size = 64\n");
    for (name, device) in [
        ("minilm_cpu", "cpu".to_string()),
        ("minilm_gpu", dev.to_string()),
    ] {
        let dst = repo.path().join(name).join("1");
        std::fs::create_dir_all(&dst).unwrap();
        for f in std::fs::read_dir(src.join("1")).unwrap().flatten() {
            std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
        }
        std::fs::write(
            repo.path().join(name).join("config.toml"),
            format!("{base}\ndevice = \"{device}\"\n"),
        )
        .unwrap();
    }
    let srv = common::start(
        repo.path().to_str().unwrap(),
        &["--strict-readiness", "false"],
    );
    let index = post_json(srv.http, "/v2/repository/index", &json!({}));
    let entry = index
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "minilm_gpu")
        .cloned()
        .unwrap();
    if entry["state"] != "READY" {
        let reason = entry["reason"].as_str().unwrap_or_default().to_string();
        if reason.contains("no CUDA support in Candle")
            && std::env::var("KILN_GPU_CANDLE").as_deref() != Ok("1")
        {
            eprintln!("skipped: this kiln was built without --features cuda ({reason})");
            return;
        }
        panic!("minilm ({backend}) on {dev} did not load: {reason}");
    }
    let seed = "The quick brown fox jumps over the lazy dog while the server answers. ";
    let texts = json!([
        "A man is eating a piece of bread today.",
        "Hello.",
        seed.repeat(8)
    ]);
    let embed = |model: &str| infer_one(srv.http, model, &[3], "BYTES", &texts);
    let d = max_rel_diff(&embed("minilm_gpu"), &embed("minilm_cpu"));
    eprintln!("minilm ({backend}): max |gpu - cpu| / (1 + |cpu|) = {d:.2e}");
    assert!(d < 1e-3, "minilm ({backend}) on the GPU differs by {d}");
}
