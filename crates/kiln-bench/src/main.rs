//! `kiln-bench`: drives a KServe V2 server (Kiln, Triton, MLServer, ...) over
//! gRPC or REST and reports throughput, latency percentiles and the CPU that
//! the client and (given its pid) the server spent per request.

mod cpu;
mod payload;
mod run;
mod schedule;
mod stats;
mod target;

use anyhow::Context;
use clap::Parser;
use run::{End, Progress};
use schedule::Load;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use target::{Protocol, Target};

#[derive(Debug, Parser)]
#[command(
    name = "kiln-bench",
    version,
    about = "Load generator for KServe V2 servers (gRPC and REST)"
)]
struct Args {
    /// The server's host:port (gRPC or HTTP, as --protocol says).
    #[arg(
        short = 'u',
        long,
        env = "KILN_BENCH_URL",
        default_value = "127.0.0.1:8001"
    )]
    url: String,

    /// grpc, or http (REST).
    #[arg(short = 'i', long, env = "KILN_BENCH_PROTOCOL", value_enum, default_value_t = Protocol::Grpc)]
    protocol: Protocol,

    /// The model to infer on.
    #[arg(short = 'm', long, env = "KILN_BENCH_MODEL")]
    model: String,

    /// The model version (empty: the server's choice).
    #[arg(
        short = 'x',
        long,
        env = "KILN_BENCH_MODEL_VERSION",
        default_value = ""
    )]
    model_version: String,

    /// Closed loop: requests outstanding at all times (ignored with --rate).
    #[arg(long, env = "KILN_BENCH_CONCURRENCY", default_value_t = 1)]
    concurrency: usize,

    /// Open loop: requests per second, sent on schedule whether answers keep up
    /// or not; latency counts from each request's intended send time.
    #[arg(long, env = "KILN_BENCH_RATE")]
    rate: Option<f64>,

    /// Open loop: Poisson arrivals (exponential gaps) rather than even spacing.
    #[arg(long, env = "KILN_BENCH_POISSON", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    poisson: bool,

    /// Open loop: most requests outstanding; one due beyond it is not sent (and counted).
    #[arg(long, env = "KILN_BENCH_MAX_INFLIGHT", default_value_t = 10_000)]
    max_inflight: usize,

    /// Seconds of load before measuring (connections opened, caches warm).
    #[arg(long, env = "KILN_BENCH_WARMUP_SECS", default_value_t = 2.0)]
    warmup_secs: f64,

    /// Seconds measured (ignored with --requests).
    #[arg(long, env = "KILN_BENCH_DURATION_SECS", default_value_t = 10.0)]
    duration_secs: f64,

    /// Requests measured, instead of a duration.
    #[arg(long, env = "KILN_BENCH_REQUESTS")]
    requests: Option<u64>,

    /// A V2 JSON inference request whose inputs every request sends (else
    /// random inputs from the model's metadata).
    #[arg(long, env = "KILN_BENCH_INPUT_DATA")]
    input_data: Option<PathBuf>,

    /// Generated inputs: the batch (rows) for a variable first dimension.
    #[arg(short = 'b', long, env = "KILN_BENCH_BATCH_SIZE", default_value_t = 1)]
    batch_size: i64,

    /// Generated inputs: an input's whole shape, NAME:d1,d2,... (repeatable).
    #[arg(long, env = "KILN_BENCH_SHAPE", value_parser = shape, value_delimiter = ';')]
    shape: Vec<(String, Vec<i64>)>,

    /// REST: send tensors with Triton's binary extension instead of JSON.
    #[arg(long, env = "KILN_BENCH_BINARY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    binary: bool,

    /// gRPC: connections (HTTP/2) the calls are spread over.
    #[arg(long, env = "KILN_BENCH_CONNECTIONS", default_value_t = 1)]
    connections: usize,

    /// Client threads (1: a single-threaded runtime, the cheapest per request).
    #[arg(long, env = "KILN_BENCH_THREADS", default_value_t = 1)]
    threads: usize,

    /// The server's pid: its whole process tree's CPU per request is reported.
    #[arg(long, env = "KILN_BENCH_SERVER_PID")]
    server_pid: Option<u32>,

    /// Write the report as JSON here.
    #[arg(long, env = "KILN_BENCH_REPORT")]
    report: Option<PathBuf>,

    /// A progress line on stderr every second.
    #[arg(long, env = "KILN_BENCH_PROGRESS", default_value_t = true, action = clap::ArgAction::Set)]
    progress: bool,

    /// Seed of the generated inputs and of Poisson arrivals.
    #[arg(long, env = "KILN_BENCH_SEED", default_value_t = 1)]
    seed: u64,
}

fn shape(s: &str) -> Result<(String, Vec<i64>), String> {
    let (name, dims) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not NAME:d1,d2,..."))?;
    let dims = dims
        .split(',')
        .map(|d| {
            d.trim()
                .parse::<i64>()
                .map_err(|_| format!("'{d}' is not a dimension"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), dims))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let inputs = match &args.input_data {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            payload::from_request(&text)?
        }
        None => {
            let specs =
                target::input_specs(args.protocol, &args.url, &args.model, &args.model_version)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot read the metadata of model '{}' at {}",
                            args.model, args.url
                        )
                    })?;
            payload::generate(&specs, args.batch_size, &args.shape, args.seed)?
        }
    };
    let target = Target::new(
        args.protocol,
        &args.url,
        &args.model,
        &args.model_version,
        &inputs,
        args.binary,
        args.connections,
    )
    .await
    .with_context(|| format!("cannot connect to {}", args.url))?;
    let load = match args.rate {
        Some(rate) if rate > 0.0 => Load::Open {
            rate,
            poisson: args.poisson,
        },
        Some(rate) => anyhow::bail!("--rate {rate} is not a positive rate"),
        None => Load::Closed {
            concurrency: args.concurrency,
        },
    };
    let load_text = match load {
        Load::Closed { concurrency } => format!("closed loop, concurrency {concurrency}"),
        Load::Open { rate, poisson } => format!(
            "open loop, {rate} requests/s ({})",
            if poisson { "Poisson" } else { "evenly spaced" }
        ),
    };
    let progress = Arc::new(Progress::default());
    let ticker = args
        .progress
        .then(|| tokio::spawn(show_progress(progress.clone())));

    if args.warmup_secs > 0.0 {
        run::phase(
            &target,
            load,
            End::After(Duration::from_secs_f64(args.warmup_secs)),
            args.max_inflight,
            args.seed,
            progress.clone(),
        )
        .await;
    }
    let end = match args.requests {
        Some(n) => End::Requests(n),
        None => End::After(Duration::from_secs_f64(args.duration_secs)),
    };
    let (client_before, server_before) = (
        cpu::own_seconds(),
        args.server_pid.and_then(cpu::tree_seconds),
    );
    let measured = run::phase(
        &target,
        load,
        end,
        args.max_inflight,
        args.seed.wrapping_add(1),
        progress,
    )
    .await;
    let (client_after, server_after) = (
        cpu::own_seconds(),
        args.server_pid.and_then(cpu::tree_seconds),
    );
    if let Some(t) = ticker {
        t.abort();
        eprintln!();
    }

    let r = &measured.recorder;
    let seconds = measured.elapsed.as_secs_f64();
    let report = stats::Report {
        target: args.url.clone(),
        protocol: format!("{:?}", args.protocol).to_lowercase()
            + if args.protocol == Protocol::Http {
                if args.binary {
                    " (binary)"
                } else {
                    " (json)"
                }
            } else {
                ""
            },
        model: args.model.clone(),
        load: load_text,
        seconds,
        requests: r.ok,
        failed: r.failed(),
        errors: r.errors.clone(),
        throughput_per_sec: r.ok as f64 / seconds.max(1e-9),
        latency: r.latency(),
        not_sent: measured.not_sent,
        send_lag: measured.send_lag.clone(),
        client_cpu: stats::Cpu::new(client_after - client_before, r.ok),
        server_cpu: match (server_before, server_after) {
            (Some(b), Some(a)) => Some(stats::Cpu::new(a - b, r.ok)),
            _ => None,
        },
    };
    println!("{}", report.summary());
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Once a second: requests answered and failed in that second.
async fn show_progress(p: Arc<Progress>) {
    let started = Instant::now();
    let mut last = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = (
            p.done.load(Ordering::Relaxed),
            p.failed.load(Ordering::Relaxed),
        );
        eprint!(
            "\r[{:>4.0} s] {:>8} req/s, {:>6} failed/s, {} answered",
            started.elapsed().as_secs_f64(),
            now.0 - last.0,
            now.1 - last.1,
            now.0
        );
        last = now;
    }
}
