//! Dynamic batching, backpressure, timeouts, cancellation and statistics, driven
//! over HTTP and gRPC against the real binary.
//!
//! Models (tests/models, made by scripts/make_models.py):
//! - `scale`: Y = 2X + 1 on [batch, n], max_queue_delay_us 2000, 2 instances;
//! - `slow`: about 6 ms per row on one thread, batching off, max_queue_size 2
//!   (a 256-row request keeps its one instance busy for 0.25-1.6 s, by machine);
//! - `gather`: fails in the runtime when an index is out of range.

mod common;

use common::{get, grpc_client, http, post_json, start};
use kiln_grpc::pb::model_infer_request::InferInputTensor;
use kiln_grpc::pb::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tonic::Code;

/// A distinct input for (client, request): rows x width values no other request has.
fn distinct(client: usize, i: usize, rows: usize, width: usize) -> Vec<f32> {
    (0..rows * width)
        .map(|k| (client * 100_000 + i * 100 + k) as f32 * 0.25)
        .collect()
}

fn scale_body(x: &[f32], rows: usize, width: usize) -> Value {
    json!({"inputs": [{"name": "X", "shape": [rows, width], "datatype": "FP32", "data": x}]})
}

fn stats(port: u16, model: &str) -> Value {
    let r = get(port, &format!("/v2/models/{model}/stats"));
    assert_eq!(r.status, 200);
    r.json()["model_stats"][0].clone()
}

fn metric(port: u16, needle: &str) -> f64 {
    let text = String::from_utf8(get(port, "/metrics").body).unwrap();
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{needle} not in\n{text}"))
}

fn slow_body(rows: usize) -> Value {
    let x: Vec<f32> = (0..rows * 512).map(|k| (k % 7) as f32 * 0.1).collect();
    json!({"inputs": [{"name": "X", "shape": [rows, 512], "datatype": "FP32", "data": x}]})
}

/// Rows of the blocker: enough that it outlasts the waits of the tests that
/// queue behind it (up to about 100 ms) on a fast CPU too, where 64 rows take
/// only about 60 ms.
const BLOCKER_ROWS: usize = 256;

/// Starts a request that keeps `slow`'s only instance busy for a while.
fn blocker(port: u16, rows: usize) -> std::thread::JoinHandle<u16> {
    let h = std::thread::spawn(move || {
        post_json(port, "/v2/models/slow/infer", &slow_body(rows)).status
    });
    // Until the instance has taken it: the queue is empty again and it is in flight.
    let t0 = Instant::now();
    while metric(port, "kiln_inflight_requests{model=\"slow\"") < 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(20));
    h
}

#[test]
fn concurrent_http_clients_each_get_their_own_rows() {
    let s = start("tests/models", &[]);
    let port = s.http;
    let clients = 16;
    let per_client = 25;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let mut rows_sent = 0;
                for i in 0..per_client {
                    let rows = 1 + (c + i) % 3;
                    // Two widths: requests of different widths may not share a batch.
                    let width = if (c + i) % 2 == 0 { 3 } else { 5 };
                    let x = distinct(c, i, rows, width);
                    let r = post_json(port, "/v2/models/scale/infer", &scale_body(&x, rows, width));
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    let out = &r.json()["outputs"][0];
                    assert_eq!(out["shape"], json!([rows, width]));
                    let got: Vec<f64> = out["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect();
                    let want: Vec<f64> = x.iter().map(|&v| 2.0 * v as f64 + 1.0).collect();
                    assert_eq!(got, want, "client {c} request {i} got someone else's rows");
                    rows_sent += rows;
                }
                rows_sent
            })
        })
        .collect();
    let rows: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let st = stats(port, "scale");
    assert_eq!(st["inference_count"], json!(rows));
    assert_eq!(
        st["inference_stats"]["success"]["count"],
        json!(clients * per_client)
    );
    let executions = st["execution_count"].as_u64().unwrap();
    assert!(
        executions < (clients * per_client) as u64,
        "no request was batched: {executions} executions"
    );
    // Batch statistics add up to the rows inferred.
    let batched: u64 = st["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batch_size"].as_u64().unwrap() * b["compute_infer"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(batched, rows as u64);
    assert!(
        metric(
            port,
            "kiln_batch_size_count{model=\"scale\",version=\"1\",device=\"cpu\"}"
        ) == executions as f64
    );
    assert_eq!(
        metric(
            port,
            "kiln_inferences_total{model=\"scale\",version=\"1\",device=\"cpu\"}"
        ),
        rows as f64
    );
}

fn grpc_request(model: &str, x: &[f32], shape: Vec<i64>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "X".into(),
            datatype: "FP32".into(),
            shape,
            ..Default::default()
        }],
        raw_input_contents: vec![x.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grpc_clients_each_get_their_own_rows() {
    let s = start("tests/models", &[]);
    let port = s.grpc;
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = grpc_client(port).await;
                for i in 0..25 {
                    let rows = 1 + (c + i) % 4;
                    let width = if (c + i) % 3 == 0 { 2 } else { 6 };
                    let x = distinct(c, i, rows, width);
                    let r = client
                        .model_infer(grpc_request("scale", &x, vec![rows as i64, width as i64]))
                        .await
                        .expect("infer")
                        .into_inner();
                    assert_eq!(r.outputs[0].shape, vec![rows as i64, width as i64]);
                    let got: Vec<f32> = r.raw_output_contents[0]
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    let want: Vec<f32> = x.iter().map(|&v| 2.0 * v + 1.0).collect();
                    assert_eq!(got, want, "client {c} request {i} got someone else's rows");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut client = grpc_client(port).await;
    let st = client
        .model_statistics(ModelStatisticsRequest {
            name: "scale".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let m = &st.model_stats[0];
    assert_eq!((m.name.as_str(), m.version.as_str()), ("scale", "1"));
    let inf = m.inference_stats.as_ref().unwrap();
    assert_eq!(inf.success.as_ref().unwrap().count, 16 * 25);
    assert!(
        m.execution_count < 16 * 25,
        "{} executions",
        m.execution_count
    );
    assert!(!m.batch_stats.is_empty());
    // Config reports the batching it does.
    let cfg = client
        .model_config(ModelConfigRequest {
            name: "scale".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(cfg.instance_group[0].count, 2);
    match cfg.scheduling_choice {
        Some(model_config::SchedulingChoice::DynamicBatching(d)) => {
            assert_eq!(d.max_queue_delay_microseconds, 2000)
        }
        other => panic!("no dynamic_batching in config: {other:?}"),
    }
}

#[test]
fn full_queue_rejects_at_once_over_http() {
    let s = start("tests/models", &[]);
    let port = s.http;
    let b = blocker(port, BLOCKER_ROWS);
    // The instance is busy; 2 requests fit in the queue, the rest must be refused.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let r = post_json(port, "/v2/models/slow/infer", &slow_body(1));
                (r.status, r.body, t0.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(b.join().unwrap(), 200);
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let full: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(ok + full.len(), 8, "only 200 and 503 expected");
    assert!((1..=2).contains(&ok), "{ok} accepted with a queue of 2");
    for (_, body, _) in &full {
        let e: Value = serde_json::from_slice(body).unwrap();
        assert!(
            e["error"].as_str().unwrap().contains("queue is full"),
            "{e}"
        );
    }
    let rejected = metric(
        port,
        "kiln_requests_total{model=\"slow\",version=\"1\",device=\"cpu\",outcome=\"rejected\"}",
    );
    assert_eq!(rejected, full.len() as f64);
    // Nothing accepted was lost, and the version still serves.
    assert_eq!(
        post_json(port, "/v2/models/slow/infer", &slow_body(1)).status,
        200
    );
}

#[test]
fn queued_requests_time_out_or_leave_without_being_computed() {
    let s = start("tests/models", &[]);
    let port = s.http;
    let before = stats(port, "slow")["execution_count"].as_u64().unwrap();
    let b = blocker(port, BLOCKER_ROWS);
    // Triton's `timeout` parameter, in microseconds.
    let mut body = slow_body(1);
    body["parameters"] = json!({"timeout": 20_000});
    let t0 = Instant::now();
    let r = post_json(port, "/v2/models/slow/infer", &body);
    let waited = t0.elapsed();
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    let e = r.error();
    assert!(
        e.contains("slow:1") && (e.contains("timed out") || e.contains("deadline")),
        "{e}"
    );
    assert!(
        waited < Duration::from_millis(300),
        "answered after {waited:?}"
    );
    // A client that hangs up while queued.
    let raw = slow_body(2).to_string();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::Write;
    write!(
        sock,
        "POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{raw}",
        raw.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    drop(sock);
    assert_eq!(b.join().unwrap(), 200);
    // Give the server a moment to notice the hang-up; nothing else runs after the blocker.
    std::thread::sleep(Duration::from_millis(300));
    let st = stats(port, "slow");
    assert_eq!(
        st["execution_count"].as_u64().unwrap(),
        before + 1,
        "only the blocker was computed: {st}"
    );
    assert_eq!(st["inference_stats"]["fail"]["count"], json!(2));
    let outcome = |o: &str| {
        metric(
            port,
            &format!("kiln_requests_total{{model=\"slow\",version=\"1\",device=\"cpu\",outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(outcome("timeout"), 1.0);
    assert_eq!(outcome("cancelled"), 1.0);
    assert_eq!(
        metric(
            port,
            "kiln_queue_depth{model=\"slow\",version=\"1\",device=\"cpu\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(
            port,
            "kiln_inflight_requests{model=\"slow\",version=\"1\",device=\"cpu\"}"
        ),
        0.0
    );
    // A malformed timeout is the client's error.
    let mut body = slow_body(1);
    body["parameters"] = json!({"timeout": "soon"});
    let r = post_json(port, "/v2/models/slow/infer", &body);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("timeout"), "{}", r.error());
}

/// Sends one ModelInfer call with a `grpc-timeout` header over plain HTTP/2 and
/// returns the grpc-status and grpc-message the server answered.
async fn raw_grpc_infer(port: u16, req: ModelInferRequest, timeout: &str) -> (i32, String) {
    use prost::Message;
    let (code, message) = common::raw_grpc_call(
        port,
        "ModelInfer",
        &req.encode_to_vec(),
        &[("grpc-timeout", timeout)],
    )
    .await;
    (code as i32, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_deadlines_queue_limits_and_cancellation() {
    let s = start("tests/models", &[]);
    let http_port = s.http;
    let before = tokio::task::spawn_blocking(move || stats(http_port, "slow"))
        .await
        .unwrap()["execution_count"]
        .as_u64()
        .unwrap();
    let b = tokio::task::spawn_blocking(move || blocker(http_port, BLOCKER_ROWS).join().unwrap());
    // Wait until the blocker occupies the instance (a busy machine may be slow to send it).
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        while metric(
            http_port,
            "kiln_inflight_requests{model=\"slow\",version=\"1\",device=\"cpu\"}",
        ) < 1.0
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the blocker never arrived"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let x = vec![0.1f32; 512];
    let mut client = grpc_client(s.grpc).await;
    // A gRPC deadline shorter than the wait, sent by a bare HTTP/2 client so that the
    // answer comes from the server rather than from a client-side timer.
    let (code, message) =
        raw_grpc_infer(s.grpc, grpc_request("slow", &x, vec![1, 512]), "20m").await;
    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("slow:1"), "{message}");
    // Triton's timeout parameter over gRPC.
    let mut r = grpc_request("slow", &x, vec![1, 512]);
    r.parameters.insert(
        "timeout".into(),
        InferParameter {
            parameter_choice: Some(infer_parameter::ParameterChoice::Int64Param(10_000)),
        },
    );
    let e = client.model_infer(r).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    // A call the client abandons while it is queued.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(20),
        client.model_infer(grpc_request("slow", &x, vec![1, 512])),
    )
    .await;
    assert!(abandoned.is_err(), "the call should still have been queued");
    // Fill the queue (2) and see the next calls refused.
    let fillers: Vec<_> = (0..6)
        .map(|_| {
            let mut c = client.clone();
            let x = x.clone();
            tokio::spawn(async move { c.model_infer(grpc_request("slow", &x, vec![1, 512])).await })
        })
        .collect();
    let mut unavailable = 0;
    let mut ok = 0;
    for f in fillers {
        match f.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(e.message().contains("queue is full"), "{e:?}");
                unavailable += 1;
            }
        }
    }
    assert_eq!(b.await.unwrap(), 200);
    assert!(
        unavailable >= 4 && ok <= 2,
        "ok {ok}, unavailable {unavailable}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = tokio::task::spawn_blocking(move || stats(http_port, "slow"))
        .await
        .unwrap();
    // The blocker and the accepted fillers ran; the timed-out and abandoned calls did not.
    assert_eq!(
        st["execution_count"].as_u64().unwrap(),
        before + 1 + ok as u64,
        "{st}"
    );
}

#[test]
fn a_failing_request_fails_alone_and_the_version_keeps_serving() {
    let s = start("tests/models", &[]);
    let port = s.http;
    let body = |idx: i64| {
        json!({"inputs": [
            {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]},
            {"name": "IDX", "shape": [1, 1], "datatype": "INT64", "data": [idx]},
        ]})
    };
    let r = post_json(port, "/v2/models/gather/infer", &body(9));
    assert_eq!(r.status, 500);
    assert!(r.error().contains("gather:1"), "{}", r.error());
    assert!(r.error().contains("GatherElements"), "{}", r.error());
    // Good and bad requests at once: every good one that was not batched with a bad
    // one succeeds with its own value, every bad one fails.
    let threads: Vec<_> = (0..24)
        .map(|i| {
            std::thread::spawn(move || {
                let idx = if i % 6 == 5 { 40 } else { i % 4 };
                let r = post_json(port, "/v2/models/gather/infer", &body(idx));
                (idx, r.status, r.body)
            })
        })
        .collect();
    for t in threads {
        let (idx, status, raw) = t.join().unwrap();
        if idx >= 4 {
            assert_eq!(status, 500);
        } else if status == 200 {
            let v: Value = serde_json::from_slice(&raw).unwrap();
            assert_eq!(v["outputs"][0]["data"], json!([(idx + 1) as f64]));
        } else {
            assert_eq!(status, 500, "{}", String::from_utf8_lossy(&raw));
        }
    }
    let r = post_json(port, "/v2/models/gather/infer", &body(2));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["outputs"][0]["data"], json!([3.0]));
    assert!(
        metric(
            port,
            "kiln_requests_total{model=\"gather\",version=\"1\",device=\"cpu\",outcome=\"error\"}"
        ) >= 5.0
    );
}

#[test]
fn statistics_extension_is_advertised_and_complete() {
    let s = start("tests/models", &[]);
    let port = s.http;
    let exts = get(port, "/v2").json()["extensions"].clone();
    assert!(exts.as_array().unwrap().contains(&json!("statistics")));
    assert_eq!(
        post_json(
            port,
            "/v2/models/scale/infer",
            &scale_body(&[1.0, 2.0], 1, 2)
        )
        .status,
        200
    );
    let all = get(port, "/v2/models/stats").json();
    let names: Vec<&str> = all["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"scale") && names.contains(&"mlp_tiny"),
        "{names:?}"
    );
    let one = get(port, "/v2/models/scale/versions/1/stats").json();
    let m = &one["model_stats"][0];
    assert_eq!(m["version"], "1");
    assert!(m["last_inference"].as_u64().unwrap() > 0);
    assert_eq!(m["inference_count"], 1);
    for k in [
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    ] {
        let d = &m["inference_stats"][k];
        assert!(d["count"].is_u64() && d["ns"].is_u64(), "{k}: {d}");
    }
    assert!(m["inference_stats"]["success"]["ns"].as_u64().unwrap() > 0);
    assert_eq!(get(port, "/v2/models/nope/stats").status, 404);
    assert_eq!(get(port, "/v2/models/scale/versions/7/stats").status, 404);
    let r = http(port, "POST", "/v2/models/scale/stats", &[], b"");
    assert_eq!(r.status, 405);
}
