//! Slow and greedy clients: header and body read timeouts, idle connections,
//! the connection limit, gRPC's stream limit and idle timeout, and an accept
//! loop that backs off when descriptors run out.
//!
//! Before: the server closed none of 500 connections that trickled their
//! headers or bodies for 35 s, and once 1,124 of them used every descriptor the
//! gRPC accept loop spun a whole core retrying.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Reads until the server closes the connection (or `limit` passes); returns
/// what arrived and how long it took.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return (got, Some(start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (got, Some(start.elapsed())),
        }
    }
    (got, None)
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).unwrap()
}

#[test]
fn trickled_headers_and_idle_keep_alive_connections_are_closed() {
    let s = common::start("tests/models", &["--http-header-read-timeout-secs", "1"]);
    // Headers a byte at a time, for longer than the timeout.
    let mut c = connect(s.http);
    let trickle =
        b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
    let start = Instant::now();
    let mut closed = false;
    for b in trickle {
        if c.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, when) = read_until_closed(&mut c, Duration::from_secs(5));
    assert!(
        closed || when.is_some(),
        "a connection trickling its headers was never closed"
    );
    assert!(start.elapsed() < Duration::from_secs(8));
    // A keep-alive connection: answered, then closed once idle past the timeout.
    let mut c = connect(s.http);
    c.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let (got, when) = read_until_closed(&mut c, Duration::from_secs(5));
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{got:?}"
    );
    assert!(
        when.is_some(),
        "an idle keep-alive connection was never closed"
    );
}

#[test]
fn a_trickled_body_is_answered_408_and_its_bytes_given_back() {
    let s = common::start("tests/models", &["--http-body-read-timeout-secs", "1"]);
    let mut c = connect(s.http);
    c.write_all(
        b"POST /v2/models/mlp_tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"inputs\"",
    )
    .unwrap();
    let (got, when) = read_until_closed(&mut c, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("did not arrive within 1 s (9 of 1000 bytes did)"),
        "{text}"
    );
    assert!(when.is_some());
    let metrics = String::from_utf8(common::get(s.http, "/metrics").body).unwrap();
    assert!(metrics.contains("kiln_request_bytes_held 0\n"), "{metrics}");
}

/// Whether a GET on a fresh connection is answered within `wait`.
fn answered(port: u16, wait: Duration) -> bool {
    let mut c = connect(port);
    c.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (got, _) = read_until_closed(&mut c, wait);
    got.starts_with(b"HTTP/1.1 200")
}

#[test]
fn connections_over_the_limit_wait_until_one_closes() {
    let s = common::start("tests/models", &["--max-connections", "4"]);
    let held: Vec<TcpStream> = (0..4).map(|_| connect(s.http)).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !answered(s.http, Duration::from_millis(700)),
        "a fifth connection was served"
    );
    drop(held);
    assert!(answered(s.http, Duration::from_secs(5)));
    // gRPC: four silent connections fill it; a client connects once one closes.
    let held: Vec<TcpStream> = (0..4).map(|_| connect(s.grpc)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let live = |wait: Duration| {
        rt.block_on(async {
            tokio::time::timeout(wait, async {
                let mut c = common::grpc_client(s.grpc).await;
                c.server_live(kiln_grpc::pb::ServerLiveRequest {})
                    .await
                    .is_ok()
            })
            .await
            .unwrap_or(false)
        })
    };
    assert!(
        !live(Duration::from_millis(700)),
        "a fifth gRPC connection was served"
    );
    drop(held);
    assert!(live(Duration::from_secs(5)));
    assert!(s
        .startup_log
        .iter()
        .any(|l| l.contains("at most 4 connections per listener")));
}

#[test]
fn grpc_silent_connections_close_and_streams_per_connection_are_capped() {
    let s = common::start(
        "tests/models",
        &[
            "--grpc-idle-timeout-secs",
            "1",
            "--grpc-max-concurrent-streams",
            "3",
        ],
    );
    // A connection that never sends its HTTP/2 preface.
    let mut c = connect(s.grpc);
    let (_, when) = read_until_closed(&mut c, Duration::from_secs(6));
    assert!(when.is_some(), "a silent gRPC connection was never closed");
    // The server announces its stream limit in its SETTINGS.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let announced = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.grpc))
            .await
            .unwrap();
        let (mut h2, mut conn) = h2::client::handshake(tcp).await.unwrap();
        let head = http::Request::post(format!(
            "http://127.0.0.1:{}/inference.GRPCInferenceService/ServerLive",
            s.grpc
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        let (response, mut send) = h2.send_request(head, false).unwrap();
        send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .unwrap();
        let answer = tokio::select! {
            r = response => r.is_ok(),
            _ = &mut conn => false,
        };
        assert!(answer);
        conn.max_concurrent_send_streams()
    });
    assert_eq!(announced, 3);
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn accepting_backs_off_when_descriptors_run_out_and_recovers() {
    let s = common::start("tests/models", &["--max-connections", "5000"]);
    // The server raised its soft limit to the hard one at start, and says so.
    assert!(
        s.startup_log.iter().any(|l| l.contains("open-file limit:")),
        "{:?}",
        s.startup_log
    );
    let pid = s.pid().to_string();
    let ok = std::process::Command::new("prlimit")
        .args(["--nofile=96:96", "--pid", &pid])
        .status()
        .unwrap();
    assert!(ok.success());
    // More connections than descriptors, on both listeners.
    let mut held = Vec::new();
    for port in [s.http, s.grpc] {
        for _ in 0..120 {
            if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
                held.push(c);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    // Out of descriptors, the accept loops wait instead of spinning: over 2 s the
    // server uses a small part of one core (a spinning loop uses all of it).
    let ticks_per_s = 100; // USER_HZ on Linux
    let before = cpu_ticks(s.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(s.pid()) - before;
    eprintln!("CPU while out of descriptors: {used} ticks in 2 s");
    let log: Vec<String> = s.log.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("cannot accept connections")),
        "descriptors never ran out: {log:?}"
    );
    assert!(used < ticks_per_s / 2, "{used} ticks of CPU in 2 s");
    drop(held);
    // Descriptors free again: served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answered(s.http, Duration::from_secs(1)) {
        assert!(Instant::now() < deadline, "REST never recovered");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = common::grpc_client(s.grpc).await;
        c.server_live(kiln_grpc::pb::ServerLiveRequest {})
            .await
            .unwrap();
    });
}
