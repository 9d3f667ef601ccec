//! What the KServe V2 protocol and Triton's extensions say, written once for both
//! front ends: the server's metadata and extensions, request parameters and the
//! extensions Kiln refuses (`params`), and the model metadata, model config and
//! statistics views as typed structs (`views`). A front end only turns these into
//! JSON or protobuf; errors are the core's [`kiln_core::KilnError`].

pub mod params;
pub mod views;

/// Extensions of the V2 protocol this server implements completely.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
];

/// Request bodies up to this size are decoded on the runtime worker that read
/// them (tens of microseconds); larger ones on a blocking thread, since
/// milliseconds of decoding on a worker stall every connection it serves.
pub const INLINE_DECODE_BYTES: usize = 64 * 1024;

/// Most inputs, and most requested outputs, one request may name (both
/// protocols; checked before anything is allocated per entry).
pub const MAX_TENSORS: usize = 1024;
/// Most dimensions a tensor's shape may have.
pub const MAX_RANK: usize = 64;
/// Most parameters one object (request, input or output) may carry.
pub const MAX_PARAMETERS: usize = 256;

/// HTTP header carrying a routing key (gRPC: the same name as metadata).
pub const ROUTING_KEY_HEADER: &str = "x-kiln-routing-key";

/// Where the answer's time went, as REST's header and gRPC's trailing metadata
/// carry it.
pub const SERVER_TIMING: &str = "server-timing";

/// A response's [`Timing`](kiln_core::Timing) in the W3C Server-Timing syntax,
/// durations in milliseconds: `queue;dur=0.012, compute;dur=0.231, total;dur=0.260`.
pub fn server_timing(t: &kiln_core::Timing) -> String {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    format!(
        "queue;dur={:.3}, compute;dur={:.3}, total;dur={:.3}",
        ms(t.queue),
        ms(t.compute),
        ms(t.total)
    )
}

/// Server metadata (`GET /v2`, ServerMetadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: &'static [&'static str],
}

pub fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: "kiln",
        version: env!("CARGO_PKG_VERSION"),
        extensions: EXTENSIONS,
    }
}

/// A version argument as both protocols send it: empty means none.
pub fn version_arg(v: &str) -> Option<&str> {
    Some(v).filter(|v| !v.is_empty())
}
