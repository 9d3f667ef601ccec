//! API keys, scopes, model lists, rate limits, key-file reloads and the audit
//! trail, on the real binary over REST and gRPC.

mod common;

use common::{http, HttpResponse, Server};
use kiln_grpc::pb::model_infer_request::InferInputTensor;
use kiln_grpc::pb::*;
use serde_json::json;
use tonic::Code;

fn sha256_hex(secret: &str) -> String {
    // The same digest the key file stores (`printf %s KEY | sha256sum`).
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(secret.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn key(id: &str, secret: &str, scopes: &str, extra: &str) -> String {
    format!(
        "[[key]]\nid = \"{id}\"\nsha256 = \"{}\"\nscopes = [{scopes}]\n{extra}\n\n",
        sha256_hex(secret)
    )
}

fn keys_v1() -> String {
    [
        key("app", "app-secret", "\"infer\"", "models = [\"mlp_*\"]"),
        key("ops", "ops-secret", "\"admin\", \"metrics\", \"infer\"", ""),
        key("slow", "slow-secret", "\"infer\"", "rate = 0.05\nburst = 2"),
    ]
    .concat()
}

fn start(keys: &std::path::Path) -> Server {
    common::start(
        "tests/models",
        &[
            "--api-keys",
            keys.to_str().unwrap(),
            "--model-control-mode",
            "explicit",
            "--load-model",
            "mlp_tiny,scale",
        ],
    )
}

fn call(port: u16, method: &str, path: &str, secret: Option<&str>, body: &str) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    if let Some(s) = secret {
        headers.push(("Authorization", format!("Bearer {s}")));
    }
    http(port, method, path, &headers, body.as_bytes())
}

fn mlp_body() -> String {
    let data: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
    json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": data}]})
        .to_string()
}

#[test]
fn rest_routes_need_the_right_key_scope_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, keys_v1()).unwrap();
    let srv = start(&keys);
    let p = srv.http;
    let infer = mlp_body();
    // (method, path, body, secret, status)
    let cases: &[(&str, &str, &str, Option<&str>, u16)] = &[
        ("GET", "/v2/health/live", "", None, 200),
        ("GET", "/v2/health/ready", "", Some("wrong"), 200),
        ("GET", "/v2", "", None, 401),
        ("GET", "/v2", "", Some("app-secret"), 200),
        ("GET", "/v2/models/mlp_tiny", "", None, 401),
        ("GET", "/v2/models/mlp_tiny", "", Some("wrong"), 401),
        ("GET", "/v2/models/mlp_tiny", "", Some("app-secret"), 200),
        (
            "GET",
            "/v2/models/mlp_tiny/ready",
            "",
            Some("app-secret"),
            200,
        ),
        (
            "GET",
            "/v2/models/mlp_tiny/versions/1/config",
            "",
            Some("app-secret"),
            200,
        ),
        ("GET", "/v2/models/scale", "", Some("app-secret"), 403),
        // Whether a model exists is not told to a key that may not see it.
        ("GET", "/v2/models/absent", "", Some("app-secret"), 403),
        ("GET", "/v2/models/absent", "", Some("ops-secret"), 404),
        ("POST", "/v2/models/mlp_tiny/infer", &infer, None, 401),
        (
            "POST",
            "/v2/models/mlp_tiny/infer",
            &infer,
            Some("app-secret"),
            200,
        ),
        (
            "POST",
            "/v2/models/mlp_tiny/versions/1/infer",
            &infer,
            Some("ops-secret"),
            200,
        ),
        ("POST", "/v2/repository/index", "", None, 401),
        ("POST", "/v2/repository/index", "", Some("app-secret"), 403),
        ("POST", "/v2/repository/index", "", Some("ops-secret"), 200),
        (
            "POST",
            "/v2/repository/models/mlp_tiny/unload",
            "",
            Some("app-secret"),
            403,
        ),
        (
            "GET",
            "/v2/models/mlp_tiny/traffic",
            "",
            Some("app-secret"),
            403,
        ),
        (
            "GET",
            "/v2/models/mlp_tiny/traffic",
            "",
            Some("ops-secret"),
            200,
        ),
        (
            "POST",
            "/v2/models/mlp_tiny/traffic",
            "{\"canary\": null}",
            Some("app-secret"),
            403,
        ),
        (
            "POST",
            "/v2/models/mlp_tiny/traffic",
            "{\"canary\": null}",
            Some("ops-secret"),
            200,
        ),
        ("GET", "/v2/models/stats", "", Some("app-secret"), 403),
        ("GET", "/v2/models/stats", "", Some("ops-secret"), 200),
        (
            "GET",
            "/v2/models/mlp_tiny/stats",
            "",
            Some("app-secret"),
            403,
        ),
        ("GET", "/metrics", "", None, 401),
        ("GET", "/metrics", "", Some("app-secret"), 403),
        ("GET", "/metrics", "", Some("ops-secret"), 200),
        (
            "POST",
            "/v2/repository/models/scale/unload",
            "",
            Some("ops-secret"),
            200,
        ),
        (
            "POST",
            "/v2/repository/models/scale/load",
            "",
            Some("ops-secret"),
            200,
        ),
    ];
    let mut unauthenticated = Vec::new();
    for &(method, path, body, secret, want) in cases {
        let r = call(p, method, path, secret, body);
        assert_eq!(
            r.status,
            want,
            "{method} {path} with {secret:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if want == 401 {
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            unauthenticated.push(r.error());
        }
        if want == 403 {
            assert!(!r.error().contains("secret"), "{}", r.error());
        }
    }
    // A missing and a wrong key read the same.
    assert!(
        unauthenticated.windows(2).all(|w| w[0] == w[1]),
        "{unauthenticated:?}"
    );

    // Every change is on the audit trail, with who, from where, before and after.
    let line = &srv.wait_for_lines(&["action=\"unload\" actor=\"ops\""])[0];
    for part in [
        "actor=\"ops\"",
        "source=\"127.0.0.1\"",
        "before=\"[1]\"",
        "after=\"[]\"",
        "outcome=\"ok\"",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
    let line = &srv.wait_for_lines(&["action=\"load\" actor=\"ops\""])[0];
    assert!(line.contains("before=\"[]\" after=\"[1]\""), "{line}");
    let metrics = call(p, "GET", "/metrics", Some("ops-secret"), "");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("kiln_audit_events_total{action=\"load\",outcome=\"ok\"}"),
        "{text}"
    );
    assert!(text.contains("kiln_auth_refused_total{reason=\"forbidden\"}"));
    assert!(!text.contains("app-secret") && !text.contains(&sha256_hex("app-secret")));
}

#[test]
fn reloads_revoke_keys_and_a_bad_file_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, keys_v1()).unwrap();
    let srv = start(&keys);
    assert!(!srv.startup_log.iter().any(|l| l.contains("app-secret")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The same key's answer over REST and over gRPC (one connection throughout:
    // a reload applies to connections already open).
    let mut grpc = rt.block_on(common::grpc_client(srv.grpc));
    let mut grpc_code = |secret: &str| {
        let meta = ModelMetadataRequest {
            name: "mlp_tiny".into(),
            version: String::new(),
        };
        code(rt.block_on(grpc.model_metadata(with_key(meta, Some(secret)))))
    };
    let mut status = |secret| {
        let rest = call(srv.http, "GET", "/v2/models/mlp_tiny", Some(secret), "").status;
        let expected = match rest {
            200 => Code::Ok,
            401 => Code::Unauthenticated,
            _ => Code::Unknown,
        };
        assert_eq!(grpc_code(secret), expected, "{secret} over gRPC");
        rest
    };
    assert_eq!((status("app-secret"), status("new-secret")), (200, 401));
    // Replaced as Kubernetes does it: a new file renamed over the old.
    let next = dir.path().join("keys.next");
    std::fs::write(&next, key("new", "new-secret", "\"infer\"", "")).unwrap();
    std::fs::rename(&next, &keys).unwrap();
    let line = &srv.wait_for_lines(&["action=\"keys_reload\""])[0];
    assert!(
        line.contains("before=\"app, ops, slow\" after=\"new\""),
        "{line}"
    );
    assert_eq!((status("app-secret"), status("new-secret")), (401, 200));
    // A file that no longer parses is refused: the keys in force stay.
    std::fs::write(&keys, "[[key]]\nid = \"new\"\nsha256 = 42\n").unwrap();
    let lines = srv.wait_for_lines(&["API keys not reloaded", "outcome=\"failed\""]);
    assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    assert!(lines[1].contains("action=\"keys_reload\""), "{}", lines[1]);
    assert_eq!((status("app-secret"), status("new-secret")), (401, 200));
}

/// A call's status code.
fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
}

fn with_key<T>(message: T, secret: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(s) = secret {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {s}").parse().unwrap());
    }
    r
}

fn mlp_request(model: &str) -> ModelInferRequest {
    let data: Vec<u8> = (0..16)
        .flat_map(|i| (i as f32 * 0.1).to_le_bytes())
        .collect();
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "FP32".into(),
            shape: vec![1, 16],
            ..Default::default()
        }],
        raw_input_contents: vec![data],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_methods_need_the_right_key_and_rates_are_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, keys_v1()).unwrap();
    let srv = start(&keys);
    let mut c = common::grpc_client(srv.grpc).await;
    assert_eq!(
        code(c.server_live(with_key(ServerLiveRequest {}, None)).await),
        Code::Ok
    );
    assert_eq!(
        code(c.server_ready(with_key(ServerReadyRequest {}, None)).await),
        Code::Ok
    );
    let meta = |name: &str| ModelMetadataRequest {
        name: name.into(),
        version: String::new(),
    };
    let unknown = c
        .model_metadata(with_key(meta("mlp_tiny"), None))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    let wrong = c
        .model_metadata(with_key(meta("mlp_tiny"), Some("nope")))
        .await
        .unwrap_err();
    assert_eq!(
        (wrong.code(), wrong.message()),
        (Code::Unauthenticated, unknown.message())
    );
    assert_eq!(
        code(
            c.model_metadata(with_key(meta("mlp_tiny"), Some("app-secret")))
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            c.model_metadata(with_key(meta("scale"), Some("app-secret")))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            c.model_infer(with_key(mlp_request("mlp_tiny"), Some("app-secret")))
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(c.model_infer(with_key(mlp_request("mlp_tiny"), None)).await),
        Code::Unauthenticated
    );
    let index = || RepositoryIndexRequest {
        repository_name: String::new(),
        ready: false,
    };
    assert_eq!(
        code(
            c.repository_index(with_key(index(), Some("app-secret")))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            c.repository_index(with_key(index(), Some("ops-secret")))
                .await
        ),
        Code::Ok
    );
    let unload = RepositoryModelUnloadRequest {
        model_name: "scale".into(),
        ..Default::default()
    };
    assert_eq!(
        code(
            c.repository_model_unload(with_key(unload, Some("app-secret")))
                .await
        ),
        Code::PermissionDenied
    );
    let stats = ModelStatisticsRequest {
        name: String::new(),
        version: String::new(),
    };
    assert_eq!(
        code(
            c.model_statistics(with_key(stats, Some("app-secret")))
                .await
        ),
        Code::PermissionDenied
    );

    // "slow" may make 2 requests at once, then one every 20 s, over both
    // protocols; "app" is not affected.
    let slow = |model: &str| with_key(mlp_request(model), Some("slow-secret"));
    assert_eq!(code(c.model_infer(slow("mlp_tiny")).await), Code::Ok);
    let r = call(
        srv.http,
        "POST",
        "/v2/models/mlp_tiny/infer",
        Some("slow-secret"),
        &mlp_body(),
    );
    assert_eq!(r.status, 200);
    let r = call(
        srv.http,
        "POST",
        "/v2/models/mlp_tiny/infer",
        Some("slow-secret"),
        &mlp_body(),
    );
    assert_eq!(r.status, 429, "{}", r.error());
    let after: u32 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&after), "{after}");
    let limited = c.model_infer(slow("mlp_tiny")).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert!(
        limited.metadata().get("retry-after").is_some(),
        "{limited:?}"
    );
    for _ in 0..20 {
        assert_eq!(
            code(
                c.model_infer(with_key(mlp_request("mlp_tiny"), Some("app-secret")))
                    .await
            ),
            Code::Ok
        );
    }
    // A limited request never reached the queue: the model counted only those let through.
    let stats = ModelStatisticsRequest {
        name: "mlp_tiny".into(),
        version: String::new(),
    };
    let s = c
        .model_statistics(with_key(stats, Some("ops-secret")))
        .await
        .unwrap()
        .into_inner();
    let count = s.model_stats[0].inference_count;
    assert_eq!(count, 1 + 1 + 1 + 20, "app 1 + slow 2 + app 20");
    let metrics = call(srv.http, "GET", "/metrics", Some("ops-secret"), "");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("kiln_rate_limited_total{key=\"slow\",model=\"mlp_tiny\"} 2"),
        "{text}"
    );
}
