//! The serde shape of `config.toml` (and of a load request's `config`): what
//! the file says, before it is checked. `ModelConfig::try_from` turns it into the
//! typed config the rest of the server reads.

use crate::config::traffic::{RollbackConfig, TrafficConfig};
use serde::{Deserialize, Serialize};

/// Name of the per-model configuration file.
pub const CONFIG_FILE: &str = "config.toml";

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

/// `config.toml` as written: every key optional, checked and typed by
/// [`ModelConfig`](crate::config::model::ModelConfig).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
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
    /// Whether those threads go on spinning after an execution ends, waiting
    /// for the next (default: the runtime's own, yes). No: they spin within an
    /// execution, between its operators, and sleep between executions, so an
    /// idle or lightly loaded server does not burn cores waiting.
    pub intra_op_spin_between_runs: Option<bool>,
    /// Model file name inside each version folder. Default `model.onnx`
    /// (`model.safetensors` for Candle).
    pub default_model_filename: Option<String>,
    /// The model family: `bert_embedding` (Candle or ONNX Runtime: text in, the
    /// tokenizer in the server, a sentence embedding out) or `mlp` (Candle).
    pub family: Option<String>,
    /// Text models: tokens per text, special tokens included (default: the
    /// model's own, from `sentence_bert_config.json` or `config.json`).
    pub max_sequence_length: Option<usize>,
    /// Text models: cut texts longer than `max_sequence_length` (default
    /// true) or reject them (400 / INVALID_ARGUMENT).
    pub truncate: Option<bool>,
    /// Text models: padded tokens per encoder call. A batch is sorted by text
    /// length and cut into calls within this (default: 2048 on the CPU, the
    /// whole batch on a GPU; 0: the whole batch).
    pub max_tokens_per_call: Option<usize>,
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
