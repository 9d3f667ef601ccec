//! TLS for the REST and gRPC listeners: rustls server configurations built
//! from the certificate, key and (for mTLS) client-CA files, and swapped whole
//! when the files change. A handshake uses the configuration in force when it
//! starts, so connections already open keep theirs and nothing in flight is
//! dropped; a reload that fails (a half-written file, a key that does not
//! match) keeps the previous configuration.

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use x509_cert::der::Decode;

/// The files TLS is configured from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Verify client certificates against these CAs (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With a client CA: let clients without a certificate connect too (they
    /// then need a bearer key where keys are required).
    pub client_cert_optional: bool,
}

impl TlsFiles {
    /// The files whose change calls for a reload.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.cert.clone(), self.key.clone()];
        p.extend(self.client_ca.clone());
        p
    }
}

/// Which listener a configuration is for: they differ in the protocols they
/// offer by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Http,
    Grpc,
}

/// The configurations in force, and what they were built from.
pub struct Tls {
    files: TlsFiles,
    http: ArcSwap<ServerConfig>,
    grpc: ArcSwap<ServerConfig>,
    /// The files' contents when last built, to tell a change from a touch,
    /// and the certificate they served.
    current: Mutex<(Vec<Vec<u8>>, String)>,
}

/// What a (re)load read: the configurations and a line for the log.
struct Built {
    http: ServerConfig,
    grpc: ServerConfig,
    contents: Vec<Vec<u8>>,
    summary: String,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the TLS {what} {}", path.display()))
}

/// The files' contents: certificate, key, and client CA when there is one.
fn read_all(files: &TlsFiles) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut contents = vec![read(&files.cert, "certificate")?, read(&files.key, "key")?];
    if let Some(ca) = &files.client_ca {
        contents.push(read(ca, "client CA")?);
    }
    Ok(contents)
}

fn build(files: &TlsFiles, contents: Vec<Vec<u8>>) -> anyhow::Result<Built> {
    let (cert_pem, key_pem, ca_pem) = (&contents[0], &contents[1], contents.get(2));
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("the TLS certificate file is not PEM")?;
    let Some(leaf) = certs.first() else {
        bail!("the TLS certificate file holds no certificate");
    };
    let (summary, expired) = describe(leaf);
    if expired {
        tracing::warn!("the TLS {summary}: clients will refuse it");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .context("the TLS key file holds no PEM private key")?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("no TLS versions")?;
    let builder = match ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(ca.context("the client CA file is not PEM")?)
                    .context("a client CA certificate is invalid")?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if files.client_cert_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().context("the client CA file")?)
        }
    };
    let mut http = builder
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not make a usable pair")?;
    // The same configuration but for the protocols each listener offers.
    let mut grpc = http.clone();
    http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Built {
        http,
        grpc,
        contents,
        summary,
    })
}

/// The certificate's subject and expiry, for the log; whether it has expired.
fn describe(leaf: &CertificateDer<'_>) -> (String, bool) {
    match x509_cert::Certificate::from_der(leaf) {
        Ok(c) => {
            let tbs = &c.tbs_certificate;
            let until = tbs.validity.not_after.to_system_time();
            let left = until.duration_since(std::time::SystemTime::now());
            let text = format!(
                "certificate {} valid until {} ({})",
                tbs.subject,
                tbs.validity.not_after,
                left.as_ref()
                    .map(|d| format!("{} days left", d.as_secs() / 86_400))
                    .unwrap_or_else(|_| "EXPIRED".into())
            );
            (text, left.is_err())
        }
        Err(_) => ("certificate (not parsed)".into(), false),
    }
}

/// The subject of a verified client certificate, RFC 4514 style (`CN=…,O=…`):
/// what a key file's `subject` names.
pub fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    x509_cert::Certificate::from_der(cert)
        .ok()
        .map(|c| c.tbs_certificate.subject.to_string())
}

impl Tls {
    /// Reads the files; the server must not start on bad ones.
    pub fn load(files: TlsFiles) -> anyhow::Result<Tls> {
        let built = build(&files, read_all(&files)?)?;
        tracing::info!(
            "TLS on the REST and gRPC ports: {}{}",
            built.summary,
            match (&files.client_ca, files.client_cert_optional) {
                (None, _) => String::new(),
                (Some(ca), false) =>
                    format!("; client certificates required, from {}", ca.display()),
                (Some(ca), true) => format!(
                    "; client certificates verified when sent, from {}",
                    ca.display()
                ),
            }
        );
        Ok(Tls {
            files,
            http: ArcSwap::from_pointee(built.http),
            grpc: ArcSwap::from_pointee(built.grpc),
            current: Mutex::new((built.contents, built.summary)),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration a new handshake on `listener` uses.
    pub fn config(&self, listener: Listener) -> Arc<ServerConfig> {
        match listener {
            Listener::Http => self.http.load_full(),
            Listener::Grpc => self.grpc.load_full(),
        }
    }

    /// What is served now (for the log and the audit trail).
    pub fn serving(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Re-reads the files: `Ok(None)` when they are as they were, `Ok(Some(what
    /// is now served))` when new configurations are in force, an error (and the
    /// previous configurations kept) when they cannot be used.
    pub fn reload(&self) -> anyhow::Result<Option<String>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let contents = read_all(&self.files)?;
        if contents == current.0 {
            return Ok(None);
        }
        let built = build(&self.files, contents)?;
        self.http.store(Arc::new(built.http));
        self.grpc.store(Arc::new(built.grpc));
        *current = (built.contents, built.summary.clone());
        Ok(Some(built.summary))
    }
}
