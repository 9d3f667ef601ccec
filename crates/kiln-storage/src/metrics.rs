//! The storage metrics' names and help text.

pub const CACHE_BYTES: &str = "kiln_model_cache_bytes";
pub const CACHE_LIMIT_BYTES: &str = "kiln_model_cache_limit_bytes";
pub const DOWNLOADS: &str = "kiln_storage_downloads_total";
pub const DOWNLOAD_BYTES: &str = "kiln_storage_download_bytes_total";
pub const DOWNLOAD_SECONDS: &str = "kiln_storage_download_seconds";
pub const ERRORS: &str = "kiln_storage_errors_total";

/// A version's download takes from milliseconds (a small model near the store)
/// to minutes (gigabytes across regions).
pub const DOWNLOAD_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

pub fn describe() {
    metrics::describe_gauge!(
        CACHE_BYTES,
        metrics::Unit::Bytes,
        "Bytes of model versions held in the local model cache."
    );
    metrics::describe_gauge!(
        CACHE_LIMIT_BYTES,
        metrics::Unit::Bytes,
        "The model cache's size limit (--model-cache-max-bytes)."
    );
    metrics::describe_counter!(
        DOWNLOADS,
        "Versions downloaded from object storage, by model and outcome (ok, failed); a version found in the cache is not counted."
    );
    metrics::describe_counter!(
        DOWNLOAD_BYTES,
        metrics::Unit::Bytes,
        "Bytes downloaded from object storage, by model."
    );
    metrics::describe_histogram!(
        DOWNLOAD_SECONDS,
        metrics::Unit::Seconds,
        "Time to download one version whole, by model."
    );
    metrics::describe_counter!(
        ERRORS,
        "Object-storage operations that failed, by operation (list, get)."
    );
}
