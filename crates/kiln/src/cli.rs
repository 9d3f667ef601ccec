//! Command-line flags. Each has an environment variable (`KILN_…`); names follow
//! Triton's where Triton has one.

use clap::{Parser, ValueEnum};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: a model inference server speaking KServe V2 over REST and gRPC"
)]
pub struct Args {
    /// Model repository: <repo>/<model>/<version>/model.onnx, with an optional
    /// <repo>/<model>/config.toml. A local folder, or an object-storage URL:
    /// s3://bucket/prefix (also S3-compatible stores, see --storage-endpoint),
    /// gs://bucket/prefix, az://container/prefix; downloaded into --model-cache-dir.
    #[arg(long, env = "KILN_MODEL_REPOSITORY")]
    pub model_repository: kiln_storage::Location,

    /// The repository is one model's folder (KServe's /mnt/models), served under
    /// this name: its numeric version folders, or with none its files as version 1.
    #[arg(long, env = "KILN_MODEL_NAME", value_parser = model_name)]
    pub model_name: Option<String>,

    /// Object storage: the local folder versions are downloaded into (default:
    /// $TMPDIR/kiln-model-cache). Kept across restarts: an unchanged version is
    /// not downloaded again.
    #[arg(long, env = "KILN_MODEL_CACHE_DIR")]
    pub model_cache_dir: Option<PathBuf>,

    /// Object storage: bytes the model cache may hold; the least recently used
    /// versions are removed to make room, and a version larger than this fails.
    #[arg(long, env = "KILN_MODEL_CACHE_MAX_BYTES", default_value_t = 20 << 30)]
    pub model_cache_max_bytes: u64,

    /// Object storage: the store's URL, for S3-compatible stores (MinIO, Ceph:
    /// http://host:9000) and emulators; AWS_ENDPOINT_URL is read too.
    #[arg(long, env = "KILN_STORAGE_ENDPOINT")]
    pub storage_endpoint: Option<String>,

    /// Object storage: the region (else AWS_REGION, AWS_DEFAULT_REGION, us-east-1).
    #[arg(long, env = "KILN_STORAGE_REGION")]
    pub storage_region: Option<String>,

    /// S3: address buckets as <bucket>.<endpoint> (virtual-hosted style) rather
    /// than <endpoint>/<bucket> (path style, what MinIO and Ceph take).
    #[arg(long, env = "KILN_STORAGE_VIRTUAL_HOSTED_STYLE", default_value_t = false, action = clap::ArgAction::Set)]
    pub storage_virtual_hosted_style: bool,

    /// Object storage: seconds to wait for the store to connect, to answer a
    /// request, or to send the next chunk of a download.
    #[arg(long, env = "KILN_STORAGE_TIMEOUT_SECS", default_value_t = 30.0, value_parser = positive_secs)]
    pub storage_timeout_secs: f64,

    /// Object storage: tries after the first for a request or download that
    /// failed on the way (a server error, a transfer cut short, a timeout).
    #[arg(long, env = "KILN_STORAGE_RETRIES", default_value_t = 3)]
    pub storage_retries: usize,

    /// Object storage: files of one version downloaded at once.
    #[arg(long, env = "KILN_STORAGE_PARALLEL_DOWNLOADS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub storage_parallel_downloads: u32,

    /// Address the HTTP (REST) server binds to.
    #[arg(long, env = "KILN_HTTP_ADDRESS", default_value = "0.0.0.0")]
    pub http_address: IpAddr,

    /// HTTP port (0 picks a free one; the log says which).
    #[arg(long, env = "KILN_HTTP_PORT", default_value_t = 8000)]
    pub http_port: u16,

    /// Address the gRPC server binds to.
    #[arg(long, env = "KILN_GRPC_ADDRESS", default_value = "0.0.0.0")]
    pub grpc_address: IpAddr,

    /// gRPC port (0 picks a free one; the log says which).
    #[arg(long, env = "KILN_GRPC_PORT", default_value_t = 8001)]
    pub grpc_port: u16,

    /// Serve REST.
    #[arg(long, env = "KILN_ALLOW_HTTP", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_http: bool,

    /// Serve gRPC.
    #[arg(long, env = "KILN_ALLOW_GRPC", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_grpc: bool,

    /// Serve Prometheus metrics at GET /metrics.
    #[arg(long, env = "KILN_ALLOW_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_metrics: bool,

    /// Serve /metrics on this separate port (on the HTTP address) instead of the HTTP port.
    #[arg(long, env = "KILN_METRICS_PORT")]
    pub metrics_port: Option<u16>,

    /// Ready only when every model in the repository is ready (false: ready once loading ends).
    #[arg(long, env = "KILN_STRICT_READINESS", default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_readiness: bool,

    /// Path of libonnxruntime.so (else ORT_DYLIB_PATH, then the search the README describes).
    #[arg(long, env = "KILN_ONNXRUNTIME_LIB")]
    pub onnxruntime_lib: Option<PathBuf>,

    /// Directories (separated by ':') searched first for the CUDA 13 and cuDNN 9
    /// libraries of ONNX Runtime's CUDA provider; then NVIDIA's pip wheels beside
    /// ONNX Runtime, $CUDA_HOME/lib64, /usr/local/cuda/lib64 and the system's
    /// library directories (see the README).
    #[arg(long, env = "KILN_CUDA_LIBRARY_PATH", value_delimiter = ':')]
    pub cuda_library_path: Vec<PathBuf>,

    /// Largest HTTP request body, in bytes.
    #[arg(long, env = "KILN_HTTP_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub http_max_body_bytes: usize,

    /// Largest gRPC message, in bytes, in either direction.
    #[arg(long, env = "KILN_GRPC_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub grpc_max_message_bytes: usize,

    /// Request bytes held in memory at once, server-wide: bodies and gRPC messages
    /// being decoded, and tensors queued or computing. A request that would pass
    /// it is refused at once with 503 / UNAVAILABLE (413 / RESOURCE_EXHAUSTED if it
    /// alone is larger). Default: a quarter of the memory limit (the cgroup's,
    /// else the machine's); 0: no limit.
    #[arg(long, env = "KILN_MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<usize>,

    /// Threads that serve the network side (HTTP, gRPC, encoding and decoding).
    /// Compute runs on threads of its own, one per model instance, so on a small
    /// machine fewer network threads leave the cores to compute. Default: the
    /// CPUs this process may use.
    #[arg(long, env = "KILN_IO_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub io_threads: Option<u16>,

    /// Connections each listener (REST, gRPC, metrics) holds open at once; one over
    /// it waits in the kernel's backlog until another closes. Default: a third of
    /// the open-file limit (raised to its hard limit at start) less 256, from 16 to
    /// 10,000.
    #[arg(long, env = "KILN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Seconds a REST request's headers may take to arrive, counted from when the
    /// connection opens or its previous answer was sent (so it is also how long a
    /// keep-alive connection may sit idle).
    #[arg(long, env = "KILN_HTTP_HEADER_READ_TIMEOUT_SECS", default_value_t = 30.0, value_parser = positive_secs)]
    pub http_header_read_timeout_secs: f64,

    /// Seconds a REST request's body may take to arrive once its headers have;
    /// past it the answer is 408.
    #[arg(long, env = "KILN_HTTP_BODY_READ_TIMEOUT_SECS", default_value_t = 60.0, value_parser = positive_secs)]
    pub http_body_read_timeout_secs: f64,

    /// Seconds a gRPC connection may go without anything arriving on it (no
    /// frames, no answers to the server's keep-alive pings) before it is closed.
    #[arg(long, env = "KILN_GRPC_IDLE_TIMEOUT_SECS", default_value_t = 120.0, value_parser = positive_secs)]
    pub grpc_idle_timeout_secs: f64,

    /// Seconds between the server's HTTP/2 keep-alive pings on a gRPC connection; a
    /// ping unanswered for 20 s closes it. 0: no pings.
    #[arg(long, env = "KILN_GRPC_KEEPALIVE_SECS", default_value_t = 30.0, value_parser = non_negative_secs)]
    pub grpc_keepalive_secs: f64,

    /// Concurrent gRPC streams (calls) one connection may have open.
    #[arg(long, env = "KILN_GRPC_MAX_CONCURRENT_STREAMS", default_value_t = 128)]
    pub grpc_max_concurrent_streams: u32,

    /// Seconds to let requests in flight finish after SIGTERM/SIGINT.
    #[arg(long, env = "KILN_EXIT_TIMEOUT_SECS", default_value_t = 30)]
    pub exit_timeout_secs: u64,

    /// Who decides which models load: none (all at start, no changes), poll (all at
    /// start, then the repository is watched), explicit (--load-model at start, then
    /// the repository API's load and unload).
    #[arg(long, env = "KILN_MODEL_CONTROL_MODE", value_enum, default_value_t = ControlModeArg::None)]
    pub model_control_mode: ControlModeArg,

    /// Poll mode: seconds between two scans of the repository.
    #[arg(long, env = "KILN_REPOSITORY_POLL_SECS", default_value_t = 15.0, value_parser = positive_secs)]
    pub repository_poll_secs: f64,

    /// Poll mode: seconds a changed model folder must stay unchanged (file names,
    /// sizes, times) before it loads, so that half-copied files are not loaded.
    #[arg(long, env = "KILN_REPOSITORY_SETTLE_SECS", default_value_t = 2.0, value_parser = non_negative_secs)]
    pub repository_settle_secs: f64,

    /// A version folder counts only once it holds a file of this name (e.g. READY,
    /// written last by the deployment): the strict guard against partial copies.
    #[arg(long, env = "KILN_REPOSITORY_READY_MARKER")]
    pub repository_ready_marker: Option<String>,

    /// Explicit mode: a model to load at start (repeat the flag, or a comma list in
    /// the env var; `*` loads all).
    #[arg(long = "load-model", env = "KILN_LOAD_MODEL", value_delimiter = ',')]
    pub load_model: Vec<String>,

    /// GPUs models may be placed on (`device = "cuda:N"` in a model's config):
    /// `all`, `none`, or a comma list of CUDA device numbers such as `0,2`. A model
    /// placed on a GPU outside the list fails to load, saying so.
    #[arg(long, env = "KILN_GPUS", default_value = "all", value_parser = gpu_list)]
    pub gpus: GpuList,

    /// Seconds between two samples of every GPU's utilisation and memory (NVML),
    /// exported as kiln_gpu_* metrics; 0 turns them off. Without an NVIDIA driver
    /// there are none.
    #[arg(long, env = "KILN_GPU_METRICS_SECS", default_value_t = 5.0, value_parser = non_negative_secs)]
    pub gpu_metrics_secs: f64,

    /// API keys (TOML, see the README's "Securing Kiln"): each a key id, the SHA-256
    /// of its secret or a client certificate's subject, its scopes (infer, admin,
    /// metrics), optionally its models and rate. Re-read when it changes; a file
    /// that fails to parse keeps the keys in force. Without it the server is open.
    #[arg(long, env = "KILN_API_KEYS")]
    pub api_keys: Option<PathBuf>,

    /// Health endpoints (live, ready) answer without a key, for probes.
    #[arg(long, env = "KILN_OPEN_HEALTH", default_value_t = true, action = clap::ArgAction::Set)]
    pub open_health: bool,

    /// Requests per second each key may make (keys with a `rate` of their own aside),
    /// and each client address on an open server; over it: 429 / RESOURCE_EXHAUSTED
    /// with Retry-After. Default: no limit.
    #[arg(long, env = "KILN_RATE_LIMIT", value_parser = requests_per_second)]
    pub rate_limit: Option<f64>,

    /// Requests at once over --rate-limit (default: the rate, rounded up).
    #[arg(long, env = "KILN_RATE_LIMIT_BURST", requires = "rate_limit")]
    pub rate_limit_burst: Option<u32>,

    /// TLS certificate chain (PEM) for the REST and gRPC ports; with --tls-key.
    /// Re-read when it changes. The --metrics-port stays plaintext.
    #[arg(long, env = "KILN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1); with --tls-cert.
    #[arg(long, env = "KILN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Verify client certificates against these CAs (PEM): mutual TLS. A verified
    /// certificate's subject names its key where a key's `subject` says so.
    #[arg(long, env = "KILN_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// With --tls-client-ca: let clients without a certificate connect too (they
    /// then need a bearer key where keys are required).
    #[arg(long, env = "KILN_TLS_CLIENT_CERT_OPTIONAL", default_value_t = false, action = clap::ArgAction::Set, requires = "tls_client_ca")]
    pub tls_client_cert_optional: bool,

    /// Seconds a client has to complete its TLS handshake.
    #[arg(long, env = "KILN_TLS_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10.0, value_parser = positive_secs)]
    pub tls_handshake_timeout_secs: f64,

    /// Log detail: 0 info, 1 debug, 2 trace (KILN_LOG, a tracing filter, overrides it).
    #[arg(long, env = "KILN_LOG_VERBOSE", default_value_t = 0)]
    pub log_verbose: u8,

    /// Log lines as text (coloured only on a terminal, and not when NO_COLOR is set) or
    /// as JSON, one object per line: timestamp, level, target, message and the event's fields.
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// An access log line per inference request (request id, protocol, model, version,
    /// status, duration), for this fraction of requests; the flag alone logs every one.
    #[arg(long, env = "KILN_LOG_REQUESTS", default_value_t = 0.0, num_args = 0..=1,
          default_missing_value = "1", value_parser = ratio)]
    pub log_requests: f64,

    /// Send traces to this OpenTelemetry collector (its base URL, http://host:port;
    /// OTEL_EXPORTER_OTLP_ENDPOINT when unset). No endpoint: no traces.
    #[arg(long, env = "KILN_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: grpc (port 4317) or http/protobuf (port 4318, path /v1/traces);
    /// OTEL_EXPORTER_OTLP_PROTOCOL when unset, else grpc.
    #[arg(long, env = "KILN_OTLP_PROTOCOL", value_enum)]
    pub otlp_protocol: Option<OtlpProtocol>,

    /// Fraction of requests traced when the caller's traceparent does not decide
    /// (a sampled parent is always followed, an unsampled one never).
    #[arg(long, env = "KILN_TRACE_SAMPLE_RATIO", default_value_t = 0.01, value_parser = ratio)]
    pub trace_sample_ratio: f64,

    /// Ended spans waiting for export; more are dropped (and counted) rather than
    /// delay requests when the collector is slow or down.
    #[arg(long, env = "KILN_TRACE_QUEUE_SIZE", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    pub trace_queue_size: u32,

    /// Most spans in one export.
    #[arg(long, env = "KILN_TRACE_BATCH_SIZE", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub trace_batch_size: u32,

    /// Milliseconds the first span of an export waits for others.
    #[arg(long, env = "KILN_TRACE_EXPORT_DELAY_MS", default_value_t = 500)]
    pub trace_export_delay_ms: u64,

    /// Seconds one export may take; a batch the collector does not take in time is dropped.
    #[arg(long, env = "KILN_TRACE_EXPORT_TIMEOUT_SECS", default_value_t = 10.0, value_parser = positive_secs)]
    pub trace_export_timeout_secs: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ControlModeArg {
    None,
    Poll,
    Explicit,
}

impl From<ControlModeArg> for kiln_core::ControlMode {
    fn from(m: ControlModeArg) -> Self {
        match m {
            ControlModeArg::None => kiln_core::ControlMode::None,
            ControlModeArg::Poll => kiln_core::ControlMode::Poll,
            ControlModeArg::Explicit => kiln_core::ControlMode::Explicit,
        }
    }
}

fn non_negative_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if v.is_finite() && (0.0..=86_400.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s} is not between 0 and 86400 seconds"))
    }
}

fn ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s} is not between 0 and 1"))
    }
}

fn requests_per_second(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of requests per second"))?;
    kiln_access::keys::rate(v, None).map(|r| r.per_second)
}

fn positive_secs(s: &str) -> Result<f64, String> {
    let v = non_negative_secs(s)?;
    if v >= 0.01 {
        Ok(v)
    } else {
        Err(format!(
            "{s} is below the shortest poll interval, 0.01 seconds"
        ))
    }
}

fn model_name(s: &str) -> Result<String, String> {
    if kiln_core::repository::valid_model_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!("'{s}' is not a valid model name"))
    }
}

/// `--gpus`: `None` for all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuList(pub Option<Vec<u32>>);

fn gpu_list(s: &str) -> Result<GpuList, String> {
    match s.trim() {
        "all" | "" => Ok(GpuList(None)),
        "none" => Ok(GpuList(Some(Vec::new()))),
        list => list
            .split(',')
            .map(|g| {
                g.trim().parse::<u32>().map_err(|_| {
                    format!("'{g}' is not a GPU number (expected all, none or a list such as 0,1)")
                })
            })
            .collect::<Result<Vec<u32>, String>>()
            .map(|v| GpuList(Some(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_lists_parse() {
        assert_eq!(gpu_list("all"), Ok(GpuList(None)));
        assert_eq!(gpu_list("none"), Ok(GpuList(Some(vec![]))));
        assert_eq!(gpu_list("0, 2"), Ok(GpuList(Some(vec![0, 2]))));
        assert!(gpu_list("0,x").unwrap_err().contains("'x'"));
    }
}
