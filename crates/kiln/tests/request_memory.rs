//! Memory per request is bounded by its size, and the server-wide byte budget
//! refuses what would pass it.
//!
//! Before: one 60 MiB JSON body of zeros raised the server's peak RSS by about
//! 1.1 GiB (a `serde_json::Value` per element), and while it was parsed, on a
//! runtime worker, other connections waited seconds.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

/// A JSON inference body of about `bytes` bytes: `"0,"` repeated, for
/// mlp_tiny's FP32 INPUT0 with `rows` rows of 16.
fn zeros_body(bytes: usize, rows: Option<usize>) -> (Vec<u8>, usize) {
    let elements = bytes / 2;
    let rows = rows.unwrap_or(elements / 16);
    let mut body =
        format!(r#"{{"inputs":[{{"name":"INPUT0","shape":[{rows},16],"datatype":"FP32","data":["#)
            .into_bytes();
    body.reserve(elements * 2 + 8);
    for i in 0..elements {
        body.extend_from_slice(if i == 0 { b"0" } else { b",0" });
    }
    body.extend_from_slice(b"]}]}");
    (body, elements)
}

/// `kiln_request_bytes_held`, from /metrics.
fn held(port: u16) -> f64 {
    let text = String::from_utf8(common::get(port, "/metrics").body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("kiln_request_bytes_held "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn infer(port: u16, body: &[u8]) -> common::HttpResponse {
    common::http(
        port,
        "POST",
        "/v2/models/mlp_tiny/infer",
        &[("Content-Type", "application/json".into())],
        body,
    )
}

const SMALL: &[u8] =
    br#"{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}]}"#;

#[test]
fn a_large_json_body_costs_about_its_size_not_twenty_times_it() {
    let s = common::start("tests/models", &[]);
    assert_eq!(infer(s.http, SMALL).status, 200);
    let base = status_kib(s.pid(), "VmHWM:");
    let mib = 60 << 20;
    // Shapes that do not match the data: refused while decoding, early or late.
    let (more, _) = zeros_body(mib, Some(1));
    let r = infer(s.http, &more);
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("more than the 16 elements"),
        "{}",
        r.error()
    );
    let after_refused = status_kib(s.pid(), "VmHWM:");
    // A shape that matches: the whole tensor (4 bytes per 2-byte element) is
    // built, then refused by the model's batch limit.
    let (matching, elements) = zeros_body(mib, None);
    let r = infer(s.http, &matching);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let after_decoded = status_kib(s.pid(), "VmHWM:");
    let grew = |kib: u64| (kib.saturating_sub(base)) as f64 / 1024.0;
    let body_mib = matching.len() as f64 / (1 << 20) as f64;
    let tensor_mib = (elements * 4) as f64 / (1 << 20) as f64;
    eprintln!(
        "peak RSS growth: {:.0} MiB for a {body_mib:.0} MiB body refused early, {:.0} MiB for one decoded into a {tensor_mib:.0} MiB tensor",
        grew(after_refused),
        grew(after_decoded),
    );
    // The body once, the tensor once, and slack for the allocator and the
    // socket buffers; the old decoder needed about 1,100 MiB.
    assert!(
        grew(after_refused) < body_mib * 1.5 + 16.0,
        "{}",
        grew(after_refused)
    );
    assert!(
        grew(after_decoded) < body_mib * 1.5 + tensor_mib + 16.0,
        "{}",
        grew(after_decoded)
    );
}

#[test]
fn small_requests_flow_while_large_bodies_decode() {
    let s = common::start("tests/models", &[]);
    let port = s.http;
    let (big, _) = zeros_body(40 << 20, None);
    let big = std::sync::Arc::new(big);
    let started = Instant::now();
    // As many large bodies as the runtime has workers (one per core).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let bigs: Vec<_> = (0..cores)
        .map(|_| {
            let big = big.clone();
            std::thread::spawn(move || {
                let r = infer(port, &big);
                (r.status, started.elapsed())
            })
        })
        .collect();
    // Small requests, one after the other, until every large one is answered.
    let mut small = Vec::new();
    while bigs.iter().any(|b| !b.is_finished()) {
        let sent = started.elapsed();
        let r = infer(port, SMALL);
        assert_eq!(r.status, 200);
        small.push((sent, started.elapsed()));
    }
    let big_done: Vec<Duration> = bigs.into_iter().map(|b| b.join().unwrap().1).collect();
    let first_big = big_done.iter().min().copied().unwrap();
    let mut during: Vec<Duration> = small
        .iter()
        .filter(|(_, done)| *done < first_big)
        .map(|(sent, done)| *done - *sent)
        .collect();
    during.sort();
    let median = during.get(during.len() / 2).copied().unwrap_or(first_big);
    eprintln!(
        "{} small requests answered while {cores} large ones were read and decoded ({first_big:?}), in {median:?} (median)",
        during.len()
    );
    // Decoded on a worker, a large body holds it (and every connection it
    // serves) while it decodes: small requests then wait about 10 ms each
    // (measured with the decoder moved back onto the workers); on a blocking
    // thread they only share the CPU with it and take a fraction of that.
    assert!(
        median < first_big / 50,
        "small requests took {median:?} (median) while large ones took {first_big:?}"
    );
}

#[test]
fn the_byte_budget_refuses_while_spent_and_admits_again_once_freed() {
    let s = common::start("tests/models", &["--max-inflight-bytes", "1000000"]);
    // Alone larger than the budget: the client's problem, 413.
    let (huge, _) = zeros_body(1_200_000, Some(1));
    let r = infer(s.http, &huge);
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.error().contains("at most 1000000 bytes"), "{}", r.error());
    // A client that declares 800,000 bytes and sends none holds them.
    let mut holder = TcpStream::connect(("127.0.0.1", s.http)).unwrap();
    write!(
        holder,
        "POST /v2/models/mlp_tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 800000\r\n\r\n"
    )
    .unwrap();
    holder.flush().unwrap();
    // Once the server has read its headers, they are charged.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held(s.http) < 800_000.0 {
        assert!(Instant::now() < deadline, "the holder was never charged");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (medium, _) = zeros_body(300_000, Some(1));
    let r = infer(s.http, &medium);
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.error().contains("busy"), "{}", r.error());
    // Over gRPC too, as UNAVAILABLE.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let code = rt.block_on(async {
        let mut c = common::grpc_client(s.grpc).await;
        let req = kiln_grpc::pb::ModelInferRequest {
            model_name: "mlp_tiny".into(),
            inputs: vec![kiln_grpc::pb::model_infer_request::InferInputTensor {
                name: "INPUT0".into(),
                datatype: "FP32".into(),
                shape: vec![4000, 16],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0u8; 4000 * 16 * 4]],
            ..Default::default()
        };
        c.model_infer(req).await.unwrap_err().code()
    });
    assert_eq!(code, tonic::Code::Unavailable);
    // The holder leaves: its bytes are given back and the same request is admitted
    // (and refused by the decoder for its shape, not by the budget).
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(10);
    while held(s.http) > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the holder's bytes were never given back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = infer(s.http, &medium);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(infer(s.http, SMALL).status, 200);

    // A gRPC call whose message prefix declares 800,000 bytes, and which sends
    // ten of them, holds the same: tonic would buffer the whole message.
    let (send, stream) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.grpc))
            .await
            .unwrap();
        let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let head = http::Request::post(format!(
            "http://127.0.0.1:{}/inference.GRPCInferenceService/ModelInfer",
            s.grpc
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        let (_response, mut stream) = h2.send_request(head, false).unwrap();
        let mut start = vec![0u8];
        start.extend_from_slice(&800_000u32.to_be_bytes());
        start.extend_from_slice(&[0; 10]);
        stream.send_data(bytes::Bytes::from(start), false).unwrap();
        (h2, stream)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while held(s.http) < 800_000.0 {
        assert!(
            Instant::now() < deadline,
            "the gRPC holder was never charged"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = infer(s.http, &medium);
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    drop((send, stream));
    let deadline = Instant::now() + Duration::from_secs(10);
    while held(s.http) > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the gRPC holder's bytes were never given back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(infer(s.http, &medium).status, 400);
}

/// Resets the server's peak RSS (VmHWM), so each case below is measured alone.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs");
}

/// gRPC messages whose prost form was many times their size. Before: 60 MiB of
/// empty `inputs` entries (2 bytes each on the wire, ~300 in a struct) would
/// have taken ~9 GiB, and 60 MiB of one-byte BYTES elements (3 bytes each,
/// ~56 as a `Vec<u8>`) ~1.1 GiB.
#[test]
fn large_grpc_messages_cost_about_their_size() {
    let s = common::start("tests/models", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pid = s.pid();
    let mib = 60usize << 20;
    let body_mib = mib as f64 / (1 << 20) as f64;
    // The server's peak RSS growth while `call` runs, and what it returned.
    let peak_during = |call: &dyn Fn() -> tonic::Code| {
        reset_peak(pid);
        let base = status_kib(pid, "VmHWM:");
        let code = call();
        let grew = status_kib(pid, "VmHWM:").saturating_sub(base) as f64 / 1024.0;
        (code, grew)
    };
    // A typed request refused by the model after decoding (INPUT0 is FP32).
    let refused = |datatype: &str, n: usize, contents| {
        let req = kiln_grpc::pb::ModelInferRequest {
            model_name: "mlp_tiny".into(),
            inputs: vec![kiln_grpc::pb::model_infer_request::InferInputTensor {
                name: "INPUT0".into(),
                datatype: datatype.into(),
                shape: vec![n as i64],
                contents: Some(contents),
                ..Default::default()
            }],
            ..Default::default()
        };
        peak_during(&|| {
            rt.block_on(async {
                let mut c = common::grpc_client(s.grpc).await;
                c.model_infer(req.clone()).await.unwrap_err().code()
            })
        })
    };

    // Empty inputs entries: refused by the codec's count before prost sees them.
    let spam: Vec<u8> = [0x2a, 0x00].repeat(mib / 2);
    let (code, spam_grew) = peak_during(&|| {
        let (code, message) = rt.block_on(common::raw_grpc_call(s.grpc, "ModelInfer", &spam, &[]));
        assert!(message.contains("inputs has more than 1024"), "{message}");
        code
    });
    assert_eq!(code, tonic::Code::InvalidArgument);

    // One-byte BYTES elements: held flat, 5 bytes each, and that is the tensor.
    let elements = mib / 3;
    let contents = kiln_grpc::pb::InferTensorContents {
        bytes_contents: std::iter::repeat_n(b"x", elements).collect(),
        ..Default::default()
    };
    let (code, bytes_grew) = refused("BYTES", elements, contents);
    assert_eq!(code, tonic::Code::InvalidArgument);
    let bytes_tensor_mib = (elements * 5) as f64 / (1 << 20) as f64;

    // INT64 zeros, one byte each on the wire: prost's array (8 bytes each,
    // sized exactly) and the tensor it becomes.
    let elements = mib;
    let contents = kiln_grpc::pb::InferTensorContents {
        int64_contents: vec![0; elements],
        ..Default::default()
    };
    let (code, int_grew) = refused("INT64", elements, contents);
    assert_eq!(code, tonic::Code::InvalidArgument);
    let int_tensor_mib = (elements * 8) as f64 / (1 << 20) as f64;
    eprintln!(
        "peak RSS growth for {body_mib:.0} MiB gRPC messages: {spam_grew:.0} MiB of empty inputs (refused), \
         {bytes_grew:.0} MiB of 1-byte BYTES elements ({bytes_tensor_mib:.0} MiB tensor), \
         {int_grew:.0} MiB of INT64 zeros ({int_tensor_mib:.0} MiB tensor)"
    );
    // The message once (tonic's buffer), slack for h2's buffers and the
    // allocator; then the tensor, built flat (BYTES: with up to its size again
    // while it grows) or copied from prost's exactly sized array.
    assert!(spam_grew < body_mib * 1.5 + 16.0, "{spam_grew}");
    assert!(
        bytes_grew < body_mib * 1.5 + 2.0 * bytes_tensor_mib + 16.0,
        "{bytes_grew}"
    );
    assert!(
        int_grew < body_mib * 1.5 + 2.0 * int_tensor_mib + 16.0,
        "{int_grew}"
    );
}
