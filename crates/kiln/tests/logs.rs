//! The log as a log pipeline reads it: JSON lines that parse, and text without
//! terminal escapes when stderr is not a terminal.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Kiln's stderr lines up to "model repository loaded", as written (raw bytes).
fn startup_lines(extra: &[&str]) -> Vec<Vec<u8>> {
    let mut child = Command::new(common::kiln_bin())
        .current_dir(common::repo_root())
        .args([
            "--model-repository",
            "tests/models",
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
        .args(extra)
        .env_remove("NO_COLOR")
        .env_remove("KILN_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start kiln");
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).unwrap() == 0 {
            break;
        }
        let done = String::from_utf8_lossy(&line).contains("model repository loaded");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines
            .iter()
            .any(|l| String::from_utf8_lossy(l).contains("model repository loaded")),
        "kiln did not start"
    );
    lines
}

#[test]
fn text_logs_have_no_escapes_off_a_terminal() {
    let lines = startup_lines(&[]);
    for l in &lines {
        assert!(!l.contains(&0x1b), "{}", String::from_utf8_lossy(l));
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let lines = startup_lines(&["--log-format", "json"]);
    assert!(lines.len() > 5, "{} lines", lines.len());
    for l in &lines {
        let v: serde_json::Value = serde_json::from_slice(l)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(l)));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(v[field].is_string(), "no {field} in {v}");
        }
    }
    // An event's fields are the object's own: the load of a model names it.
    let loaded: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .filter(|v: &serde_json::Value| v["message"] == "loaded")
        .collect();
    assert!(
        loaded
            .iter()
            .any(|v| v["model"] == "mlp_tiny" && v["level"] == "INFO"),
        "{loaded:#?}"
    );
}
