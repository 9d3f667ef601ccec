//! Graceful shutdown of the real binary under load: on SIGTERM readiness goes
//! false at once, requests already admitted finish with their answers, new ones
//! are refused with 503 / UNAVAILABLE while the listeners are still open, and the
//! process exits 0 within its exit timeout. grpc.health.v1 says NOT_SERVING
//! for the server and its models while it drains.
//!
//! The model is `add_slow.onnx` (Y = X + 9, a few ms to tens of ms a request) on
//! one instance without batching, so that a queue of requests is in flight when
//! the signal arrives.

mod common;

use common::{get, post_json, repo_root, Server};
use kiln_grpc::pb::model_infer_request::InferInputTensor;
use kiln_grpc::pb::{ModelInferRequest, ServerReadyRequest};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const HTTP_CLIENTS: usize = 6;
const GRPC_CLIENTS: usize = 6;
const EXIT_TIMEOUT_SECS: u64 = 20;

fn slow_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("slow/1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::copy(
        repo_root().join("tests/fixtures/lifecycle/add_slow.onnx"),
        v1.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("slow/config.toml"),
        "dynamic_batching = false\ninstance_count = 1\n",
    )
    .unwrap();
    dir
}

/// Rows a request: about 50 ms of compute each, so the queue at the signal takes
/// a good fraction of a second to drain.
const ROWS: usize = 8;

fn x_of(i: u64) -> Vec<f32> {
    let b = (i % 1000) as f32;
    (0..ROWS * 4).map(|j| b + j as f32 * 0.25).collect()
}

fn http_body(x: &[f32]) -> serde_json::Value {
    json!({"inputs": [{"name": "X", "shape": [ROWS, 4], "datatype": "FP32", "data": x}]})
}

fn grpc_request(x: &[f32]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "slow".into(),
        inputs: vec![InferInputTensor {
            name: "X".into(),
            datatype: "FP32".into(),
            shape: vec![ROWS as i64, 4],
            ..Default::default()
        }],
        raw_input_contents: vec![x.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// What one client saw: answers (with the time each arrived, relative to the
/// signal when it came after it), refusals, and anything else (a failure).
#[derive(Default)]
struct Seen {
    ok_before: u64,
    ok_after: Vec<Duration>,
    refused: u64,
    /// Connections refused once the listeners had closed (after the drain).
    closed: u64,
    failures: Vec<String>,
}

/// The moment SIGTERM was sent, once it was.
type Signalled = Arc<Mutex<Option<Instant>>>;

fn after(sig: &Signalled) -> Option<Duration> {
    sig.lock().unwrap().map(|t| t.elapsed())
}

/// An HTTP client that sends one request after the other (one connection each)
/// until it is refused: a client that has seen the drain sends nothing more, so
/// it never races the listener closing.
fn http_client(port: u16, id: u64, sig: Signalled) -> Seen {
    let mut seen = Seen::default();
    for n in 0.. {
        let x = x_of(id * 10_000 + n);
        let r = match common::try_http(
            port,
            "POST",
            "/v2/models/slow/infer",
            &[("Content-Type", "application/json".into())],
            http_body(&x).to_string().as_bytes(),
        ) {
            Ok(r) => r,
            // Its next request raced the listener closing after the drain: refused,
            // or reset when the connection was still in the listener's accept
            // backlog as it closed (no server closes a listener without that race;
            // with axum::serve too, 2 runs in 15 on a busy machine). Either way the
            // server never took the request.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) && after(&sig).is_some() =>
            {
                seen.closed += 1;
                break;
            }
            Err(e) => {
                seen.failures.push(format!("HTTP connection: {e}"));
                break;
            }
        };
        match r.status {
            200 => {
                let y = r.json()["outputs"][0]["data"].clone();
                let y: Vec<f32> = serde_json::from_value(y).unwrap();
                if y.iter().zip(&x).any(|(y, x)| (y - x - 9.0).abs() > 1e-4) {
                    seen.failures.push(format!("wrong answer {x:?} -> {y:?}"));
                }
                match after(&sig) {
                    Some(d) => seen.ok_after.push(d),
                    None => seen.ok_before += 1,
                }
            }
            503 if r.error().contains("shutting down") => {
                seen.refused += 1;
                break;
            }
            s => {
                seen.failures
                    .push(format!("HTTP {s}: {}", String::from_utf8_lossy(&r.body)));
                break;
            }
        }
    }
    seen
}

async fn grpc_client(port: u16, id: u64, sig: Signalled) -> Seen {
    let mut c = common::grpc_client(port).await;
    let mut seen = Seen::default();
    for n in 0.. {
        let x = x_of(id * 10_000 + n);
        match c.model_infer(grpc_request(&x)).await {
            Ok(r) => {
                let y: Vec<f32> = r.into_inner().raw_output_contents[0]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                if y.iter().zip(&x).any(|(y, x)| (y - x - 9.0).abs() > 1e-4) {
                    seen.failures.push(format!("wrong answer {x:?} -> {y:?}"));
                }
                match after(&sig) {
                    Some(d) => seen.ok_after.push(d),
                    None => seen.ok_before += 1,
                }
            }
            Err(s) if s.code() == Code::Unavailable && s.message().contains("shutting down") => {
                seen.refused += 1;
                break;
            }
            // The client's next request raced the listener closing after the
            // drain: its connection was refused, or closed before the server
            // took the stream (HTTP/2 GOAWAY).
            Err(s)
                if matches!(s.code(), Code::Unavailable | Code::Cancelled)
                    && (s.message().contains("connect error")
                        || s.message().contains("canceled"))
                    && after(&sig).is_some() =>
            {
                seen.closed += 1;
                break;
            }
            Err(s) => {
                seen.failures.push(format!("gRPC {s:?}"));
                break;
            }
        }
    }
    seen
}

fn wait_exit(srv: &mut Server, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = srv.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn sigterm_under_load_drains_then_exits_zero() {
    let repo = slow_repo();
    let mut srv = common::start(
        repo.path().to_str().unwrap(),
        &["--exit-timeout-secs", &EXIT_TIMEOUT_SECS.to_string()],
    );
    let (http, grpc) = (srv.http, srv.grpc);
    assert_eq!(get(http, "/v2/health/ready").status, 200);
    let sig: Signalled = Arc::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let http_clients: Vec<_> = (0..HTTP_CLIENTS as u64)
        .map(|id| {
            let sig = sig.clone();
            std::thread::spawn(move || http_client(http, id, sig))
        })
        .collect();
    let grpc_clients: Vec<_> = (0..GRPC_CLIENTS as u64)
        .map(|id| rt.spawn(grpc_client(grpc, 100 + id, sig.clone())))
        .collect();

    // Load for a while, so that every client has a request queued or computing.
    std::thread::sleep(Duration::from_millis(1500));
    let in_flight_at_signal = metric_in_flight(http);
    let t0 = Instant::now();
    *sig.lock().unwrap() = Some(t0);
    srv.signal("TERM");

    // Readiness goes false at once, over REST and gRPC, while the listeners are
    // still open; liveness stays true; new inferences are refused.
    // (The signal is handled asynchronously: poll until it has been.)
    let ready = loop {
        let r = get(http, "/v2/health/ready");
        if r.status != 200 || t0.elapsed() > Duration::from_secs(5) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let ready_seen = t0.elapsed();
    assert_eq!(
        ready.status,
        400,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );
    assert_eq!(ready.json()["ready"], false);
    assert_eq!(get(http, "/v2/health/live").status, 200);
    let fresh = post_json(http, "/v2/models/slow/infer", &http_body(&x_of(0)));
    assert_eq!(fresh.status, 503);
    assert!(fresh.error().contains("shutting down"), "{}", fresh.error());
    let (grpc_ready, grpc_fresh, health) = rt.block_on(async {
        let mut c = common::grpc_client(grpc).await;
        let ready = c
            .server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready;
        let fresh = c.model_infer(grpc_request(&x_of(0))).await;
        // Kubernetes' gRPC probe asks grpc.health.v1, for the server and a model.
        let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut h = HealthClient::new(channel);
        let mut health = Vec::new();
        for service in ["", "slow"] {
            let r = h
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap();
            health.push(r.into_inner().status);
        }
        (ready, fresh, health)
    });
    assert!(!grpc_ready, "gRPC ServerReady must be false while draining");
    let not_serving = ServingStatus::NotServing as i32;
    assert_eq!(
        health,
        [not_serving, not_serving],
        "grpc.health.v1 while draining"
    );
    let e = grpc_fresh.expect_err("a new gRPC request must be refused");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // Every client ends: its admitted request answered, its next one refused.
    let mut all = Seen::default();
    let mut merge = |s: Seen| {
        all.ok_before += s.ok_before;
        all.ok_after.extend(s.ok_after);
        all.refused += s.refused;
        all.closed += s.closed;
        all.failures.extend(s.failures);
    };
    for c in http_clients {
        merge(c.join().unwrap());
    }
    for c in grpc_clients {
        merge(rt.block_on(c).unwrap());
    }

    let status = wait_exit(&mut srv, Duration::from_secs(EXIT_TIMEOUT_SECS + 5))
        .expect("kiln did not exit within its exit timeout");
    let exit_after = t0.elapsed();
    let last_ok = all.ok_after.iter().max().copied().unwrap_or_default();
    eprintln!(
        "in flight at SIGTERM (gauge): {in_flight_at_signal}; answered before: {}, \
         answered after SIGTERM: {} (last at {last_ok:?}); refused: {}, \
         then closed: {}; readiness false seen at {ready_seen:?}; exit {status} at {exit_after:?}",
        all.ok_before,
        all.ok_after.len(),
        all.refused,
        all.closed
    );
    assert!(all.failures.is_empty(), "failures: {:?}", all.failures);
    assert!(all.ok_before > 0, "no load before the signal");
    assert!(
        !all.ok_after.is_empty(),
        "no request was in flight at the signal, so nothing was drained"
    );
    assert!(
        ready_seen < last_ok,
        "readiness must go false while admitted requests are still finishing \
         (seen at {ready_seen:?}, last answer at {last_ok:?})"
    );
    // Each client ends refused: 503 / UNAVAILABLE while draining, or (a request
    // sent just as the last answer went out) its connection refused or reset afterwards.
    assert_eq!(
        (all.refused + all.closed) as usize,
        HTTP_CLIENTS + GRPC_CLIENTS,
        "every client must have been refused once the drain began"
    );
    assert!(all.refused > 0, "no client saw a refusal while draining");
    assert!(status.success(), "exit status {status}");
    assert!(exit_after < Duration::from_secs(EXIT_TIMEOUT_SECS));
    let log: Vec<String> = srv.log.try_iter().collect();
    assert!(
        log.iter()
            .any(|l| l.contains("requests in flight finished")),
        "{log:?}"
    );
}

/// The in-flight gauge summed over the model's series, read from /metrics.
fn metric_in_flight(port: u16) -> f64 {
    let text = String::from_utf8(get(port, "/metrics").body).unwrap();
    text.lines()
        .filter(|l| l.starts_with("kiln_inflight_requests"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn sigterm_when_idle_exits_at_once() {
    let repo = slow_repo();
    let mut srv = common::start(repo.path().to_str().unwrap(), &[]);
    let t0 = Instant::now();
    srv.signal("TERM");
    let status = wait_exit(&mut srv, Duration::from_secs(10)).expect("kiln did not exit when idle");
    assert!(status.success(), "exit status {status}");
    eprintln!("idle exit after {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(5));
}
