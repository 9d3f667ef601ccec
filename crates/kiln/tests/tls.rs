//! TLS and mutual TLS on the real binary, with certificates made here: REST
//! over HTTPS, plaintext and silent clients on a TLS port, client certificates
//! (verified, from another CA, expired) naming keys, and certificates rotated
//! under load.

mod common;

use common::Server;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A certificate authority of the tests.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate and its key (PEM) for `names` (server) or `cn` (client).
    fn issue(&self, names: &[&str], cn: &str, client: bool, expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 2, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting `ca`, with a client certificate when given.
fn client(ca: &Ca, cert: Option<&(String, String)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        None => b.with_no_client_auth(),
        Some((c, k)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    // Every connection a full handshake, which shows the certificate served.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// One HTTPS request on a new connection: the status and the certificate the
/// server presented.
fn https(
    port: u16,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
    key: Option<&str>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let conn = rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap())
        .map_err(std::io::Error::other)?;
    let sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\r\n"
    )?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let head = String::from_utf8_lossy(&raw);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let cert = tls.conn.peer_certificates().unwrap()[0].to_vec();
    Ok((status, cert))
}

fn start_tls(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--tls-cert".to_string(),
        dir.join("server.pem").display().to_string(),
        "--tls-key".to_string(),
        dir.join("server.key").display().to_string(),
        "--tls-handshake-timeout-secs".to_string(),
        "1".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::start("tests/models", &args)
}

fn server_files(dir: &Path, ca: &Ca) -> (String, String) {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"], "localhost", false, false);
    write(dir, "server.pem", &cert);
    write(dir, "server.key", &key);
    (cert, key)
}

/// Whether the server closes a connection that sends `bytes` (then nothing)
/// within `within`, and what it answered first.
fn closed_within(port: u16, bytes: &[u8], within: Duration) -> (bool, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let closed = match s.read_to_end(&mut got) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    (closed, got)
}

#[test]
fn https_serves_and_plaintext_or_silence_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Kiln test CA");
    server_files(dir.path(), &ca);
    let srv = start_tls(dir.path(), &[]);
    let trusting = client(&ca, None);
    assert_eq!(
        https(srv.http, &trusting, "/v2/health/live", None)
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        https(srv.http, &trusting, "/v2/models/mlp_tiny", None)
            .unwrap()
            .0,
        200
    );
    // A client that does not trust the CA fails its handshake.
    assert!(https(srv.http, &client(&Ca::new("other"), None), "/v2", None).is_err());
    // Plaintext HTTP on the TLS port is told so, plainly, and closed.
    let r = common::try_http(srv.http, "GET", "/v2/health/live", &[], b"").unwrap();
    assert_eq!(r.status, 400);
    assert!(r.error().contains("TLS"), "{}", r.error());
    // Plaintext HTTP/2 on the gRPC port (an h2c client) is closed at once.
    let started = Instant::now();
    let (closed, _) = closed_within(
        srv.grpc,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        closed && started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // A client that connects and says nothing is closed at the handshake timeout.
    let started = Instant::now();
    let (closed, _) = closed_within(srv.grpc, b"", Duration::from_secs(10));
    let waited = started.elapsed();
    assert!(
        closed && waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // The server still serves.
    assert_eq!(
        https(srv.http, &trusting, "/v2/health/live", None)
            .unwrap()
            .0,
        200
    );
}

#[test]
fn client_certificates_are_verified_and_name_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Kiln test CA");
    server_files(dir.path(), &ca);
    write(dir.path(), "ca.pem", &ca.pem);
    let keys = write(
        dir.path(),
        "keys.toml",
        "[[key]]\nid = \"loadtest\"\nsubject = \"CN=loadtest\"\nscopes = [\"infer\"]\n",
    );
    let ca_file = dir.path().join("ca.pem").display().to_string();
    let srv = start_tls(
        dir.path(),
        &[
            "--tls-client-ca",
            &ca_file,
            "--api-keys",
            keys.to_str().unwrap(),
        ],
    );
    let loadtest = ca.issue(&[], "loadtest", true, false);
    let with_cert = client(&ca, Some(&loadtest));
    assert_eq!(
        https(srv.http, &with_cert, "/v2/models/mlp_tiny", None)
            .unwrap()
            .0,
        200
    );
    // The subject names a key with the infer scope only.
    assert_eq!(
        https(srv.http, &with_cert, "/v2/models/stats", None)
            .unwrap()
            .0,
        403
    );
    // A verified certificate the key file does not name: no key.
    let stranger = client(&ca, Some(&ca.issue(&[], "stranger", true, false)));
    assert_eq!(
        https(srv.http, &stranger, "/v2/models/mlp_tiny", None)
            .unwrap()
            .0,
        401
    );
    // No certificate, one from another CA, an expired one: no handshake.
    let other = Ca::new("other CA");
    for (what, config) in [
        ("none", client(&ca, None)),
        (
            "another CA's",
            client(&ca, Some(&other.issue(&[], "loadtest", true, false))),
        ),
        (
            "expired",
            client(&ca, Some(&ca.issue(&[], "loadtest", true, true))),
        ),
    ] {
        assert!(
            https(srv.http, &config, "/v2/health/live", None).is_err(),
            "a client with {what} certificate got through"
        );
    }
}

#[test]
fn certificates_rotate_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Kiln test CA");
    let (old_cert, _) = server_files(dir.path(), &ca);
    let srv = start_tls(dir.path(), &[]);
    let old_der = CertificateDer::from_pem_slice(old_cert.as_bytes())
        .unwrap()
        .to_vec();
    let trusting = client(&ca, None);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (new_seen, port) = (Arc::new(AtomicBool::new(false)), srv.http);
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, ok, failed, config) =
                (stop.clone(), ok.clone(), failed.clone(), trusting.clone());
            let (old_der, new_seen) = (old_der.clone(), new_seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match https(port, &config, "/v2/health/live", None) {
                        Ok((200, cert)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if cert != old_der {
                                new_seen.store(true, Ordering::Relaxed);
                            }
                        }
                        Ok(_) | Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Rotated as cert-manager's files are: new files renamed over the old.
    let (new_cert, new_key) = ca.issue(&["localhost", "127.0.0.1"], "localhost", false, false);
    write(dir.path(), "next.pem", &new_cert);
    write(dir.path(), "next.key", &new_key);
    std::fs::rename(dir.path().join("next.key"), dir.path().join("server.key")).unwrap();
    std::fs::rename(dir.path().join("next.pem"), dir.path().join("server.pem")).unwrap();
    let reloaded = Instant::now() + Duration::from_secs(10);
    while !new_seen.load(Ordering::Relaxed) && Instant::now() < reloaded {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let log: Vec<String> = srv.log.try_iter().collect();
    assert!(
        new_seen.load(Ordering::Relaxed),
        "no connection saw the new certificate: {log:#?}"
    );
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok > 20, "only {ok} requests");
    let new_der = CertificateDer::from_pem_slice(new_cert.as_bytes())
        .unwrap()
        .to_vec();
    assert_eq!(
        https(port, &trusting, "/v2/health/live", None).unwrap().1,
        new_der
    );
    // A broken file later keeps the certificate in force.
    write(dir.path(), "server.pem", "not a certificate");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = log;
        let line = srv
            .log
            .recv_timeout(Duration::from_secs(10))
            .expect("a log line");
        if line.contains("TLS not reloaded") {
            break;
        }
        assert!(Instant::now() < end, "no reload error logged");
    }
    assert_eq!(
        https(port, &trusting, "/v2/health/live", None).unwrap().1,
        new_der
    );
}
