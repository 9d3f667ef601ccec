//! Criterion benchmark of the REST JSON tensor decoder: a request body of
//! 65,536 floats (256 rows of mlp_tiny-like 256-wide rows), as clients write
//! them: Python's `json` prints a float32 widened to a double (17 digits), a
//! shortest-form printer far fewer; FP64 at full precision.
//!
//!     cargo bench -p kiln-http --bench json_decode
//!
//! Results and the machine they ran on: benches/README.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_http::codec::decode_request;
use std::hint::black_box;

const ELEMENTS: usize = 65_536;

/// A deterministic spread of values in (-4, 4).
fn values() -> impl Iterator<Item = f64> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    std::iter::repeat_with(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 8.0 - 4.0
    })
    .take(ELEMENTS)
}

fn body(datatype: &str, text: impl Fn(f64) -> String) -> Vec<u8> {
    let data: Vec<String> = values().map(text).collect();
    format!(
        r#"{{"inputs":[{{"name":"x","shape":[256,256],"datatype":"{datatype}","data":[{}]}}]}}"#,
        data.join(",")
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let cases = [
        (
            "fp32_widened",
            body("FP32", |x| format!("{:?}", x as f32 as f64)),
        ),
        ("fp32_shortest", body("FP32", |x| format!("{:?}", x as f32))),
        ("fp64", body("FP64", |x| format!("{x:?}"))),
    ];
    let mut g = c.benchmark_group("json_decode");
    g.throughput(Throughput::Elements(ELEMENTS as u64));
    for (name, body) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let d = decode_request("m".into(), None, black_box(body), None).unwrap();
                black_box(d.request.inputs.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
