//! Drives the real binary over REST: health, metadata, config, index, JSON and
//! binary inference of every datatype, and every bad-input path.

mod common;

use common::*;
use serde_json::{json, Value};

fn mlp_input(batch: usize) -> Value {
    let data: Vec<f32> = (0..batch * 16)
        .map(|i| (i % 7) as f32 * 0.25 - 0.5)
        .collect();
    json!({"inputs": [{"name": "INPUT0", "shape": [batch, 16], "datatype": "FP32", "data": data}]})
}

/// A request's id: the body's `id`, else `x-request-id`, else a new one; echoed
/// in the answer's `id` and header, and in an error's body.
#[test]
fn request_ids_round_trip() {
    let s = start("tests/models", &[]);
    let infer = |body: &Value, id: Option<&str>| {
        let mut headers = vec![("Content-Type", "application/json".to_string())];
        headers.extend(id.map(|i| ("x-request-id", i.to_string())));
        http(
            s.http,
            "POST",
            "/v2/models/mlp_tiny/infer",
            &headers,
            body.to_string().as_bytes(),
        )
    };
    let mut with_id = mlp_input(1);
    with_id["id"] = json!("body-1");
    for (body, header, want) in [
        (&with_id, Some("header-1"), Some("body-1")),
        (&mlp_input(1), Some("header-2"), Some("header-2")),
        (&mlp_input(1), None, None),
    ] {
        let r = infer(body, header);
        assert_eq!(r.status, 200);
        let id = r.json()["id"].as_str().expect("an id").to_string();
        assert_eq!(r.header("x-request-id"), Some(id.as_str()));
        match want {
            Some(w) => assert_eq!(id, w),
            None => assert!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            ),
        }
    }
    let mut bad = mlp_input(1);
    bad["inputs"][0]["name"] = json!("NOPE");
    let r = infer(&bad, Some("header-3"));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["id"], "header-3", "{:?}", r.json());
    assert!(r.error().contains("no input 'NOPE'"));
    assert_eq!(r.header("x-request-id"), Some("header-3"));
    // Refused before the body is decoded: the header's id, else a new one.
    let r = http(s.http, "POST", "/v2/models/nope/infer", &[], b"{");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["id"].as_str(), r.header("x-request-id"));
}

#[test]
fn health_metadata_config_and_index() {
    let s = start("tests/models", &[]);
    assert_eq!(get(s.http, "/v2/health/live").json(), json!({"live": true}));
    // A model failed to load, so strict readiness says not ready; the others serve.
    let r = get(s.http, "/v2/health/ready");
    assert_eq!((r.status, r.json()), (400, json!({"ready": false})));
    let meta = get(s.http, "/v2").json();
    assert_eq!(meta["name"], "kiln");
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));

    let m = get(s.http, "/v2/models/mlp_tiny").json();
    assert_eq!(m["versions"], json!(["1"]));
    assert_eq!(
        m["inputs"],
        json!([{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}])
    );
    assert_eq!(m, get(s.http, "/v2/models/mlp_tiny/versions/1").json());

    let c = get(s.http, "/v2/models/mlp_tiny/config").json();
    assert_eq!(c["max_batch_size"], 32);
    assert_eq!(c["input"][0]["dims"], json!([16]));
    assert_eq!(c["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(c["output"][0]["name"], "OUTPUT0");
    // No batch dimension: dims are the full shape and max_batch_size is 0.
    let c = get(s.http, "/v2/models/add_fixed/config").json();
    assert_eq!(
        (c["max_batch_size"].clone(), c["input"][0]["dims"].clone()),
        (json!(0), json!([2, 3]))
    );

    assert_eq!(get(s.http, "/v2/models/mlp_tiny/ready").status, 200);
    assert_eq!(
        get(s.http, "/v2/models/mlp_tiny/versions/1/ready").status,
        200
    );
    assert_eq!(get(s.http, "/v2/models/broken/ready").status, 400);
    assert_eq!(get(s.http, "/v2/models/nope/ready").status, 404);

    let idx = http(s.http, "POST", "/v2/repository/index", &[], b"").json();
    let broken = idx
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "broken")
        .unwrap()
        .clone();
    assert_eq!(broken["state"], "UNAVAILABLE");
    assert!(
        broken["reason"].as_str().unwrap().contains("model.onnx"),
        "{broken}"
    );
    let ready = post_json(s.http, "/v2/repository/index", &json!({"ready": true})).json();
    assert!(ready
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["state"] == "READY"));
}

#[test]
fn json_and_binary_inference() {
    let s = start("tests/models", &[]);
    let r = post_json(s.http, "/v2/models/mlp_tiny/infer", &mlp_input(3));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Where its time went, for the client.
    server_timing(r.header("server-timing").expect("a Server-Timing header"));
    let v = r.json();
    assert_eq!(v["model_name"], "mlp_tiny");
    assert_eq!(v["model_version"], "1");
    let out = &v["outputs"][0];
    assert_eq!(out["shape"], json!([3, 4]));
    let probs: Vec<f64> = out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    for row in probs.chunks(4) {
        assert!(
            (row.iter().sum::<f64>() - 1.0).abs() < 1e-5,
            "softmax rows sum to 1: {row:?}"
        );
    }
    // Same request with binary input and binary output, version in the URL, and an id.
    let data: Vec<f32> = (0..3 * 16).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
    let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let header = json!({"id": "req-7", "inputs": [{"name": "INPUT0", "shape": [3, 16], "datatype": "FP32",
        "parameters": {"binary_data_size": raw.len()}}], "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": true}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&raw);
    let r = http(
        s.http,
        "POST",
        "/v2/models/mlp_tiny/versions/1/infer",
        &[("Inference-Header-Content-Length", header.len().to_string())],
        &body,
    );
    assert_eq!(r.status, 200);
    let n: usize = r
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&r.body[..n]).unwrap();
    assert_eq!(head["id"], "req-7");
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 48);
    let bin: Vec<f32> = r.body[n..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for (a, b) in bin.iter().zip(&probs) {
        assert!((*a as f64 - b).abs() < 1e-6);
    }
}

#[test]
fn every_datatype_round_trips_over_json_and_binary() {
    let s = start("tests/models", &[]);
    let types: [(&str, Value); 12] = [
        ("BOOL", json!([true, false, true, true])),
        ("UINT8", json!([0, 1, 200, 255])),
        ("UINT16", json!([0, 1, 65535, 7])),
        ("UINT32", json!([0, 1, 4294967295u64, 7])),
        ("UINT64", json!([0, 1, 18446744073709551615u64, 7])),
        ("INT8", json!([-128, 1, 127, 0])),
        ("INT16", json!([-32768, 1, 32767, 0])),
        ("INT32", json!([-2147483648i64, 1, 2147483647, 0])),
        (
            "INT64",
            json!([-9223372036854775808i64, 1, 9223372036854775807i64, 0]),
        ),
        ("FP16", json!([0.5, -2.0, 1024.0, 0.0])),
        ("FP32", json!([0.1, -2.5, 3.0e10, 0.0])),
        ("FP64", json!([0.1, -2.5, 1.0e300, 0.0])),
    ];
    let inputs: Vec<Value> = types
        .iter()
        .map(|(t, d)| json!({"name": format!("IN_{t}"), "shape": [2, 2], "datatype": t, "data": d}))
        .collect();
    let r = post_json(
        s.http,
        "/v2/models/identity_types/infer",
        &json!({"inputs": inputs}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    for (t, d) in &types {
        let out = v["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == format!("OUT_{t}"))
            .unwrap();
        assert_eq!(out["datatype"], *t);
        assert_eq!(out["shape"], json!([2, 2]));
        assert_eq!(&out["data"], d, "{t}");
    }
    // Binary in, binary out: the bytes come back unchanged.
    let widths = [1, 1, 2, 4, 8, 1, 2, 4, 8, 2, 4, 8];
    let mut header_inputs = Vec::new();
    let mut tail = Vec::new();
    let mut expected = Vec::new();
    for ((t, _), w) in types.iter().zip(widths) {
        let bytes: Vec<u8> = (0..4 * w)
            .map(|i| {
                if *t == "BOOL" {
                    (i % 2) as u8
                } else {
                    (i * 37 % 251) as u8
                }
            })
            .collect();
        header_inputs.push(json!({"name": format!("IN_{t}"), "shape": [2, 2], "datatype": t, "parameters": {"binary_data_size": bytes.len()}}));
        tail.extend_from_slice(&bytes);
        expected.push(bytes);
    }
    let header =
        json!({"inputs": header_inputs, "parameters": {"binary_data_output": true}}).to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&tail);
    let r = http(
        s.http,
        "POST",
        "/v2/models/identity_types/infer",
        &[("Inference-Header-Content-Length", header.len().to_string())],
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let n: usize = r
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&r.body[..n]).unwrap();
    let mut at = n;
    for (o, (t, _)) in head["outputs"].as_array().unwrap().iter().zip(&types) {
        assert_eq!(o["name"], format!("OUT_{t}"));
        let size = o["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        let idx = types.iter().position(|(x, _)| x == t).unwrap();
        assert_eq!(&r.body[at..at + size], &expected[idx][..], "{t}");
        at += size;
    }
}

#[test]
fn bad_requests_get_clear_errors_and_the_server_stays_live() {
    let s = start("tests/models", &[]);
    let fp32 = |shape: Value, data: Value| json!({"inputs": [{"name": "INPUT0", "shape": shape, "datatype": "FP32", "data": data}]});
    let ones = |n: usize| json!(vec![1.0; n]);
    // (path, body, Inference-Header-Content-Length, status, what the error says)
    type Case<'a> = (&'a str, Vec<u8>, Option<usize>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("/v2/models/mlp_tiny/infer", json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 16]}]}).to_string().into_bytes(), None, 400, "datatype INT32, expected FP32"),
        ("/v2/models/mlp_tiny/infer", fp32(json!([1, 15]), ones(15)).to_string().into_bytes(), None, 400, "shape [1, 15], expected [-1, 16]"),
        ("/v2/models/mlp_tiny/infer", fp32(json!([1, 16]), ones(15)).to_string().into_bytes(), None, 400, "needs 16 elements"),
        ("/v2/models/mlp_tiny/infer", fp32(json!([33, 16]), ones(33 * 16)).to_string().into_bytes(), None, 400, "batch size 33"),
        ("/v2/models/mlp_tiny/infer", json!({"inputs": [{"name": "WRONG", "shape": [1, 16], "datatype": "FP32", "data": vec![1.0; 16]}]}).to_string().into_bytes(), None, 400, "no input 'WRONG'"),
        ("/v2/models/mlp_tiny/infer", json!({"inputs": []}).to_string().into_bytes(), None, 400, "input 'INPUT0' is missing"),
        ("/v2/models/mlp_tiny/infer", json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": vec![1.0; 16]}], "outputs": [{"name": "NOPE"}]}).to_string().into_bytes(), None, 400, "no output 'NOPE'"),
        ("/v2/models/nope/infer", fp32(json!([1, 16]), ones(16)).to_string().into_bytes(), None, 404, "unknown model 'nope'"),
        ("/v2/models/mlp_tiny/versions/9/infer", fp32(json!([1, 16]), ones(16)).to_string().into_bytes(), None, 404, "no version '9'"),
        ("/v2/models/mlp_tiny/versions/x/infer", fp32(json!([1, 16]), ones(16)).to_string().into_bytes(), None, 404, "no version 'x'"),
        ("/v2/models/broken/infer", fp32(json!([1, 16]), ones(16)).to_string().into_bytes(), None, 503, "no ready version"),
        ("/v2/models/mlp_tiny/infer", b"{\"inputs\": [".to_vec(), None, 400, "malformed"),
        ("/v2/models/mlp_tiny/infer", b"".to_vec(), None, 400, "malformed"),
        ("/v2/models/mlp_tiny/infer", fp32(json!([1, 16]), ones(16)).to_string().into_bytes(), Some(100_000), 400, "Inference-Header-Content-Length is 100000"),
        ("/v2/models/mlp_tiny/infer", json!({"inputs": [{"name": "INPUT0", "shape": [4611686018427387904i64, 4], "datatype": "FP32", "data": [1]}]}).to_string().into_bytes(), None, 400, "too many elements"),
        ("/v2/models/mlp_tiny/infer", json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP99", "data": [1]}]}).to_string().into_bytes(), None, 400, "unknown datatype 'FP99'"),
        ("/v2/models/add_fixed/infer", json!({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT32", "data": [1, 2, 3, 4, 5, 6]}, {"name": "y", "shape": [3, 2], "datatype": "INT32", "data": [1, 2, 3, 4, 5, 6]}]}).to_string().into_bytes(), None, 400, "input 'y' has shape [3, 2], expected [2, 3]"),
    ];
    for (path, body, header, status, want) in cases {
        let headers: Vec<(&str, String)> = header
            .map(|h| vec![("Inference-Header-Content-Length", h.to_string())])
            .unwrap_or_default();
        let r = http(s.http, "POST", path, &headers, &body);
        assert_eq!(
            r.status,
            status,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let e = r.error();
        assert!(
            e.to_lowercase().contains(&want.to_lowercase()),
            "{e:?} does not mention {want:?}"
        );
        assert_eq!(get(s.http, "/v2/health/live").status, 200);
    }
    // Truncated binary body: the tensor claims 64 bytes, 10 follow.
    let header = json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]}).to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&[0u8; 10]);
    let r = http(
        s.http,
        "POST",
        "/v2/models/mlp_tiny/infer",
        &[("Inference-Header-Content-Length", header.len().to_string())],
        &body,
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("only 10 bytes"), "{}", r.error());
    // Unknown endpoint and method.
    assert_eq!(get(s.http, "/v2/nothing").status, 404);
    assert_eq!(get(s.http, "/v2/models/mlp_tiny/infer").status, 405);
    // A good request still works afterwards.
    assert_eq!(
        post_json(s.http, "/v2/models/mlp_tiny/infer", &mlp_input(1)).status,
        200
    );
}

#[test]
fn oversize_bodies_are_refused_in_protocol_form() {
    let s = start("tests/models", &["--http-max-body-bytes", "1000"]);
    let r = post_json(s.http, "/v2/models/mlp_tiny/infer", &mlp_input(32));
    assert_eq!(r.status, 413);
    assert!(r.error().contains("exceeds 1000 bytes"));
    assert_eq!(
        post_json(s.http, "/v2/models/mlp_tiny/infer", &mlp_input(1)).status,
        200
    );
}

#[test]
fn metrics_count_requests_per_model_and_version() {
    let s = start("tests/models", &[]);
    for _ in 0..3 {
        assert_eq!(
            post_json(s.http, "/v2/models/mlp_tiny/infer", &mlp_input(1)).status,
            200
        );
    }
    assert_eq!(
        post_json(s.http, "/v2/models/mlp_tiny/infer", &json!({"inputs": []})).status,
        400
    );
    assert_eq!(
        post_json(s.http, "/v2/models/made_up_name/infer", &mlp_input(1)).status,
        404
    );
    let text = String::from_utf8(get(s.http, "/metrics").body).unwrap();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with(needle) || (l.contains(needle) && !l.starts_with('#')))
            .map(str::to_owned)
    };
    let ok = line(
        "kiln_requests_total{model=\"mlp_tiny\",version=\"1\",device=\"cpu\",outcome=\"success\"}",
    )
    .unwrap_or_else(|| panic!("{text}"));
    assert!(ok.ends_with(" 3"), "{ok}");
    let bad = line(
        "kiln_requests_total{model=\"mlp_tiny\",version=\"1\",device=\"cpu\",outcome=\"invalid\"}",
    )
    .unwrap();
    assert!(bad.ends_with(" 1"), "{bad}");
    assert!(
        text.contains("kiln_request_duration_seconds_bucket{model=\"mlp_tiny\",version=\"1\""),
        "histogram missing"
    );
    assert!(
        !text.contains("made_up_name"),
        "client-chosen names must not become labels"
    );
}
