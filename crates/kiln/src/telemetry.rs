//! Logs and traces as the flags (and the standard `OTEL_*` variables) set them.

use crate::cli::{self, Args};
use kiln_telemetry::{Batching, Installed, LogFormat, Logs, OtlpProtocol, Telemetry, Traces};
use std::sync::Arc;
use std::time::Duration;

/// Installs the process's log and trace pipeline.
pub fn install(args: &Args) -> anyhow::Result<(Installed, Arc<Telemetry>)> {
    let default = match args.log_verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{default},h2=info,hyper=info,tower=info,tract=warn,ort=warn"
        ))
    });
    use std::io::IsTerminal;
    let logs = Logs {
        format: match args.log_format {
            cli::LogFormat::Text => LogFormat::Text,
            cli::LogFormat::Json => LogFormat::Json,
        },
        filter,
        // Escapes only where a person reads them: a file or a container log
        // would keep them as noise.
        colour: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let traces = endpoint(args).map(|endpoint| Traces {
        endpoint,
        protocol: protocol(args),
        batching: Batching {
            queue: args.trace_queue_size as usize,
            batch: args.trace_batch_size as usize,
            delay: Duration::from_millis(args.trace_export_delay_ms),
            timeout: Duration::from_secs_f64(args.trace_export_timeout_secs),
        },
    });
    let described = traces
        .as_ref()
        .map(|t| format!("{} over {:?}", t.endpoint, t.protocol));
    let installed = kiln_telemetry::install(logs, traces)?;
    match described {
        Some(to) => tracing::info!(
            "traces to {to}, {} of requests without a sampled parent",
            args.trace_sample_ratio
        ),
        None => tracing::debug!("traces off (no --otlp-endpoint)"),
    }
    let telemetry = Telemetry::new(
        installed.traces(),
        args.trace_sample_ratio,
        args.log_requests,
    );
    Ok((installed, Arc::new(telemetry)))
}

/// `--otlp-endpoint`, else the standard variable.
fn endpoint(args: &Args) -> Option<String> {
    args.otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.trim().is_empty())
}

/// `--otlp-protocol`, else the standard variable, else gRPC.
fn protocol(args: &Args) -> OtlpProtocol {
    let p = args.otlp_protocol.or_else(|| {
        match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").ok()?.as_str() {
            "http/protobuf" => Some(cli::OtlpProtocol::HttpProtobuf),
            "grpc" => Some(cli::OtlpProtocol::Grpc),
            other => {
                eprintln!("OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not grpc or http/protobuf; using grpc");
                None
            }
        }
    });
    match p {
        Some(cli::OtlpProtocol::HttpProtobuf) => OtlpProtocol::HttpProtobuf,
        _ => OtlpProtocol::Grpc,
    }
}
