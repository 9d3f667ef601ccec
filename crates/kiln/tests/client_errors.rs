//! One client's bad input fails that client's request only, and never counts
//! against a canary's health: invalid UTF-8 in a BYTES input on ONNX Runtime was
//! a 500 that failed every request sharing its batch, and ten such strings sent
//! to a canary rolled it back.

mod common;

use kiln_grpc::pb::model_infer_request::InferInputTensor;
use kiln_grpc::pb::*;
use serde_json::Value;
use tonic::Code;

/// `identity_ort` (BF16 and BYTES in, the same out) needs ONNX Runtime, which
/// the test setup installs; without it (a bare `cargo test`) the model cannot
/// load, and these tests say so and stop, except in CI.
fn ort_serves(http: u16) -> bool {
    let ready = common::get(http, "/v2/models/identity_ort/ready").status == 200;
    if !ready {
        assert!(
            std::env::var_os("CI").is_none(),
            "identity_ort is not ready in CI"
        );
        eprintln!("skipped: ONNX Runtime is not available (scripts/setup-python.sh installs it)");
    }
    ready
}

fn request(version: &str, text: &[u8]) -> ModelInferRequest {
    let input = |name: &str, datatype: &str| InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: vec![1, 1],
        ..Default::default()
    };
    let mut bytes = (text.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(text);
    ModelInferRequest {
        model_name: "identity_ort".into(),
        model_version: version.into(),
        inputs: vec![input("IN_BF16", "BF16"), input("IN_BYTES", "BYTES")],
        raw_input_contents: vec![vec![0x80, 0x3f], bytes],
        ..Default::default()
    }
}

/// Sends `good` valid and `bad` invalid-UTF-8 requests at once; returns the
/// good ones' outcomes and the bad ones'.
async fn burst(
    grpc: u16,
    good: usize,
    bad: usize,
    bad_version: &'static str,
) -> (Vec<Result<Vec<u8>, tonic::Status>>, Vec<tonic::Status>) {
    let c = common::grpc_client(grpc).await;
    // The bad ones spread evenly among the good.
    let stride = ((good + bad) / bad.max(1)).max(1);
    let mut tasks = Vec::new();
    for i in 0..good + bad {
        let mut c = c.clone();
        let is_bad = bad > 0 && i % stride == 0 && i / stride < bad;
        tasks.push(tokio::spawn(async move {
            let req = if is_bad {
                request(bad_version, b"\xff\xfe not UTF-8")
            } else {
                request("", format!("text {i}").as_bytes())
            };
            (
                is_bad,
                c.model_infer(req)
                    .await
                    .map(|r| r.into_inner().raw_output_contents.concat()),
            )
        }));
    }
    let (mut goods, mut bads) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            (true, Err(e)) => bads.push(e),
            (true, Ok(_)) => panic!("an invalid string was accepted"),
            (false, r) => goods.push(r),
        }
    }
    (goods, bads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_fails_only_its_own_request() {
    let s = common::start("tests/models", &[]);
    if !ort_serves(s.http) {
        return;
    }
    for _ in 0..3 {
        let (goods, bads) = burst(s.grpc, 60, 6, "").await;
        assert_eq!(bads.len(), 6);
        for e in &bads {
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains("UTF-8"), "{e:?}");
        }
        assert_eq!(goods.len(), 60);
        for g in goods {
            let out = g.expect("a valid request failed with the invalid one");
            assert!(out.windows(5).any(|w| w == b"text "), "{out:?}");
        }
    }
}

#[test]
fn a_client_error_never_rolls_back_a_canary() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::repo_root().join("tests/models/identity_ort/1/model.onnx");
    for v in [1, 2] {
        let d = dir.path().join(format!("identity_ort/{v}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&src, d.join("model.onnx")).unwrap();
    }
    std::fs::write(
        dir.path().join("identity_ort/config.toml"),
        "backend = \"onnxruntime\"\nversion_policy = { all = true }\n[traffic]\nstable = 1\ncanary = 2\ncanary_percent = 50\n[rollback]\nmin_requests = 5\nwindow_secs = 60\nmax_error_rate_increase = 0.01\nmax_p99_ratio = 1000.0\n",
    )
    .unwrap();
    let s = common::start(dir.path().to_str().unwrap(), &[]);
    if !ort_serves(s.http) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Ten bad strings pinned to the canary, among healthy traffic to both versions.
    let (goods, bads) = rt.block_on(burst(s.grpc, 60, 10, "canary"));
    assert_eq!(bads.len(), 10);
    assert!(
        bads.iter().all(|e| e.code() == Code::InvalidArgument),
        "{bads:?}"
    );
    assert!(goods.iter().all(Result::is_ok));
    // The watcher looks every 250 ms.
    std::thread::sleep(std::time::Duration::from_millis(800));
    let t: Value = common::get(s.http, "/v2/models/identity_ort/traffic").json();
    assert_eq!(t["rolled_back"], Value::Null, "{t}");
    assert_eq!(t["canary_percent"], 50.0, "{t}");
}

/// Error messages quote what a client gave briefly (a 100,000-character name used
/// to overflow gRPC's trailing metadata, so the client saw RESOURCE_EXHAUSTED), and
/// never say where the repository lives on the server's disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_quote_names_briefly_and_never_the_repository_path() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().canonicalize().unwrap();
    let root = repo.to_str().unwrap().to_string();
    for (model, file, config) in [
        ("m", &b"not read"[..], "max_batch = 2\n"),
        ("broken", &b"not a model"[..], ""),
    ] {
        std::fs::create_dir_all(repo.join(model).join("1")).unwrap();
        std::fs::write(repo.join(model).join("1/model.onnx"), file).unwrap();
        std::fs::write(repo.join(model).join("config.toml"), config).unwrap();
    }
    let s = common::start(&root, &["--model-control-mode", "explicit"]);
    let long = "x".repeat(100_000);
    let mut c = common::grpc_client(s.grpc).await;
    let e = c
        .model_metadata(ModelMetadataRequest {
            name: long.clone(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "{}",
        &e.message()[..200.min(e.message().len())]
    );
    assert!(
        e.message().len() < 300 && e.message().contains("100000 bytes"),
        "{}",
        e.message()
    );
    let mut r = request("", b"text");
    r.model_name = long.clone();
    let e = c.model_infer(r).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // The repository API: unknown, badly configured and broken models.
    let load = |m: &str| {
        common::http(
            s.http,
            "POST",
            &format!("/v2/repository/models/{m}/load"),
            &[],
            b"",
        )
    };
    for (model, status, says) in [
        ("nope", 404, "no model 'nope'"),
        ("m", 400, "m/config.toml"),
        ("broken", 400, "broken/1/model.onnx"),
    ] {
        let r = load(model);
        assert_eq!(r.status, status, "{model}: {}", r.error());
        assert!(r.error().contains(says), "{model}: {}", r.error());
        assert!(
            !r.error().contains(&root),
            "{model} tells the repository's path: {}",
            r.error()
        );
    }
    let index = common::http(s.http, "POST", "/v2/repository/index", &[], b"");
    let text = String::from_utf8_lossy(&index.body).to_string();
    assert!(
        text.contains("model.onnx") && !text.contains(&root),
        "{text}"
    );
}
