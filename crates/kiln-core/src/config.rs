//! Per-model configuration: `<repo>/<model>/config.toml`.
//!
//! Everything is optional: inputs, outputs, datatypes, shapes and whether the model
//! batches are read from the model file. The file only states what differs.

use crate::dtype::DataType;
use crate::model::{ModelSignature, TensorSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Name of the per-model configuration file.
pub const CONFIG_FILE: &str = "config.toml";
/// Model file looked for in each version folder unless the config names another.
pub const DEFAULT_MODEL_FILENAME: &str = "model.onnx";
/// The same for `backend = "candle"`.
pub const DEFAULT_CANDLE_FILENAME: &str = "model.safetensors";
/// `max_batch_size` given to a model whose first dimension is variable when the
/// config does not set one.
pub const DEFAULT_MAX_BATCH_SIZE: u32 = 32;
/// Requests a version queues before it rejects new ones (HTTP 503 / UNAVAILABLE).
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 1024;
/// Largest `max_batch_size` a config may set.
pub const MAX_BATCH_SIZE_LIMIT: u32 = 4096;
/// Largest `max_queue_delay_us` a config may set.
pub const MAX_QUEUE_DELAY_US_LIMIT: u64 = 10_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: field '{field}': {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// Which backend runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// ONNX Runtime when its library was found, tract otherwise.
    #[default]
    Auto,
    #[serde(alias = "ort")]
    Onnxruntime,
    Tract,
    /// Safetensors weights with a model family written in Rust (`family`).
    Candle,
}

impl BackendChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Onnxruntime => "onnxruntime",
            BackendChoice::Tract => "tract",
            BackendChoice::Candle => "candle",
        }
    }
}

/// An input or output as written in `config.toml` (Triton's convention: `dims`
/// exclude the batch dimension when the model batches).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorConfig {
    pub name: String,
    pub datatype: Option<String>,
    pub dims: Option<Vec<i64>>,
}

/// Which versions of a model serve (Triton's version policy). At most one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VersionPolicyConfig {
    /// The N highest versions.
    pub latest: Option<u32>,
    /// Every version in the repository.
    pub all: Option<bool>,
    /// Exactly these versions.
    pub specific: Option<Vec<u64>>,
}

/// Which versions serve, once `version_policy` is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    Latest(usize),
    All,
    Specific(Vec<crate::model::Version>),
}

impl VersionPolicy {
    /// The versions to serve out of those on disk (ascending in, ascending out).
    pub fn select(&self, on_disk: &[crate::model::Version]) -> Vec<crate::model::Version> {
        match self {
            VersionPolicy::Latest(n) => on_disk[on_disk.len().saturating_sub(*n)..].to_vec(),
            VersionPolicy::All => on_disk.to_vec(),
            VersionPolicy::Specific(list) => on_disk
                .iter()
                .filter(|v| list.contains(v))
                .copied()
                .collect(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            VersionPolicy::Latest(n) => format!("latest {n}"),
            VersionPolicy::All => "all".into(),
            VersionPolicy::Specific(list) => format!(
                "specific {:?}",
                list.iter().map(|v| v.0).collect::<Vec<_>>()
            ),
        }
    }
}

/// How requests that name no version are split between versions (`[traffic]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficConfig {
    /// Version serving unpinned traffic (default: the highest serving version).
    pub stable: Option<u64>,
    /// Candidate version taking `canary_percent` of unpinned traffic.
    pub canary: Option<u64>,
    /// Share of unpinned requests routed to the canary, 0–100.
    pub canary_percent: Option<f64>,
    /// Version that also receives a copy of `shadow_percent` of requests; its
    /// answers are compared and discarded.
    pub shadow: Option<u64>,
    /// Share of requests copied to the shadow version, 0–100.
    pub shadow_percent: Option<f64>,
}

/// When to take the canary's share back to 0 (`[rollback]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackConfig {
    /// Requests both stable and canary must have in the window before they are compared.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Sliding window over which error rates and p99 latencies are compared.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Largest canary error rate minus stable error rate (a fraction, 0.01 = 1 point).
    #[serde(default = "default_error_increase")]
    pub max_error_rate_increase: f64,
    /// Largest canary p99 latency divided by stable p99 latency.
    #[serde(default = "default_p99_ratio")]
    pub max_p99_ratio: f64,
}

fn default_min_requests() -> u64 {
    100
}
fn default_window_secs() -> u64 {
    60
}
fn default_error_increase() -> f64 {
    0.01
}
fn default_p99_ratio() -> f64 {
    1.5
}

impl Default for RollbackConfig {
    fn default() -> Self {
        RollbackConfig {
            min_requests: default_min_requests(),
            window_secs: default_window_secs(),
            max_error_rate_increase: default_error_increase(),
            max_p99_ratio: default_p99_ratio(),
        }
    }
}

impl TrafficConfig {
    /// Checks ranges; `field` prefixes the names in messages.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (name, p) in [
            ("canary_percent", self.canary_percent),
            ("shadow_percent", self.shadow_percent),
        ] {
            if let Some(p) = p {
                if !(0.0..=100.0).contains(&p) {
                    return Err((name.into(), format!("{p} is not between 0 and 100")));
                }
            }
        }
        if self.canary.is_some() && self.canary == self.stable {
            return Err(("canary".into(), "must differ from stable".into()));
        }
        Ok(())
    }
}

impl RollbackConfig {
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.min_requests == 0 {
            return Err(("min_requests".into(), "must be at least 1".into()));
        }
        if !(1..=3600).contains(&self.window_secs) {
            return Err(("window_secs".into(), "must be between 1 and 3600".into()));
        }
        if !(0.0..=1.0).contains(&self.max_error_rate_increase) {
            return Err((
                "max_error_rate_increase".into(),
                "is a fraction between 0 and 1".into(),
            ));
        }
        if !(self.max_p99_ratio.is_finite() && self.max_p99_ratio >= 1.0) {
            return Err(("max_p99_ratio".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

/// The contents of `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfigFile {
    /// `auto` (default), `onnxruntime` or `tract`.
    #[serde(default)]
    pub backend: BackendChoice,
    /// `cpu` (default), `cuda` or `cuda:N`.
    pub device: Option<String>,
    /// Per-instance placement, instead of `device`: `instance_count` instances on each
    /// device listed (like Triton's `instance_group` with `gpus`), e.g.
    /// `["cuda:0", "cuda:1"]`. Each device gets its own loaded copy of the model.
    pub devices: Option<Vec<String>>,
    /// When a GPU device cannot be used (no CUDA provider, no driver, a GPU outside
    /// `--gpus`), load the model on the CPU instead, with a warning in the log and
    /// `device="cpu"` on its metrics. Default false: the load fails.
    pub cpu_fallback: Option<bool>,
    /// On a GPU, let ONNX Runtime's CUDA provider use TF32 for float32 matrix
    /// multiplications and convolutions (faster on Ampere and later, about 1e-3
    /// relative error). Default true, as ONNX Runtime's; false for float32 accuracy.
    pub tf32: Option<bool>,
    /// Largest batch one request (or, with batching, one execution) may carry;
    /// 0 disables batching. Default: 32 when the model's first dimension is variable.
    pub max_batch_size: Option<u32>,
    /// Backend instances (threads) running this model in parallel. Default 1.
    pub instance_count: Option<usize>,
    /// Requests queued per version before new ones are rejected. Default 1024.
    pub max_queue_size: Option<usize>,
    /// Join concurrent requests into one backend execution. Default: true when the
    /// model batches (`max_batch_size` > 0).
    pub dynamic_batching: Option<bool>,
    /// How long the oldest queued request may wait for a batch to fill, in
    /// microseconds. Default 0: an idle instance takes what is queued at once.
    pub max_queue_delay_us: Option<u64>,
    /// Batch sizes dispatched as soon as they are reached, without waiting out
    /// `max_queue_delay_us`.
    #[serde(default)]
    pub preferred_batch_sizes: Vec<u32>,
    /// Default request timeout in microseconds (0 or absent: none). A request's own
    /// `timeout` parameter or gRPC deadline shortens it.
    pub timeout_us: Option<u64>,
    /// Threads one backend instance uses inside an operator (0: the runtime's default).
    pub intra_op_threads: Option<usize>,
    /// Whether ONNX Runtime's intra-op threads spin while waiting for work
    /// (default: the runtime's own, on). Off gives the CPU back to the server's
    /// network side between executions: more throughput when cores are scarce,
    /// more latency per execution.
    pub intra_op_spinning: Option<bool>,
    /// Model file name inside each version folder. Default `model.onnx`
    /// (`model.safetensors` for Candle).
    pub default_model_filename: Option<String>,
    /// Candle: the model family (`bert_embedding`, `mlp`).
    pub family: Option<String>,
    /// Candle text models: tokens per text, special tokens included (default: the
    /// model's own, from `sentence_bert_config.json` or `config.json`).
    pub max_sequence_length: Option<usize>,
    /// Candle text models: cut texts longer than `max_sequence_length` (default
    /// true) or reject them (400 / INVALID_ARGUMENT).
    pub truncate: Option<bool>,
    /// Token budget of one batched execution: rows times the longest row's tokens
    /// (an upper estimate made when the request is queued). Default: none.
    pub max_batch_tokens: Option<usize>,
    #[serde(default)]
    pub input: Vec<TensorConfig>,
    #[serde(default)]
    pub output: Vec<TensorConfig>,
    /// Which versions serve. Default: the latest one.
    pub version_policy: Option<VersionPolicyConfig>,
    /// Run a synthetic request through a new version before it serves. Default true.
    pub warmup: Option<bool>,
    /// Canary and shadow split of unpinned traffic.
    pub traffic: Option<TrafficConfig>,
    /// Automatic canary rollback (off when absent).
    pub rollback: Option<RollbackConfig>,
}

impl ModelConfigFile {
    /// Reads `<model_dir>/config.toml`; a missing file is the default config.
    pub fn load(model_dir: &Path) -> Result<Self, ConfigError> {
        let path = model_dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::parse(&text, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// A config given with a repository load request: Kiln's keys as a JSON object
    /// or as TOML text.
    pub fn parse_override(text: &str) -> Result<Self, ConfigError> {
        let path = Path::new("<load request config>");
        if text.trim_start().starts_with('{') {
            let cfg: Self = serde_json::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            cfg.validate(path)?;
            Ok(cfg)
        } else {
            Self::parse(text, path)
        }
    }

    /// The part of the config a loaded version depends on: a change here reloads
    /// the versions, a change elsewhere (policy, traffic, rollback) does not.
    pub fn for_versions(&self) -> Self {
        ModelConfigFile {
            version_policy: None,
            traffic: None,
            rollback: None,
            ..self.clone()
        }
    }

    pub fn version_policy(&self) -> VersionPolicy {
        match &self.version_policy {
            None => VersionPolicy::Latest(1),
            Some(p) => match (p.latest, p.all, &p.specific) {
                (Some(n), _, _) => VersionPolicy::Latest(n as usize),
                (_, Some(true), _) => VersionPolicy::All,
                (_, _, Some(list)) => VersionPolicy::Specific(
                    list.iter().map(|&v| crate::model::Version(v)).collect(),
                ),
                _ => VersionPolicy::Latest(1),
            },
        }
    }

    pub fn warms_up(&self) -> bool {
        self.warmup.unwrap_or(true)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        if let Some(d) = &self.device {
            Device::parse(d).map_err(|m| invalid("device", m))?;
        }
        if let Some(list) = &self.devices {
            if self.device.is_some() {
                return Err(invalid(
                    "devices",
                    "set either device or devices, not both".into(),
                ));
            }
            if list.is_empty() || list.len() > 64 {
                return Err(invalid(
                    "devices",
                    "must list between 1 and 64 devices".into(),
                ));
            }
            for d in list {
                Device::parse(d).map_err(|m| invalid("devices", m))?;
            }
            if list.len() * self.instance_count.unwrap_or(1) > 256 {
                return Err(invalid(
                    "devices",
                    "instance_count × devices must be at most 256 instances".into(),
                ));
            }
        }
        if self.instance_count == Some(0) || self.instance_count.is_some_and(|n| n > 256) {
            return Err(invalid(
                "instance_count",
                "must be between 1 and 256".into(),
            ));
        }
        if self.max_queue_size == Some(0) || self.max_queue_size.is_some_and(|n| n > 1 << 20) {
            return Err(invalid(
                "max_queue_size",
                "must be between 1 and 1048576".into(),
            ));
        }
        if self
            .max_batch_size
            .is_some_and(|n| n > MAX_BATCH_SIZE_LIMIT)
        {
            return Err(invalid(
                "max_batch_size",
                format!("must be at most {MAX_BATCH_SIZE_LIMIT}"),
            ));
        }
        if self
            .max_queue_delay_us
            .is_some_and(|d| d > MAX_QUEUE_DELAY_US_LIMIT)
        {
            return Err(invalid(
                "max_queue_delay_us",
                format!("must be at most {MAX_QUEUE_DELAY_US_LIMIT} (10 s)"),
            ));
        }
        if let Some(&bad) = self
            .preferred_batch_sizes
            .iter()
            .find(|&&n| n == 0 || self.max_batch_size.is_some_and(|m| n > m))
        {
            return Err(invalid(
                "preferred_batch_sizes",
                format!("{bad} is not between 1 and max_batch_size"),
            ));
        }
        if let Some(f) = &self.default_model_filename {
            if f.is_empty() || f.contains('/') || f.contains("..") {
                return Err(invalid(
                    "default_model_filename",
                    format!("'{f}' must be a plain file name"),
                ));
            }
        }
        if (self.family.is_some() || self.max_sequence_length.is_some() || self.truncate.is_some())
            && self.backend != BackendChoice::Candle
        {
            return Err(invalid(
                "family",
                "family, max_sequence_length and truncate apply to backend = \"candle\" only"
                    .into(),
            ));
        }
        if self.backend == BackendChoice::Candle && self.family.is_none() {
            return Err(invalid(
                "family",
                "backend = \"candle\" needs a family (bert_embedding or mlp)".into(),
            ));
        }
        if self
            .max_sequence_length
            .is_some_and(|n| !(3..=8192).contains(&n))
        {
            return Err(invalid(
                "max_sequence_length",
                "must be between 3 and 8192".into(),
            ));
        }
        if let Some(p) = &self.version_policy {
            let set = [p.latest.is_some(), p.all.is_some(), p.specific.is_some()];
            if set.iter().filter(|&&b| b).count() != 1 {
                return Err(invalid(
                    "version_policy",
                    "set exactly one of latest = N, all = true, specific = [..]".into(),
                ));
            }
            if p.latest == Some(0) {
                return Err(invalid(
                    "version_policy.latest",
                    "must be at least 1".into(),
                ));
            }
            if p.all == Some(false) {
                return Err(invalid(
                    "version_policy.all",
                    "only `all = true` means anything".into(),
                ));
            }
            if p.specific.as_ref().is_some_and(|l| l.is_empty()) {
                return Err(invalid(
                    "version_policy.specific",
                    "lists no version".into(),
                ));
            }
        }
        if let Some(t) = &self.traffic {
            t.check()
                .map_err(|(f, m)| invalid(&format!("traffic.{f}"), m))?;
        }
        if let Some(r) = &self.rollback {
            r.check()
                .map_err(|(f, m)| invalid(&format!("rollback.{f}"), m))?;
        }
        for (field, list) in [("input", &self.input), ("output", &self.output)] {
            for (i, t) in list.iter().enumerate() {
                if let Some(dt) = &t.datatype {
                    dt.parse::<DataType>()
                        .map_err(|e| invalid(&format!("{field}[{i}].datatype"), e.to_string()))?;
                }
                if let Some(dims) = &t.dims {
                    if dims.iter().any(|&d| d < -1) {
                        return Err(invalid(
                            &format!("{field}[{i}].dims"),
                            format!("{dims:?}: a dimension is a size or -1"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn model_filename(&self) -> &str {
        self.default_model_filename
            .as_deref()
            .unwrap_or(if self.backend == BackendChoice::Candle {
                DEFAULT_CANDLE_FILENAME
            } else {
                DEFAULT_MODEL_FILENAME
            })
    }

    /// Where the model runs (validated when the config was read; `cpu` when unset).
    pub fn device(&self) -> Device {
        self.device
            .as_deref()
            .and_then(|d| Device::parse(d).ok())
            .unwrap_or_default()
    }

    /// The device of each instance, in order: `instance_count` instances on each
    /// device of `devices`, or on `device`.
    pub fn placements(&self) -> Vec<Device> {
        let devices: Vec<Device> = match &self.devices {
            Some(list) => list.iter().filter_map(|d| Device::parse(d).ok()).collect(),
            None => vec![self.device()],
        };
        let per_device = self.instance_count.unwrap_or(1);
        devices
            .iter()
            .flat_map(|&d| std::iter::repeat_n(d, per_device))
            .collect()
    }

    /// Whether a GPU model may fall back to the CPU (logged) instead of failing.
    pub fn cpu_fallback(&self) -> bool {
        self.cpu_fallback.unwrap_or(false)
    }

    /// Instances on each device (`instance_count`, default 1).
    pub fn instances_per_device(&self) -> usize {
        self.instance_count.unwrap_or(1)
    }

    /// Whether the CUDA provider may use TF32 (default true).
    pub fn tf32(&self) -> bool {
        self.tf32.unwrap_or(true)
    }

    /// Instances in all: `instance_count` on each device.
    pub fn instances(&self) -> usize {
        self.placements().len().max(1)
    }

    pub fn queue_size(&self) -> usize {
        self.max_queue_size.unwrap_or(DEFAULT_MAX_QUEUE_SIZE)
    }

    /// Whether requests are batched, once `max_batch_size` is resolved.
    pub fn batching(&self, max_batch_size: u32) -> bool {
        max_batch_size > 1 && self.dynamic_batching.unwrap_or(true)
    }

    pub fn queue_delay(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.max_queue_delay_us.unwrap_or(0))
    }

    /// The default request timeout, if any.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.timeout_us
            .filter(|&t| t > 0)
            .map(std::time::Duration::from_micros)
    }
}

/// A model's interface once the config and the model file are reconciled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSignature {
    /// 0: no batching; shapes are exactly `inputs[].shape`.
    pub max_batch_size: u32,
    /// Full shapes; when `max_batch_size > 0` the first dimension is the batch (-1).
    pub signature: ModelSignature,
}

/// Reconciles what the model file declares with what `config.toml` says.
pub fn resolve_signature(
    model: &ModelSignature,
    cfg: &ModelConfigFile,
    path: &Path,
) -> Result<ResolvedSignature, ConfigError> {
    let invalid = |field: String, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        field,
        message,
    };
    let dynamic = model.has_dynamic_batch();
    let max_batch_size = match cfg.max_batch_size {
        Some(n) if n > 0 && !dynamic => {
            return Err(invalid(
                "max_batch_size".into(),
                format!("{n} given, but the model's inputs and outputs do not all have a variable first dimension, so it cannot batch; set 0"),
            ))
        }
        Some(n) => n,
        None if dynamic => DEFAULT_MAX_BATCH_SIZE,
        None => 0,
    };
    if let Some(&bad) = cfg
        .preferred_batch_sizes
        .iter()
        .find(|&&n| n > max_batch_size)
    {
        return Err(invalid(
            "preferred_batch_sizes".into(),
            format!("{bad} is larger than max_batch_size ({max_batch_size})"),
        ));
    }
    let mut signature = model.clone();
    for (field, given, specs) in [
        ("input", &cfg.input, &mut signature.inputs),
        ("output", &cfg.output, &mut signature.outputs),
    ] {
        for (i, t) in given.iter().enumerate() {
            let Some(spec) = specs.iter_mut().find(|s| s.name == t.name) else {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                return Err(invalid(
                    format!("{field}[{i}].name"),
                    format!("the model has no {field} '{}' (it has {names:?})", t.name),
                ));
            };
            if let Some(dt) = &t.datatype {
                let dt: DataType = dt.parse().map_err(|e: crate::dtype::UnknownDataType| {
                    invalid(format!("{field}[{i}].datatype"), e.to_string())
                })?;
                if dt != spec.dtype {
                    return Err(invalid(
                        format!("{field}[{i}].datatype"),
                        format!(
                            "{dt} given, but the model's {field} '{}' is {}",
                            t.name, spec.dtype
                        ),
                    ));
                }
            }
            if let Some(dims) = &t.dims {
                let full: Vec<i64> = if max_batch_size > 0 {
                    std::iter::once(-1).chain(dims.iter().copied()).collect()
                } else {
                    dims.clone()
                };
                let compatible = full.len() == spec.shape.len()
                    && full
                        .iter()
                        .zip(&spec.shape)
                        .all(|(&c, &m)| m == -1 || c == m);
                if !compatible {
                    return Err(invalid(
                        format!("{field}[{i}].dims"),
                        format!(
                            "{dims:?} does not fit the model's shape {:?} for '{}'{}",
                            spec.shape,
                            t.name,
                            if max_batch_size > 0 {
                                " (dims exclude the batch dimension)"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                spec.shape = full;
            }
        }
    }
    Ok(ResolvedSignature {
        max_batch_size,
        signature,
    })
}

/// Whether an input is only a batch of scalars (e.g. texts, `[batch]`). Triton's
/// config cannot say `dims: []`, so such an input is reported as `dims: [1]` with
/// `reshape: { shape: [] }` (Triton's own convention) and accepted as `[batch, 1]`
/// as well as `[batch]`; perf_analyzer and tritonclient send the former.
pub fn scalar_per_row(spec: &TensorSpec, max_batch_size: u32) -> bool {
    max_batch_size > 0 && spec.shape.len() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> ModelSignature {
        ModelSignature {
            inputs: vec![TensorSpec {
                name: "x".into(),
                dtype: DataType::Fp32,
                shape: vec![-1, -1],
            }],
            outputs: vec![TensorSpec {
                name: "y".into(),
                dtype: DataType::Fp32,
                shape: vec![-1, 4],
            }],
        }
    }

    fn parse(text: &str) -> Result<ModelConfigFile, ConfigError> {
        ModelConfigFile::parse(text, Path::new("m/config.toml"))
    }

    #[test]
    fn empty_config_derives_everything() {
        let cfg = parse("").unwrap();
        let r = resolve_signature(&sig(), &cfg, Path::new("m")).unwrap();
        assert_eq!(r.max_batch_size, DEFAULT_MAX_BATCH_SIZE);
        assert_eq!(r.signature, sig());
    }

    #[test]
    fn dims_narrow_the_model_shape() {
        let cfg = parse("max_batch_size = 8\n[[input]]\nname = \"x\"\ndims = [16]\n").unwrap();
        let r = resolve_signature(&sig(), &cfg, Path::new("m")).unwrap();
        assert_eq!(r.max_batch_size, 8);
        assert_eq!(r.signature.inputs[0].shape, vec![-1, 16]);
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = parse("backend = \"tensorrt\"").unwrap_err().to_string();
        assert!(e.contains("m/config.toml"), "{e}");
        let e = parse("max_batch = 3").unwrap_err().to_string();
        assert!(e.contains("max_batch"), "{e}");
        let e = parse("instance_count = 0").unwrap_err().to_string();
        assert!(e.contains("instance_count"), "{e}");
        for (bad, why) in [
            ("device = \"cpu\"\ndevices = [\"cpu\"]", "not both"),
            ("devices = []", "between 1 and 64"),
            ("devices = [\"cuda:0\", \"tpu\"]", "not a device"),
            (
                "devices = [\"cpu\", \"cpu\"]\ninstance_count = 200",
                "at most 256",
            ),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("devices") && e.contains(why), "{bad}: {e}");
        }
        for bad in [
            "max_batch_size = 4\npreferred_batch_sizes = [8]",
            "preferred_batch_sizes = [0]",
            "max_queue_delay_us = 99999999999",
            "max_batch_size = 100000",
            "max_queue_size = 0",
        ] {
            let field = bad.lines().last().unwrap().split(' ').next().unwrap();
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
        let cfg = parse("preferred_batch_sizes = [64]").unwrap();
        let e = resolve_signature(&sig(), &cfg, Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("preferred_batch_sizes"), "{e}");
        let e = parse("[[input]]\nname = \"x\"\ndatatype = \"FP8\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("input[0].datatype"), "{e}");
        let cfg = parse("[[input]]\nname = \"nope\"").unwrap();
        let e = resolve_signature(&sig(), &cfg, Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("input[0].name") && e.contains("nope"), "{e}");
        let cfg = parse("[[output]]\nname = \"y\"\ndims = [5]").unwrap();
        let e = resolve_signature(&sig(), &cfg, Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("output[0].dims"), "{e}");
        let cfg = parse("[[output]]\nname = \"y\"\ndatatype = \"INT64\"").unwrap();
        assert!(resolve_signature(&sig(), &cfg, Path::new("m")).is_err());
    }

    #[test]
    fn batching_defaults_on_for_batching_models() {
        let cfg = parse("").unwrap();
        assert!(cfg.batching(32));
        assert!(!cfg.batching(0));
        assert!(!cfg.batching(1));
        assert_eq!(cfg.queue_delay(), std::time::Duration::ZERO);
        assert_eq!(cfg.timeout(), None);
        let cfg = parse("dynamic_batching = false\ntimeout_us = 2500\nmax_queue_delay_us = 100\npreferred_batch_sizes = [4, 8]").unwrap();
        assert!(!cfg.batching(32));
        assert_eq!(cfg.timeout(), Some(std::time::Duration::from_micros(2500)));
        assert_eq!(cfg.queue_delay(), std::time::Duration::from_micros(100));
    }

    #[test]
    fn version_policy_traffic_and_rollback() {
        use crate::model::Version;
        let on_disk: Vec<Version> = [1, 2, 5].map(Version).to_vec();
        let pick = |text: &str| -> Vec<u64> {
            parse(text)
                .unwrap()
                .version_policy()
                .select(&on_disk)
                .iter()
                .map(|v| v.0)
                .collect()
        };
        assert_eq!(pick(""), [5]);
        assert_eq!(pick("version_policy = { latest = 2 }"), [2, 5]);
        assert_eq!(pick("version_policy = { latest = 9 }"), [1, 2, 5]);
        assert_eq!(pick("version_policy = { all = true }"), [1, 2, 5]);
        assert_eq!(pick("version_policy = { specific = [1, 5, 7] }"), [1, 5]);
        for bad in [
            "version_policy = { latest = 0 }",
            "version_policy = { latest = 1, all = true }",
            "version_policy = {}",
            "version_policy = { specific = [] }",
            "version_policy = { newest = 1 }",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("version_policy") || e.contains("newest"),
                "{bad}: {e}"
            );
        }
        let cfg = parse(
            "[traffic]\ncanary = 2\ncanary_percent = 12.5\n[rollback]\nmax_p99_ratio = 2.0\n",
        )
        .unwrap();
        assert_eq!(cfg.traffic.as_ref().unwrap().canary_percent, Some(12.5));
        let rb = cfg.rollback.as_ref().unwrap();
        assert_eq!(
            (rb.min_requests, rb.window_secs, rb.max_p99_ratio),
            (100, 60, 2.0)
        );
        // Only traffic changed: the versions need no reload.
        let other = parse("[traffic]\ncanary = 3\n").unwrap();
        assert_eq!(cfg.for_versions(), other.for_versions());
        assert_ne!(
            cfg.for_versions(),
            parse("max_queue_size = 3").unwrap().for_versions()
        );
        for (bad, field) in [
            ("[traffic]\ncanary_percent = 101", "traffic.canary_percent"),
            ("[traffic]\nshadow_percent = -1", "traffic.shadow_percent"),
            ("[traffic]\nstable = 2\ncanary = 2", "traffic.canary"),
            ("[rollback]\nmin_requests = 0", "rollback.min_requests"),
            ("[rollback]\nmax_p99_ratio = 0.5", "rollback.max_p99_ratio"),
            (
                "[rollback]\nmax_error_rate_increase = 2",
                "rollback.max_error_rate_increase",
            ),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
        let json = ModelConfigFile::parse_override(
            r#"{"max_batch_size": 4, "traffic": {"canary": 2, "canary_percent": 5}}"#,
        )
        .unwrap();
        assert_eq!(json.max_batch_size, Some(4));
        assert_eq!(json.traffic.unwrap().canary, Some(2));
        assert!(ModelConfigFile::parse_override("max_batch_size = 4").is_ok());
        let e = ModelConfigFile::parse_override(r#"{"max_batch": 4}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_batch"), "{e}");
    }

    #[test]
    fn fixed_first_dim_cannot_batch() {
        let mut s = sig();
        s.outputs[0].shape = vec![1, 4];
        let r = resolve_signature(&s, &parse("").unwrap(), Path::new("m")).unwrap();
        assert_eq!(r.max_batch_size, 0);
        assert!(
            resolve_signature(&s, &parse("max_batch_size = 4").unwrap(), Path::new("m")).is_err()
        );
    }
}

/// Where a model runs: `device = "cpu"` (the default), or `"cuda"` / `"cuda:N"`
/// (GPU N as CUDA numbers the GPUs this process sees; `cuda` is `cuda:0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(u32),
}

impl Device {
    pub fn parse(s: &str) -> Result<Device, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|&n| n < 1024)
                .map(Device::Cuda)
                .ok_or_else(|| {
                    format!("'{s}' is not a device (expected \"cpu\", \"cuda\" or \"cuda:N\")")
                }),
        }
    }
}

/// The distinct devices of `devices`, in order of first appearance, with how many
/// times each appears (one instance group per device).
pub fn group_devices(devices: &[Device]) -> Vec<(Device, usize)> {
    let mut groups: Vec<(Device, usize)> = Vec::new();
    for d in devices {
        match groups.iter_mut().find(|(g, _)| g == d) {
            Some((_, n)) => *n += 1,
            None => groups.push((*d, 1)),
        }
    }
    groups
}

/// The `device` label of a version whose instances run on `devices`: the distinct
/// devices joined by commas (`cpu`, `cuda:0`, `cuda:0,cpu`).
pub fn device_label(devices: &[Device]) -> String {
    let names: Vec<String> = group_devices(devices)
        .iter()
        .map(|(d, _)| d.to_string())
        .collect();
    names.join(",")
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod device_tests {
    use super::Device;

    #[test]
    fn instances_are_placed_per_device() {
        let cfg: super::ModelConfigFile =
            toml::from_str("devices = [\"cuda:1\", \"cpu\"]\ninstance_count = 2").unwrap();
        assert_eq!(
            cfg.placements(),
            [Device::Cuda(1), Device::Cuda(1), Device::Cpu, Device::Cpu]
        );
        assert_eq!(cfg.instances(), 4);
        let cfg: super::ModelConfigFile = toml::from_str("device = \"cuda\"").unwrap();
        assert_eq!(cfg.placements(), [Device::Cuda(0)]);
        assert!(!cfg.cpu_fallback());
        let cfg = super::ModelConfigFile::default();
        assert_eq!(cfg.placements(), [Device::Cpu]);
    }

    #[test]
    fn devices_parse_and_print() {
        assert_eq!(Device::parse("cpu"), Ok(Device::Cpu));
        assert_eq!(Device::parse("CUDA"), Ok(Device::Cuda(0)));
        assert_eq!(Device::parse("cuda:3"), Ok(Device::Cuda(3)));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in [
            "",
            "tpu",
            "cuda:",
            "cuda:-1",
            "cuda:x",
            "cuda:99999",
            "cuda 1",
        ] {
            let e = Device::parse(bad).unwrap_err();
            assert!(e.contains("not a device"), "{bad}: {e}");
        }
    }
}
