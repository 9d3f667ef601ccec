//! The typed model config: `config.toml` parsed once into devices, datatypes, a
//! model family and bounded numbers, with defaults filled in. Every check lives
//! in the `TryFrom<ConfigFile>` below, and its error names the field.

use crate::config::device::Device;
use crate::config::error::{ConfigError, FieldError};
use crate::config::file::{
    BackendChoice, ConfigFile, TensorConfig, VersionPolicyConfig, CONFIG_FILE,
};
use crate::config::traffic::{RollbackConfig, TrafficConfig};
use crate::dtype::DataType;
use crate::model::Version;
use std::path::Path;
use std::time::Duration;

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
/// Most instances of one version, over all its devices.
pub const MAX_INSTANCES: usize = 256;
/// Most devices one version may list.
pub const MAX_DEVICES: usize = 64;
/// Largest `max_queue_size` a config may set.
pub const MAX_QUEUE_SIZE_LIMIT: usize = 1 << 20;
/// Largest `intra_op_threads` a config may set.
pub const MAX_INTRA_OP_THREADS: usize = 1024;

/// Which versions serve, once `version_policy` is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    Latest(usize),
    All,
    Specific(Vec<Version>),
}

impl VersionPolicy {
    /// The versions to serve out of those on disk (ascending in, ascending out).
    pub fn select(&self, on_disk: &[Version]) -> Vec<Version> {
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

/// A model family: what Kiln wraps around the runtime (Candle builds the whole
/// network in Rust; ONNX Runtime runs the graph and Kiln adds the tokenizer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// A BERT encoder with mean pooling and L2 normalisation (sentence embeddings).
    BertEmbedding,
    /// A multi-layer perceptron described by `config.json`.
    Mlp,
}

impl ModelFamily {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "bert_embedding" => Ok(ModelFamily::BertEmbedding),
            "mlp" => Ok(ModelFamily::Mlp),
            other => Err(format!(
                "unknown family '{other}' (expected bert_embedding or mlp)"
            )),
        }
    }
}

/// An input or output as the config narrows it (Triton's convention: `dims`
/// exclude the batch dimension when the model batches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorOverride {
    pub name: String,
    pub datatype: Option<DataType>,
    pub dims: Option<Vec<i64>>,
}

/// A model's config, checked and typed. See [`ConfigFile`] for what each key means.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub backend: BackendChoice,
    /// The devices instances are placed on, in order, each listed once.
    pub devices: Vec<Device>,
    /// Instances on each device (1 to [`MAX_INSTANCES`] in all).
    pub instances_per_device: usize,
    pub cpu_fallback: bool,
    pub tf32: bool,
    /// `None`: derived from the model (32 when its first dimension is variable).
    pub max_batch_size: Option<u32>,
    pub max_queue_size: usize,
    /// `None`: on when the model batches.
    pub dynamic_batching: Option<bool>,
    pub max_queue_delay: Duration,
    pub preferred_batch_sizes: Vec<u32>,
    /// The default request timeout; `None`: none.
    pub timeout: Option<Duration>,
    /// `None`: the runtime's default.
    pub intra_op_threads: Option<usize>,
    pub intra_op_spinning: Option<bool>,
    pub intra_op_spin_between_runs: Option<bool>,
    pub model_filename: String,
    /// `default_model_filename` was set: only that file is the model. Else a
    /// version without the default file may hold its model under another name
    /// (see `repository::model_file`).
    pub model_filename_chosen: bool,
    pub family: Option<ModelFamily>,
    pub max_sequence_length: Option<usize>,
    pub truncate: bool,
    /// `None`: the backend's default for the device; `Some(0)`: the whole batch.
    pub max_tokens_per_call: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub input: Vec<TensorOverride>,
    pub output: Vec<TensorOverride>,
    pub version_policy: VersionPolicy,
    pub warmup: bool,
    pub traffic: Option<TrafficConfig>,
    pub rollback: Option<RollbackConfig>,
}

impl Default for ModelConfig {
    /// The config of a model without `config.toml`.
    fn default() -> Self {
        ModelConfig {
            backend: BackendChoice::Auto,
            devices: vec![Device::Cpu],
            instances_per_device: 1,
            cpu_fallback: false,
            tf32: true,
            max_batch_size: None,
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            dynamic_batching: None,
            max_queue_delay: Duration::ZERO,
            preferred_batch_sizes: vec![],
            timeout: None,
            intra_op_threads: None,
            intra_op_spinning: None,
            intra_op_spin_between_runs: None,
            model_filename: DEFAULT_MODEL_FILENAME.into(),
            model_filename_chosen: false,
            family: None,
            max_sequence_length: None,
            truncate: true,
            max_tokens_per_call: None,
            max_batch_tokens: None,
            input: vec![],
            output: vec![],
            version_policy: VersionPolicy::Latest(1),
            warmup: true,
            traffic: None,
            rollback: None,
        }
    }
}

impl ModelConfig {
    /// Reads `<model_dir>/config.toml` from disk; a missing file is the default config.
    pub fn load(model_dir: &Path) -> Result<Self, ConfigError> {
        let path = model_dir.join(CONFIG_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses `config.toml`'s text (`path` names the file in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Self::try_from(file).map_err(|e| e.in_file(path))
    }

    /// A config given with a repository load request: Kiln's keys as a JSON object
    /// or as TOML text.
    pub fn parse_override(text: &str) -> Result<Self, ConfigError> {
        let path = Path::new("<load request config>");
        if text.trim_start().starts_with('{') {
            let file: ConfigFile = serde_json::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            Self::try_from(file).map_err(|e| e.in_file(path))
        } else {
            Self::parse(text, path)
        }
    }

    /// The part of the config a loaded version depends on: a change here reloads
    /// the versions, a change elsewhere (policy, traffic, rollback) does not.
    pub fn for_versions(&self) -> Self {
        ModelConfig {
            version_policy: VersionPolicy::Latest(1),
            traffic: None,
            rollback: None,
            ..self.clone()
        }
    }

    /// The device of each instance, in order: `instances_per_device` on each device.
    pub fn placements(&self) -> Vec<Device> {
        self.devices
            .iter()
            .flat_map(|&d| std::iter::repeat_n(d, self.instances_per_device))
            .collect()
    }

    /// Whether requests are batched, once `max_batch_size` is resolved.
    pub fn batching(&self, max_batch_size: u32) -> bool {
        max_batch_size > 1 && self.dynamic_batching.unwrap_or(true)
    }
}

/// A number that must lie in `range` (the message says the range).
fn bounded<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, FieldError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(FieldError::new(
            field,
            format!("must be between {} and {}", range.start(), range.end()),
        ))
    }
}

fn version_policy(p: Option<VersionPolicyConfig>) -> Result<VersionPolicy, FieldError> {
    let Some(p) = p else {
        return Ok(VersionPolicy::Latest(1));
    };
    match (p.latest, p.all, p.specific) {
        (Some(0), None, None) => Err(FieldError::new(
            "version_policy.latest",
            "must be at least 1",
        )),
        (Some(n), None, None) => Ok(VersionPolicy::Latest(
            usize::try_from(n).unwrap_or(usize::MAX),
        )),
        (None, Some(true), None) => Ok(VersionPolicy::All),
        (None, Some(false), None) => Err(FieldError::new(
            "version_policy.all",
            "only `all = true` means anything",
        )),
        (None, None, Some(list)) if list.is_empty() => Err(FieldError::new(
            "version_policy.specific",
            "lists no version",
        )),
        (None, None, Some(list)) => Ok(VersionPolicy::Specific(
            list.into_iter().map(Version).collect(),
        )),
        _ => Err(FieldError::new(
            "version_policy",
            "set exactly one of latest = N, all = true, specific = [..]",
        )),
    }
}

fn tensors(field: &str, list: Vec<TensorConfig>) -> Result<Vec<TensorOverride>, FieldError> {
    list.into_iter()
        .enumerate()
        .map(|(i, t)| {
            let datatype = t
                .datatype
                .map(|d| d.parse::<DataType>())
                .transpose()
                .map_err(|e| FieldError::new(format!("{field}[{i}].datatype"), e.to_string()))?;
            if let Some(dims) = &t.dims {
                if dims.iter().any(|&d| d < -1) {
                    return Err(FieldError::new(
                        format!("{field}[{i}].dims"),
                        format!("{dims:?}: a dimension is a size or -1"),
                    ));
                }
            }
            Ok(TensorOverride {
                name: t.name,
                datatype,
                dims: t.dims,
            })
        })
        .collect()
}

impl TryFrom<ConfigFile> for ModelConfig {
    type Error = FieldError;

    fn try_from(f: ConfigFile) -> Result<Self, FieldError> {
        let d = ModelConfig::default();
        let parse_device =
            |field: &str, s: &str| Device::parse(s).map_err(|m| FieldError::new(field, m));
        let devices = match (&f.device, &f.devices) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "devices",
                    "set either device or devices, not both",
                ))
            }
            (Some(one), None) => vec![parse_device("device", one)?],
            (None, Some(list)) => {
                if list.is_empty() || list.len() > MAX_DEVICES {
                    return Err(FieldError::new(
                        "devices",
                        format!("must list between 1 and {MAX_DEVICES} devices"),
                    ));
                }
                let mut devices = Vec::with_capacity(list.len());
                for s in list {
                    devices.push(parse_device("devices", s)?);
                }
                devices
            }
            (None, None) => d.devices.clone(),
        };
        let instances_per_device = match f.instance_count {
            None => 1,
            Some(n) => bounded("instance_count", n, 1..=MAX_INSTANCES)?,
        };
        if f.devices.is_some() && devices.len().saturating_mul(instances_per_device) > MAX_INSTANCES
        {
            return Err(FieldError::new(
                "devices",
                format!("instance_count × devices must be at most {MAX_INSTANCES} instances"),
            ));
        }
        let max_queue_size = match f.max_queue_size {
            None => DEFAULT_MAX_QUEUE_SIZE,
            Some(n) => bounded("max_queue_size", n, 1..=MAX_QUEUE_SIZE_LIMIT)?,
        };
        if let Some(n) = f.max_batch_size {
            if n > MAX_BATCH_SIZE_LIMIT {
                return Err(FieldError::new(
                    "max_batch_size",
                    format!("must be at most {MAX_BATCH_SIZE_LIMIT}"),
                ));
            }
        }
        let delay_us = f.max_queue_delay_us.unwrap_or(0);
        if delay_us > MAX_QUEUE_DELAY_US_LIMIT {
            return Err(FieldError::new(
                "max_queue_delay_us",
                format!("must be at most {MAX_QUEUE_DELAY_US_LIMIT} (10 s)"),
            ));
        }
        if let Some(&bad) = f
            .preferred_batch_sizes
            .iter()
            .find(|&&n| n == 0 || f.max_batch_size.is_some_and(|m| n > m))
        {
            return Err(FieldError::new(
                "preferred_batch_sizes",
                format!("{bad} is not between 1 and max_batch_size"),
            ));
        }
        let intra_op_threads = match f.intra_op_threads {
            None | Some(0) => None,
            Some(n) => Some(bounded("intra_op_threads", n, 0..=MAX_INTRA_OP_THREADS)?),
        };
        let model_filename_chosen = f.default_model_filename.is_some();
        let model_filename = match f.default_model_filename {
            Some(name) if name.is_empty() || name.contains('/') || name.contains("..") => {
                return Err(FieldError::new(
                    "default_model_filename",
                    format!("'{name}' must be a plain file name"),
                ))
            }
            Some(name) => name,
            None if f.backend == BackendChoice::Candle => DEFAULT_CANDLE_FILENAME.into(),
            None => DEFAULT_MODEL_FILENAME.into(),
        };
        let family = f
            .family
            .as_deref()
            .map(ModelFamily::parse)
            .transpose()
            .map_err(|m| FieldError::new("family", m))?;
        match (f.backend, family) {
            (BackendChoice::Candle, None) => {
                return Err(FieldError::new(
                    "family",
                    "backend = \"candle\" needs a family (bert_embedding or mlp)",
                ))
            }
            (BackendChoice::Candle, Some(_))
            | (BackendChoice::Onnxruntime, Some(ModelFamily::BertEmbedding)) => {}
            (_, Some(ModelFamily::BertEmbedding)) => {
                return Err(FieldError::new(
                    "family",
                    "family = \"bert_embedding\" needs backend = \"onnxruntime\" or \"candle\"",
                ))
            }
            (_, Some(ModelFamily::Mlp)) => {
                return Err(FieldError::new(
                    "family",
                    "family = \"mlp\" needs backend = \"candle\"",
                ))
            }
            (_, None)
                if f.max_sequence_length.is_some()
                    || f.truncate.is_some()
                    || f.max_tokens_per_call.is_some() =>
            {
                return Err(FieldError::new(
                    "max_sequence_length",
                    "max_sequence_length, truncate and max_tokens_per_call apply to text models (family = \"bert_embedding\") only",
                ))
            }
            (_, None) => {}
        }
        let max_sequence_length = f
            .max_sequence_length
            .map(|n| bounded("max_sequence_length", n, 3..=8192))
            .transpose()?;
        if let Some(t) = &f.traffic {
            t.check()
                .map_err(|(field, m)| FieldError::new(format!("traffic.{field}"), m))?;
        }
        if let Some(r) = &f.rollback {
            r.check()
                .map_err(|(field, m)| FieldError::new(format!("rollback.{field}"), m))?;
        }
        Ok(ModelConfig {
            backend: f.backend,
            devices,
            instances_per_device,
            cpu_fallback: f.cpu_fallback.unwrap_or(d.cpu_fallback),
            tf32: f.tf32.unwrap_or(d.tf32),
            max_batch_size: f.max_batch_size,
            max_queue_size,
            dynamic_batching: f.dynamic_batching,
            max_queue_delay: Duration::from_micros(delay_us),
            preferred_batch_sizes: f.preferred_batch_sizes,
            timeout: f.timeout_us.filter(|&t| t > 0).map(Duration::from_micros),
            intra_op_threads,
            intra_op_spinning: f.intra_op_spinning,
            intra_op_spin_between_runs: f.intra_op_spin_between_runs,
            model_filename,
            model_filename_chosen,
            family,
            max_sequence_length,
            truncate: f.truncate.unwrap_or(d.truncate),
            max_tokens_per_call: f.max_tokens_per_call,
            max_batch_tokens: f.max_batch_tokens,
            input: tensors("input", f.input)?,
            output: tensors("output", f.output)?,
            version_policy: version_policy(f.version_policy)?,
            warmup: f.warmup.unwrap_or(d.warmup),
            traffic: f.traffic,
            rollback: f.rollback,
        })
    }
}
