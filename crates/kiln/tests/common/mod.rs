//! Starts the real `kiln` binary on free 127.0.0.1 ports and talks to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Server {
    child: Child,
    pub http: u16,
    pub grpc: u16,
    pub log: mpsc::Receiver<String>,
    /// What it logged up to "model repository loaded".
    #[allow(dead_code)]
    pub startup_log: Vec<String>,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`, ...) to the server process.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Reads the log (up to 10 s) until each of `needles` is in some line read,
    /// and returns those lines, one per needle; panics with what was read if not.
    pub fn wait_for_lines(&self, needles: &[&str]) -> Vec<String> {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let mut read = Vec::new();
        loop {
            let found: Option<Vec<String>> = needles
                .iter()
                .map(|n| read.iter().find(|l: &&String| l.contains(n)).cloned())
                .collect();
            if let Some(lines) = found {
                return lines;
            }
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => read.push(line),
                Err(_) => panic!("not all of {needles:#?} in the log: {read:#?}"),
            }
        }
    }

    /// The exit status, once the process has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait for kiln")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The source tree: `KILN_TEST_ROOT`, or where the tests were built (the GPU
/// machine runs test binaries built elsewhere, with both set).
pub fn repo_root() -> PathBuf {
    std::env::var_os("KILN_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The kiln binary: `KILN_TEST_BIN`, or the one cargo built beside the tests.
pub fn kiln_bin() -> PathBuf {
    std::env::var_os("KILN_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kiln")))
}

/// Starts kiln on `repo` (relative to the source root) with extra flags, and waits
/// until the repository is loaded.
pub fn start(repo: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(kiln_bin())
        .current_dir(repo_root())
        .args([
            "--model-repository",
            repo,
            "--http-address",
            "127.0.0.1",
            "--grpc-address",
            "127.0.0.1",
        ])
        .args(["--http-port", "0", "--grpc-port", "0"])
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("KILN_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start kiln");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Strip ANSI colour codes.
            let mut clean = String::new();
            let mut esc = false;
            for c in line.chars() {
                match (esc, c) {
                    (false, '\u{1b}') => esc = true,
                    (true, 'm') => esc = false,
                    (true, _) => {}
                    (false, c) => clean.push(c),
                }
            }
            if tx.send(clean).is_err() {
                break;
            }
        }
    });
    let (mut http, mut grpc) = (0, 0);
    let mut startup_log = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("kiln did not start in time");
        startup_log.push(line.clone());
        let port = |l: &str| {
            l.rsplit(':')
                .next()
                .and_then(|p| p.trim().parse::<u16>().ok())
                .unwrap_or(0)
        };
        if line.contains("HTTP listening on") {
            http = port(&line);
        } else if line.contains("gRPC listening on") {
            grpc = port(&line);
        } else if line.contains("model repository loaded") {
            break;
        }
    }
    assert!(http > 0 && grpc > 0, "ports not found in the log");
    Server {
        child,
        http,
        grpc,
        log: rx,
        startup_log,
    }
}

/// The durations (ms) of a `Server-Timing` value, by name, checked for the
/// three Kiln sends: queue, compute and total, total the largest.
pub fn server_timing(value: &str) -> std::collections::HashMap<String, f64> {
    let parts: std::collections::HashMap<String, f64> = value
        .split(',')
        .filter_map(|p| {
            let (name, dur) = p.trim().split_once(";dur=")?;
            Some((name.to_string(), dur.parse().ok()?))
        })
        .collect();
    assert_eq!(parts.len(), 3, "{value}");
    let total = parts["total"];
    assert!(
        total > 0.0 && parts["queue"] <= total && parts["compute"] <= total,
        "{value}"
    );
    parts
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {:?}", self.json()))
            .to_string()
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> HttpResponse {
    try_http(port, method, path, headers, body).expect("HTTP request")
}

/// [`http`], with connection errors (refused, reset) returned rather than panicking.
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    // Written while the answer is read: a server may answer early (413, 503)
    // and close while a large body is still on its way, and a client that
    // only reads once it has written all would see a broken pipe or a reset
    // instead of that answer.
    let mut writer = s.try_clone()?;
    let mut message = req.into_bytes();
    message.extend_from_slice(body);
    let wrote = std::thread::spawn(move || writer.write_all(&message));
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    let wrote = wrote
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("writer panicked")));
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        read?;
        wrote?;
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("no complete response head in {} bytes", raw.len()),
        ));
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
    out
}

pub fn get(port: u16, path: &str) -> HttpResponse {
    http(port, "GET", path, &[], b"")
}

pub fn post_json(port: u16, path: &str, body: &serde_json::Value) -> HttpResponse {
    http(
        port,
        "POST",
        path,
        &[("Content-Type", "application/json".into())],
        body.to_string().as_bytes(),
    )
}

/// A tonic client for Kiln's gRPC port.
pub async fn grpc_client(
    port: u16,
) -> kiln_grpc::GrpcInferenceServiceClient<tonic::transport::Channel> {
    kiln_grpc::GrpcInferenceServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect")
}

/// Sends one gRPC call of `method` (of the inference service) over plain HTTP/2,
/// with `message` as its one (unchecked) message, and returns the status the
/// server answered: the way to send what a generated client never would.
pub async fn raw_grpc_call(
    port: u16,
    method: &str,
    message: &[u8],
    headers: &[(&str, &str)],
) -> (tonic::Code, String) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut head = http::Request::post(format!(
        "http://127.0.0.1:{port}/inference.GRPCInferenceService/{method}"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    for (k, v) in headers {
        head = head.header(*k, *v);
    }
    let (response, mut send) = h2.send_request(head.body(()).unwrap(), false).unwrap();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    send.send_data(bytes::Bytes::from(framed), true).unwrap();
    let (parts, mut body) = response.await.unwrap().into_parts();
    // Trailers-only answers carry the status in the headers.
    let mut fields = parts.headers;
    if !fields.contains_key("grpc-status") {
        while let Some(chunk) = body.data().await {
            let _ = chunk.unwrap();
        }
        fields = body.trailers().await.unwrap().unwrap_or_default();
    }
    // tonic decodes grpc-status and the percent-encoded grpc-message.
    let status = tonic::Status::from_header_map(&fields).expect("a grpc-status");
    (status.code(), status.message().to_string())
}
