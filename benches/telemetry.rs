//! What a request's telemetry costs its front end, in-process: starting it
//! (the `traceparent` lookup and the sampling draw) and finishing it, with
//! traces off, on at ratio 0, and on at ratio 1 (the request span and its
//! decode and encode children made, ended and queued for export; the collector
//! is absent, so the queue fills and spans are dropped, as with a collector
//! that is down). The core's queue and compute spans are not in it.
//!   cargo bench -p kiln-telemetry --bench telemetry

use criterion::{criterion_group, criterion_main, Criterion};
use kiln_telemetry::{Batching, Finished, LogFormat, Logs, OtlpProtocol, Telemetry, Traces};
use std::hint::black_box;
use std::time::Duration;

fn request(t: &Telemetry, traceparent: Option<&str>) {
    let scope = t.begin("grpc", "mlp_tiny", |k| {
        traceparent.filter(|_| k == "traceparent")
    });
    drop(black_box(scope.decode()));
    drop(black_box(scope.encode()));
    scope.finish(&Finished {
        request_id: "0123456789abcdef0123456789abcdef",
        model: "mlp_tiny",
        version: Some(1),
        batch_size: Some(1),
        status: "Ok",
        error: None,
    });
}

fn bench(c: &mut Criterion) {
    // The process's subscriber, as the binary installs it, exporting to a
    // port nobody listens on.
    let installed = kiln_telemetry::install(
        Logs {
            format: LogFormat::Text,
            filter: tracing_subscriber::EnvFilter::new("warn"),
            colour: false,
        },
        Some(Traces {
            endpoint: "http://127.0.0.1:9".into(),
            protocol: OtlpProtocol::Grpc,
            batching: Batching {
                queue: 2048,
                batch: 512,
                delay: Duration::from_millis(500),
                timeout: Duration::from_millis(100),
            },
        }),
    )
    .expect("install");
    let off = Telemetry::off();
    let r0 = Telemetry::new(true, 0.0, 0.0);
    let r1 = Telemetry::new(true, 1.0, 0.0);
    let parent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let mut g = c.benchmark_group("request_telemetry");
    g.bench_function("traces_off", |b| b.iter(|| request(&off, None)));
    g.bench_function("ratio_0", |b| b.iter(|| request(&r0, None)));
    g.bench_function("ratio_0_with_traceparent_unsampled", |b| {
        b.iter(|| {
            request(
                &r0,
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            )
        })
    });
    g.bench_function("ratio_1_three_spans", |b| b.iter(|| request(&r1, None)));
    g.bench_function("sampled_parent_three_spans", |b| {
        b.iter(|| request(&r0, parent))
    });
    g.finish();
    installed.shutdown(Duration::from_millis(100));
}

criterion_group!(benches, bench);
criterion_main!(benches);
