//! Device placement on a machine without a usable GPU: a model placed on a GPU
//! fails to load with an error that says why (and is never run on the CPU
//! instead), while the CPU models beside it serve.

mod common;

use common::{get, post_json, repo_root};
use serde_json::{json, Value};

fn place(repo: &std::path::Path, model: &str, file: &str, config: &str) {
    let dir = repo.join(model).join("1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        repo_root().join("tests/fixtures/lifecycle").join(file),
        dir.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(repo.join(model).join("config.toml"), config).unwrap();
}

fn reason(index: &[Value], model: &str) -> String {
    let e = index
        .iter()
        .find(|e| e["name"] == model)
        .unwrap_or_else(|| panic!("{model} not in {index:?}"));
    assert_eq!(e["state"], "UNAVAILABLE", "{e}");
    e["reason"].as_str().unwrap_or_default().to_string()
}

#[test]
fn gpu_placements_fail_clearly_and_cpu_models_serve() {
    let repo = tempfile::tempdir().unwrap();
    place(repo.path(), "on_cpu", "add1.onnx", "device = \"cpu\"\n");
    place(repo.path(), "ort_gpu", "add1.onnx", "device = \"cuda:0\"\n");
    place(
        repo.path(),
        "tract_gpu",
        "add1.onnx",
        "backend = \"tract\"\ndevice = \"cuda\"\n",
    );
    place(repo.path(), "gpu_7", "add1.onnx", "device = \"cuda:7\"\n");
    place(
        repo.path(),
        "bad_device",
        "add1.onnx",
        "device = \"tpu:0\"\n",
    );
    let srv = common::start(
        repo.path().to_str().unwrap(),
        &["--strict-readiness", "false", "--gpus", "0,1"],
    );
    let index = post_json(srv.http, "/v2/repository/index", &json!({}))
        .json()
        .as_array()
        .unwrap()
        .clone();
    // The CPU model serves.
    let r = post_json(
        srv.http,
        "/v2/models/on_cpu/infer",
        &json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // ONNX Runtime without its CUDA provider (the CPU wheel) or without a GPU.
    let ort = reason(&index, "ort_gpu");
    assert!(
        ort.contains("cuda:0")
            && (ort.contains("CUDA execution provider") || ort.contains("needs ONNX Runtime")),
        "{ort}"
    );
    let tract = reason(&index, "tract_gpu");
    assert!(tract.contains("tract runs on the CPU only"), "{tract}");
    let not_allowed = reason(&index, "gpu_7");
    assert!(not_allowed.contains("--gpus: 0,1"), "{not_allowed}");
    let bad = reason(&index, "bad_device");
    assert!(
        bad.contains("device") && bad.contains("not a device"),
        "{bad}"
    );
    // Nothing about a GPU model ever serves from the CPU.
    for m in ["ort_gpu", "tract_gpu", "gpu_7", "bad_device"] {
        let ready = get(srv.http, &format!("/v2/models/{m}/ready"));
        assert!(
            ready.status == 400 || ready.status == 404,
            "{m}: {}",
            ready.status
        );
        let r = post_json(
            srv.http,
            &format!("/v2/models/{m}/infer"),
            &json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
        );
        assert!(r.status >= 400, "{m}: {}", r.status);
    }
    for (m, why) in [
        ("ort_gpu", ort),
        ("tract_gpu", tract),
        ("gpu_7", not_allowed),
        ("bad_device", bad),
    ] {
        eprintln!("{m}: {why}");
    }
}

#[test]
fn per_instance_devices_and_logged_cpu_fallback() {
    let repo = tempfile::tempdir().unwrap();
    // Three instances on the CPU, given as a device list.
    place(
        repo.path(),
        "three",
        "add1.onnx",
        "devices = [\"cpu\"]\ninstance_count = 3\n",
    );
    // A GPU instance beside a CPU one: without a usable GPU the load fails...
    place(
        repo.path(),
        "mixed",
        "add1.onnx",
        "devices = [\"cpu\", \"cuda:0\"]\n",
    );
    // ...unless the model allows the CPU instead, which is logged.
    place(
        repo.path(),
        "fallback",
        "add1.onnx",
        "device = \"cuda:0\"\ncpu_fallback = true\n",
    );
    let srv = common::start(
        repo.path().to_str().unwrap(),
        &["--strict-readiness", "false"],
    );
    let index = post_json(srv.http, "/v2/repository/index", &json!({}))
        .json()
        .as_array()
        .unwrap()
        .clone();
    let mixed = reason(&index, "mixed");
    assert!(mixed.contains("cuda:0"), "{mixed}");
    let body = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    for m in ["three", "fallback"] {
        let r = post_json(srv.http, &format!("/v2/models/{m}/infer"), &body);
        assert_eq!(r.status, 200, "{m}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["outputs"][0]["data"], json!([2.0, 3.0, 4.0, 5.0]));
    }
    // Triton's instance groups show where instances run.
    let c = get(srv.http, "/v2/models/three/config").json();
    assert_eq!(
        c["instance_group"],
        json!([{"name": "three_0", "kind": "KIND_CPU", "count": 3}])
    );
    let c = get(srv.http, "/v2/models/fallback/config").json();
    assert_eq!(c["instance_group"][0]["kind"], "KIND_CPU", "{c}");
    // The fallback is in the log, and the metrics say where it really runs.
    assert!(
        srv.startup_log.iter().any(|l| l.contains("fallback")
            && l.contains("cannot run on cuda:0")
            && l.contains("loading on the CPU instead")),
        "{:#?}",
        srv.startup_log
    );
    let metrics = String::from_utf8(get(srv.http, "/metrics").body).unwrap();
    for m in ["three", "fallback"] {
        let line = format!(
            "kiln_requests_total{{model=\"{m}\",version=\"1\",device=\"cpu\",outcome=\"success\"}} 1"
        );
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}
