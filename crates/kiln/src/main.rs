//! `kiln`: serves a model repository over KServe V2 REST and gRPC in one process.

mod accept;
mod cli;
mod file_watch;
mod gpu_metrics;
mod limits;
mod listen;
mod repository;
mod serve_http;
mod telemetry;
mod tls;

use anyhow::Context;
use clap::Parser;
use kiln_access::{Access, AccessOptions};
use kiln_backend_candle::CandleFactory;
use kiln_backend_ort::OrtFactory;
use kiln_backend_tract::TractFactory;
use kiln_core::audit::{self, Actor, Change};
use kiln_core::backend::BackendFactory;
use kiln_core::{Backends, Core, CoreOptions};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// See Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = cli::Args::parse();
    // ONNX Runtime 1.31 sends usage telemetry unless told not to, and a server
    // must not phone home. Set while the process has a single thread (set
    // ORT_DISABLE_TELEMETRY=0 to let it).
    if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
        std::env::set_var("ORT_DISABLE_TELEMETRY", "1");
    }
    let (installed, telemetry) = telemetry::install(&args)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.io_threads {
        runtime.worker_threads(usize::from(n));
    }
    let runtime = runtime
        .enable_all()
        .thread_name("kiln-io")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run(args, telemetry));
    // A model load still running on a blocking thread must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // Spans still queued go out, unless the collector keeps them waiting.
    installed.shutdown(Duration::from_secs(2));
    result
}

/// `--max-inflight-bytes`, or its default from the memory limit; logged.
fn inflight_budget(args: &cli::Args) -> Option<usize> {
    let bytes = match args.max_inflight_bytes {
        Some(0) => {
            tracing::info!("request byte budget: none (--max-inflight-bytes 0)");
            return None;
        }
        Some(n) => n,
        None => limits::default_inflight_bytes(limits::memory_limit()),
    };
    tracing::info!("request byte budget: {bytes} bytes held at once");
    Some(bytes)
}

async fn run(args: cli::Args, telemetry: Arc<kiln_telemetry::Telemetry>) -> anyhow::Result<()> {
    // Each connection holds a descriptor: take all the system allows us.
    let open_files = match limits::raise_open_files() {
        Ok((before, after)) => {
            tracing::info!("open-file limit: {after} (soft limit was {before})");
            Some(after)
        }
        Err(e) => {
            tracing::warn!("cannot read or raise the open-file limit: {e}");
            None
        }
    };
    let max_connections = args
        .max_connections
        .unwrap_or_else(|| limits::default_max_connections(open_files));
    tracing::info!("at most {max_connections} connections per listener");
    let http_limits = listen::ConnLimits {
        max_connections,
        read_idle: None,
    };
    let header_timeout = Duration::from_secs_f64(args.http_header_read_timeout_secs);
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            kiln_core::metrics::LATENCY_BUCKETS,
        )
        .context("invalid histogram buckets")?
        .set_buckets_for_metric(
            Matcher::Full(kiln_core::metrics::BATCH_SIZE.into()),
            kiln_core::metrics::BATCH_SIZE_BUCKETS,
        )
        .context("invalid histogram buckets")?
        .set_buckets_for_metric(
            Matcher::Full(kiln_storage::metrics::DOWNLOAD_SECONDS.into()),
            kiln_storage::metrics::DOWNLOAD_BUCKETS,
        )
        .context("invalid histogram buckets")?
        .set_buckets_for_metric(
            Matcher::Full(kiln_core::metrics::SHADOW_OUTPUT_DIFF.into()),
            kiln_core::metrics::DIFF_BUCKETS,
        )
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    kiln_core::metrics::describe();
    kiln_access::describe_metrics();
    kiln_storage::metrics::describe();
    start_metrics_upkeep(prometheus.clone())?;
    if args.gpu_metrics_secs > 0.0 {
        gpu_metrics::start(
            Duration::from_secs_f64(args.gpu_metrics_secs.max(0.1)),
            args.gpus.0.clone(),
        )
        .context("cannot start the GPU metrics sampler")?;
    }

    let ort = Arc::new(
        OrtFactory::new(args.onnxruntime_lib.clone())
            .with_cuda_library_path(args.cuda_library_path.clone()),
    );
    let ort_probe = ort.clone();
    match tokio::task::spawn_blocking(move || {
        ort_probe
            .availability()
            .map(|_| ort_probe.library().map(|p| p.display().to_string()))
    })
    .await
    .context("ONNX Runtime probe panicked")?
    {
        Ok(Some(lib)) => tracing::info!("ONNX Runtime: {lib}"),
        Ok(None) => {}
        Err(reason) => tracing::warn!(
            "ONNX Runtime is not available ({reason}); ONNX models will run on tract"
        ),
    }
    let backends = Backends::new()
        .register(ort)
        .register(Arc::new(TractFactory))
        .register(Arc::new(CandleFactory))
        .with_gpus(args.gpus.0.clone());
    let core = Core::with_repository(
        CoreOptions {
            repository: match &args.model_repository {
                kiln_storage::Location::Local(path) => path.clone(),
                kiln_storage::Location::Remote(_) => Default::default(),
            },
            strict_readiness: args.strict_readiness,
            control_mode: args.model_control_mode.into(),
            startup_models: args.load_model.clone(),
            ready_marker: args.repository_ready_marker.clone(),
            max_inflight_bytes: inflight_budget(&args),
        },
        backends,
        repository::open(&args)?,
    );

    let access = Arc::new(access(&args, &core)?);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(tls::Tls::load(tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
            client_cert_optional: args.tls_client_cert_optional,
        })?)),
        _ => None,
    };
    watch_secrets(&args, &access, tls.as_ref())?;
    let handshake_timeout = Duration::from_secs_f64(args.tls_handshake_timeout_secs);
    let secure =
        |listener: TcpListener, limits, tls: Option<(Arc<tls::Tls>, tls::Listener)>, what| {
            accept::secure(
                listen::incoming(listener, limits, what),
                tls,
                handshake_timeout,
                what,
            )
        };
    let on = |l: tls::Listener| tls.clone().map(|t| (t, l));

    let stop_signal = stop_signal()?;
    tokio::pin!(stop_signal);

    // Bind first, so that liveness answers while models load.
    let (stop_tx, stop_rx) = watch::channel(false);
    // The REST and metrics listeners are served alike.
    let serve_rest = |incoming, app, what| {
        serve_http::serve(incoming, app, header_timeout, stop_rx.clone(), what)
    };
    let mut servers = tokio::task::JoinSet::new();
    let render = {
        let handle = prometheus.clone();
        Arc::new(move || handle.render()) as kiln_http::MetricsRender
    };
    if args.allow_http {
        let addr = SocketAddr::new(args.http_address, args.http_port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
        tracing::info!("HTTP listening on {}", listener.local_addr()?);
        let metrics_here = args.allow_metrics && args.metrics_port.is_none();
        let app = kiln_http::router(
            core.clone(),
            kiln_http::HttpOptions {
                max_body_bytes: args.http_max_body_bytes,
                body_read_timeout: Duration::from_secs_f64(args.http_body_read_timeout_secs),
                metrics: metrics_here.then(|| render.clone()),
                access: access.clone(),
                telemetry: telemetry.clone(),
            },
        );
        let incoming = secure(listener, http_limits, on(tls::Listener::Http), "HTTP");
        servers.spawn(serve_rest(incoming, app, "HTTP"));
    }
    if let (true, Some(port)) = (args.allow_metrics, args.metrics_port) {
        let addr = SocketAddr::new(args.http_address, port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        tracing::info!("metrics listening on {}", listener.local_addr()?);
        let render = render.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || async move { render() }),
        );
        // Plaintext, for Prometheus inside the cluster.
        let incoming = secure(listener, http_limits, None, "metrics");
        servers.spawn(serve_rest(incoming, app, "metrics"));
    }
    if args.allow_grpc {
        let addr = SocketAddr::new(args.grpc_address, args.grpc_port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for gRPC on {addr}"))?;
        tracing::info!("gRPC listening on {}", listener.local_addr()?);
        let service =
            kiln_grpc::InferenceService::new(core.clone(), access.clone(), telemetry.clone())
                .into_server(args.grpc_max_message_bytes);
        let health = kiln_grpc::HealthService::new(core.clone(), access.clone()).into_server();
        let (reflection, reflection_alpha) = kiln_grpc::reflection::services(&access)
            .context("cannot set up gRPC server reflection")?;
        let incoming = secure(
            listener,
            listen::ConnLimits {
                max_connections,
                read_idle: Some(Duration::from_secs_f64(args.grpc_idle_timeout_secs)),
            },
            on(tls::Listener::Grpc),
            "gRPC",
        );
        let keepalive =
            Some(Duration::from_secs_f64(args.grpc_keepalive_secs)).filter(|d| !d.is_zero());
        let streams = args.grpc_max_concurrent_streams;
        let mut stop = stop_rx.clone();
        servers.spawn(async move {
            tonic::transport::Server::builder()
                .max_concurrent_streams(streams)
                .http2_keepalive_interval(keepalive)
                .add_service(service)
                .add_service(health)
                .add_service(reflection)
                .add_service(reflection_alpha)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .context("gRPC server failed")
        });
    }
    if servers.is_empty() {
        anyhow::bail!("nothing to serve: both --allow-http and --allow-grpc are false");
    }

    tokio::select! {
        r = core.load_repository() => {
            r.context("cannot load the model repository")?;
            tracing::info!("model repository loaded; ready: {}", core.is_ready());
        }
        _ = &mut stop_signal => return shutdown(core, stop_tx, servers, args.exit_timeout_secs).await,
        Some(r) = servers.join_next() => return r.context("server task panicked")?,
    }
    if args.model_control_mode == cli::ControlModeArg::Poll {
        start_polling(
            core.clone(),
            Duration::from_secs_f64(args.repository_poll_secs),
            Duration::from_secs_f64(args.repository_settle_secs),
        );
    }
    let watcher = core.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ROLLBACK_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            watcher.watch_rollbacks();
        }
    });
    tokio::select! {
        _ = &mut stop_signal => shutdown(core, stop_tx, servers, args.exit_timeout_secs).await,
        Some(r) = servers.join_next() => r.context("server task panicked")?,
    }
}

/// The access control from the flags; a key file that cannot be read or
/// parsed stops the start.
fn access(args: &cli::Args, core: &Core) -> anyhow::Result<Access> {
    let default_rate = args
        .rate_limit
        .map(|r| kiln_access::keys::rate(r, args.rate_limit_burst))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let opts = AccessOptions {
        key_file: args.api_keys.clone(),
        open_health: args.open_health,
        default_rate,
    };
    let core = core.clone();
    Access::new(opts, move |model| !core.versions(model).is_empty()).context("--api-keys")
}

/// Re-reads the key file and the TLS files when they change, on the audit
/// trail; a failed reload keeps what was in force.
fn watch_secrets(
    args: &cli::Args,
    access: &Arc<Access>,
    tls: Option<&Arc<tls::Tls>>,
) -> anyhow::Result<()> {
    if let Some(path) = &args.api_keys {
        let access = access.clone();
        file_watch::on_change(std::slice::from_ref(path), "API keys", move || {
            let result = match access.reload() {
                Ok(kiln_access::Reloaded::Unchanged) => return,
                Ok(kiln_access::Reloaded::Changed { before, after }) => {
                    Ok((before.join(", "), after.join(", ")))
                }
                Err(e) => Err(e.to_string()),
            };
            audited_reload("keys_reload", "API keys", String::new(), result);
        })?;
    }
    if let Some(tls) = tls {
        let watched = tls.clone();
        file_watch::on_change(&tls.files().paths(), "TLS files", move || {
            let before = watched.serving();
            let result = match watched.reload() {
                Ok(None) => return,
                Ok(Some(now)) => Ok((before.clone(), now)),
                Err(e) => Err(format!("{e:#}")),
            };
            audited_reload("tls_reload", "TLS", before, result);
        })?;
    }
    Ok(())
}

/// Logs a reload of `what` and puts it on the audit trail: `Ok((before,
/// after))`, or the error (what was in force, `unchanged`, stays).
fn audited_reload(
    action: &'static str,
    what: &str,
    unchanged: String,
    result: Result<(String, String), String>,
) {
    let (before, after, outcome) = match &result {
        Ok((before, after)) => {
            tracing::info!("{what} reloaded: {after}");
            (before.clone(), after.clone(), Ok(()))
        }
        Err(e) => {
            tracing::error!("{what} not reloaded, the previous ones stay in force: {e}");
            (unchanged.clone(), unchanged, Err(e.as_str()))
        }
    };
    let change = Change {
        action,
        model: None,
        before,
        after,
    };
    audit::record(&Actor::kiln(), change, outcome);
}

/// How often the rollback watcher compares canaries with their stable versions.
const ROLLBACK_CHECK: Duration = Duration::from_millis(250);

/// How often the exporter folds recorded histogram samples into its buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// `install_recorder` starts no upkeep of its own: without it, every histogram
/// sample is kept until the next scrape, and for ever when nobody scrapes
/// (about 74 bytes per request). A thread of its own does it, off the runtime.
fn start_metrics_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("kiln-metrics".into())
        .spawn(move || loop {
            std::thread::sleep(METRICS_UPKEEP);
            handle.run_upkeep();
        })
        .context("cannot start the metrics upkeep")?;
    Ok(())
}

/// Poll mode: scans the repository every `every` (the core does the file-system
/// work and the loads on its blocking threads, never on the async runtime's).
fn start_polling(core: Core, every: Duration, settle: Duration) {
    tracing::info!(
        "polling the model repository every {:.2}s (changes load after {:.2}s unchanged)",
        every.as_secs_f64(),
        settle.as_secs_f64()
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = core.poll(settle).await {
                tracing::error!("poll: {e}");
            }
        }
    });
}

/// Resolves at the first SIGTERM or SIGINT. The handlers are installed when this
/// is called (not when the future is first polled), and one future serves the
/// whole run, so a signal that arrives between two `select!`s is not lost.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Graceful stop, within `exit_timeout_secs` in all:
/// 1. readiness goes false and new inference requests are answered 503 /
///    UNAVAILABLE, while the listeners stay open (health, metadata and metrics
///    keep answering, so probes and scrapers see the drain);
/// 2. the requests already admitted (queued or computing) finish;
/// 3. the listeners close, letting responses being written complete;
/// 4. the process exits 0 (with a warning when requests were still running at
///    the deadline).
async fn shutdown(
    core: Core,
    stop: watch::Sender<bool>,
    mut servers: tokio::task::JoinSet<anyhow::Result<()>>,
    exit_timeout_secs: u64,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(exit_timeout_secs);
    core.begin_drain();
    tracing::info!(
        "shutting down: not ready, refusing new requests, {} in flight",
        core.in_flight()
    );
    if tokio::time::timeout_at(deadline, core.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} requests still in flight after {exit_timeout_secs}s; exiting anyway",
            core.in_flight()
        );
    } else {
        tracing::info!("requests in flight finished; closing the listeners");
    }
    let _ = stop.send(true);
    // Connections close once their current response is written; idle keep-alive
    // connections close at once.
    let closed = tokio::time::timeout_at(
        deadline.max(tokio::time::Instant::now() + CLOSE_GRACE),
        async {
            while let Some(r) = servers.join_next().await {
                if let Ok(Err(e)) = r {
                    tracing::warn!("{e:#}");
                }
            }
        },
    )
    .await;
    if closed.is_err() {
        tracing::warn!("connections still open at the deadline; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The least time connections get to finish writing after the listeners close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
