//! kiln-bench against the real kiln binary on the example models: closed loop
//! over gRPC and REST (JSON and binary), open loop on a Poisson schedule, a
//! request file, and a model that fails every request; each JSON report checked
//! for what it must hold.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// kiln, from the same target folder as this crate's binary (the workspace
/// build makes both); KILN_TEST_BIN overrides it.
fn kiln_bin() -> PathBuf {
    std::env::var_os("KILN_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_kiln-bench")).with_file_name("kiln"))
}

struct Kiln {
    child: Child,
    http: u16,
    grpc: u16,
}

impl Drop for Kiln {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_kiln() -> Kiln {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = kiln_bin();
    assert!(
        bin.exists(),
        "{} is not built (cargo build --release)",
        bin.display()
    );
    let mut child = Command::new(bin)
        .current_dir(&root)
        .args([
            "--model-repository",
            "models",
            "--http-address",
            "127.0.0.1",
        ])
        .args([
            "--grpc-address",
            "127.0.0.1",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
        ])
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start kiln");
    let stderr = child.stderr.take().expect("stderr");
    let (mut http, mut grpc) = (0, 0);
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref().map_while(Result::ok) {
        let port = || {
            line.rsplit(':')
                .next()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0)
        };
        if line.contains("HTTP listening on") {
            http = port();
        } else if line.contains("gRPC listening on") {
            grpc = port();
        } else if line.contains("model repository loaded") {
            break;
        }
    }
    // Keep reading, so that kiln never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    assert!(http > 0 && grpc > 0);
    Kiln { child, http, grpc }
}

/// Runs kiln-bench with `args`; its JSON report.
fn bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-bench"))
        .args(args)
        .args(["--progress", "false", "--warmup-secs", "0.2"])
        .arg("--report")
        .arg(&report)
        .output()
        .expect("run kiln-bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Throughput:") && text.contains("p99 latency:"),
        "{text}"
    );
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

/// `requests` requests to mlp_tiny over gRPC, each with the inputs of `request`
/// (a V2 JSON request), through `--input-data`.
fn bench_file(grpc: &str, request: &str, requests: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("request.json");
    std::fs::write(&file, request).unwrap();
    let path = file.to_str().unwrap();
    bench(&[
        "-u",
        grpc,
        "-m",
        "mlp_tiny",
        "--input-data",
        path,
        "--requests",
        requests,
    ])
}

fn assert_sane(r: &Value, requests: u64) {
    assert_eq!(r["requests"], requests, "{r:#}");
    assert_eq!(r["failed"], 0, "{r:#}");
    let l = &r["latency"];
    let q = |k: &str| l[k].as_u64().unwrap();
    assert!(q("p50_us") > 0 && q("p50_us") <= q("p90_us"), "{l}");
    assert!(
        q("p90_us") <= q("p99_us") && q("p99_us") <= q("p999_us") && q("p999_us") <= q("max_us"),
        "{l}"
    );
    assert!(r["throughput_per_sec"].as_f64().unwrap() > 0.0);
    assert!(r["client_cpu"]["us_per_request"].as_f64().unwrap() > 0.0);
}

#[test]
fn drives_kiln_over_grpc_and_rest_closed_and_open_loop() {
    let k = start_kiln();
    let pid = k.child.id().to_string();
    let grpc = format!("127.0.0.1:{}", k.grpc);
    let http = format!("127.0.0.1:{}", k.http);

    let r = bench(&[
        "-u",
        &grpc,
        "-m",
        "mlp_tiny",
        "--concurrency",
        "4",
        "--requests",
        "400",
        "--server-pid",
        &pid,
    ]);
    assert_sane(&r, 400);
    assert_eq!(r["protocol"], "grpc");
    assert!(
        r["server_cpu"]["us_per_request"].as_f64().unwrap() > 0.0,
        "{r:#}"
    );

    for binary in ["false", "true"] {
        let r = bench(&[
            "-u",
            &http,
            "-i",
            "http",
            "-m",
            "digits_mlp",
            "-b",
            "3",
            "--binary",
            binary,
            "--requests",
            "200",
        ]);
        assert_sane(&r, 200);
    }

    // Open loop: 400 requests at 800/s on a Poisson schedule, all sent and answered.
    let r = bench(&[
        "-u",
        &grpc,
        "-m",
        "cnn_small",
        "--rate",
        "800",
        "--poisson",
        "--requests",
        "400",
    ]);
    assert_sane(&r, 400);
    assert_eq!(r["not_sent"], 0);
    assert!(r["send_lag"]["max_us"].is_u64(), "{r:#}");
    let secs = r["seconds"].as_f64().unwrap();
    assert!(
        secs > 0.3,
        "400 requests at 800/s take about half a second, not {secs}"
    );

    // A request file (the tiny MLP's input, shape [1, 16]).
    let r = bench_file(
        &grpc,
        r#"{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16],
            "data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]]}]}"#,
        "50",
    );
    assert_sane(&r, 50);

    // Every request refused: counted by status, none as a success.
    let r = bench_file(
        &grpc,
        r#"{"inputs": [{"name": "NOPE", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}"#,
        "20",
    );
    assert_eq!(r["requests"], 0);
    assert_eq!(r["errors"]["grpc InvalidArgument"], 20, "{r:#}");
}
