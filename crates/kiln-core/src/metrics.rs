//! Metric names, help texts and label sets: the one place they are defined.
//!
//! Every per-version series carries `model`, `version` and `device` labels
//! (`device`: where the version's instances run, e.g. `cpu`, `cuda:0`, or
//! `cuda:0,cuda:1` for instances on several devices). Labels only ever
//! take names of models that exist, never a name a client made up.

use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit,
};

pub const REQUESTS_TOTAL: &str = "kiln_requests_total";
pub const REQUEST_DURATION: &str = "kiln_request_duration_seconds";
pub const QUEUE_DURATION: &str = "kiln_queue_duration_seconds";
pub const COMPUTE_DURATION: &str = "kiln_compute_duration_seconds";
pub const BATCH_SIZE: &str = "kiln_batch_size";
pub const INFERENCES_TOTAL: &str = "kiln_inferences_total";
pub const EXECUTIONS_TOTAL: &str = "kiln_executions_total";
pub const QUEUE_DEPTH: &str = "kiln_queue_depth";
pub const QUEUE_CAPACITY: &str = "kiln_queue_capacity";
pub const INFLIGHT_REQUESTS: &str = "kiln_inflight_requests";
pub const MODEL_LOAD_DURATION: &str = "kiln_model_load_duration_seconds";
pub const MODEL_LOAD_FAILURES: &str = "kiln_model_load_failures_total";
pub const MODEL_VERSIONS_LOADED: &str = "kiln_model_versions_loaded";
pub const CANARY_ROLLBACKS: &str = "kiln_canary_rollbacks_total";
pub const SHADOW_REQUESTS: &str = "kiln_shadow_requests_total";
pub const SHADOW_DURATION: &str = "kiln_shadow_request_duration_seconds";
pub const SHADOW_OUTPUT_DIFF: &str = "kiln_shadow_output_max_abs_diff";
pub const SHADOW_MISMATCHES: &str = "kiln_shadow_output_mismatches_total";
pub const REQUEST_BYTES_HELD: &str = "kiln_request_bytes_held";
pub const REQUEST_BYTES_LIMIT: &str = "kiln_request_bytes_limit";

/// Bucket bounds for the shadow's largest absolute output difference.
pub const DIFF_BUCKETS: &[f64] = &[
    0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0,
];

/// Bucket bounds (seconds) for every latency histogram: 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Bucket bounds for the batch-size histogram.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Request outcomes, the values of the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The request did not fit the model (HTTP 400).
    Invalid,
    /// Refused without compute: queue full or unloading (HTTP 503).
    Rejected,
    /// The request's deadline passed before it was answered (HTTP 504).
    Timeout,
    /// The client went away before an answer.
    Cancelled,
    /// The backend failed.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Invalid,
        Outcome::Rejected,
        Outcome::Timeout,
        Outcome::Cancelled,
        Outcome::Error,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Invalid => "invalid",
            Outcome::Rejected => "rejected",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::Error => "error",
        }
    }
}

/// Registers help texts with the installed recorder.
pub fn describe() {
    describe_counter!(
        crate::audit::AUDIT_EVENTS,
        "Control-plane changes on the audit trail (load, unload, traffic, rollback, keys_reload, tls_reload), by outcome (ok, failed)."
    );
    describe_counter!(REQUESTS_TOTAL, "Inference requests by model, version and outcome (success, invalid, rejected, timeout, cancelled, error).");
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request reaching the core to its answer, successful requests."
    );
    describe_histogram!(
        QUEUE_DURATION,
        Unit::Seconds,
        "Time a request waited in its version's queue before compute."
    );
    describe_histogram!(
        COMPUTE_DURATION,
        Unit::Seconds,
        "Compute time charged to a request: its batch's gather, backend run and split."
    );
    describe_histogram!(
        BATCH_SIZE,
        "Rows per backend execution (the batch the scheduler formed)."
    );
    describe_counter!(
        INFERENCES_TOTAL,
        "Rows inferred for successful requests (a request of batch 4 counts 4)."
    );
    describe_counter!(EXECUTIONS_TOTAL, "Backend executions (batches run).");
    describe_gauge!(QUEUE_DEPTH, "Requests waiting in the version's queue.");
    describe_gauge!(
        REQUEST_BYTES_HELD,
        Unit::Bytes,
        "Request bytes held now, server-wide: bodies and messages being decoded, tensors queued or computing."
    );
    describe_gauge!(
        REQUEST_BYTES_LIMIT,
        Unit::Bytes,
        "The most request bytes held at once (--max-inflight-bytes); beyond it requests are refused as busy."
    );
    describe_gauge!(
        QUEUE_CAPACITY,
        "Requests the version's queue holds before refusing more (max_queue_size)."
    );
    describe_gauge!(
        INFLIGHT_REQUESTS,
        "Requests inside the version: queued, computing or being answered."
    );
    describe_gauge!(
        MODEL_LOAD_DURATION,
        Unit::Seconds,
        "How long the last load of a model version took."
    );
    describe_counter!(
        MODEL_LOAD_FAILURES,
        "Loads that failed, by model and version (version empty: the model's config or folder)."
    );
    describe_gauge!(
        MODEL_VERSIONS_LOADED,
        "Model versions loaded (1 per version; 2 for a moment while a changed version replaces itself)."
    );
    describe_counter!(
        CANARY_ROLLBACKS,
        "Automatic rollbacks: the canary version's share was set to 0 because it breached its model's rollback policy."
    );
    describe_counter!(
        SHADOW_REQUESTS,
        "Shadow copies of requests, by shadow version and outcome (success, invalid, rejected, error)."
    );
    describe_histogram!(
        SHADOW_DURATION,
        Unit::Seconds,
        "Time a shadow copy took from submission to its (discarded) answer."
    );
    describe_histogram!(
        SHADOW_OUTPUT_DIFF,
        "Largest absolute difference between a shadow's outputs and its primary's, per shadowed request."
    );
    describe_counter!(
        SHADOW_MISMATCHES,
        "Shadowed requests whose outputs could not be compared element-wise (missing output, other shape or type, differing non-numeric data)."
    );
}

/// Handles to one version's series, resolved once at load.
pub struct VersionMetrics {
    outcomes: [Counter; 6],
    pub request: Histogram,
    pub queue: Histogram,
    pub compute: Histogram,
    pub batch_size: Histogram,
    pub inferences: Counter,
    pub executions: Counter,
    pub queue_depth: Gauge,
    pub queue_capacity: Gauge,
    pub inflight: Gauge,
}

impl VersionMetrics {
    pub fn new(model: &str, version: &str, device: &str) -> Self {
        let labels = [
            ("model", model.to_string()),
            ("version", version.to_string()),
            ("device", device.to_string()),
        ];
        let outcome = |o: Outcome| metrics::counter!(REQUESTS_TOTAL, "model" => model.to_string(), "version" => version.to_string(), "device" => device.to_string(), "outcome" => o.as_str());
        VersionMetrics {
            outcomes: Outcome::ALL.map(outcome),
            request: metrics::histogram!(REQUEST_DURATION, &labels),
            queue: metrics::histogram!(QUEUE_DURATION, &labels),
            compute: metrics::histogram!(COMPUTE_DURATION, &labels),
            batch_size: metrics::histogram!(BATCH_SIZE, &labels),
            inferences: metrics::counter!(INFERENCES_TOTAL, &labels),
            executions: metrics::counter!(EXECUTIONS_TOTAL, &labels),
            queue_depth: metrics::gauge!(QUEUE_DEPTH, &labels),
            queue_capacity: metrics::gauge!(QUEUE_CAPACITY, &labels),
            inflight: metrics::gauge!(INFLIGHT_REQUESTS, &labels),
        }
    }

    pub fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].increment(1);
    }
}
