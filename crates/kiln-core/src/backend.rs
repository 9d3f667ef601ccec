//! The backend trait every runtime implements, and the choice among them.

use crate::config::{BackendChoice, Device, ModelConfigFile};
use crate::model::{ModelSignature, Version};
use crate::tensor::Tensor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend '{backend}' is not available: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    #[error("{backend} cannot load {path}: {message}")]
    Load {
        backend: &'static str,
        path: PathBuf,
        message: String,
    },
    /// Neither the backend asked for nor its fallback could load the model.
    #[error("{0}")]
    Fallback(String),
    /// The backend failed while computing; the message is the runtime's own.
    #[error("{0}")]
    Run(String),
    /// The input is not acceptable to the model (e.g. text that is not UTF-8):
    /// the client's mistake, answered 400 / INVALID_ARGUMENT.
    #[error("{0}")]
    InvalidInput(String),
}

/// What a backend needs to load one model version.
#[derive(Debug, Clone, Copy)]
pub struct LoadRequest<'a> {
    pub model_name: &'a str,
    pub version: Version,
    /// The model file (e.g. `<repo>/<model>/<version>/model.onnx`).
    pub path: &'a Path,
    pub config: &'a ModelConfigFile,
    /// Where to load it: the config's `device`, or one of its `devices`.
    pub device: Device,
}

/// A loaded model. Implementations are synchronous and called from Kiln's own
/// compute threads (never the async runtime's), possibly from several at once.
pub trait Backend: Send + Sync {
    /// Inputs and outputs as the model file declares them.
    fn signature(&self) -> &ModelSignature;
    /// Runs the model. `inputs` follow `signature().inputs` in order and have been
    /// validated against it; the result follows `signature().outputs`.
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError>;
    /// The cost of one row of a request, for `max_batch_tokens` (an execution costs
    /// its rows times its costliest row, as with padding). Called when the request
    /// is queued, so it must be cheap. `None`: every row costs 1.
    fn row_cost(&self, _inputs: &[Tensor]) -> Option<usize> {
        None
    }
}

/// Loads models for one runtime.
pub trait BackendFactory: Send + Sync {
    /// Name in configs and metadata (`onnxruntime`, `tract`).
    fn name(&self) -> &'static str;
    /// Triton-style platform string reported in model metadata and config.
    fn platform(&self) -> &'static str;
    /// `Err(reason)` when the runtime cannot be used in this process.
    fn availability(&self) -> Result<(), String>;
    fn load(&self, req: &LoadRequest<'_>) -> Result<Box<dyn Backend>, BackendError>;
}

/// A loaded backend and the factory that made it.
pub struct LoadedBackend {
    pub backend: Box<dyn Backend>,
    pub name: &'static str,
    pub platform: &'static str,
    /// Set when the backend asked for could not be used and another served instead.
    pub fallback_reason: Option<String>,
}

fn choice_name(c: BackendChoice) -> &'static str {
    match c {
        BackendChoice::Auto | BackendChoice::Onnxruntime => "onnxruntime",
        BackendChoice::Tract => "tract",
        BackendChoice::Candle => "candle",
    }
}

/// The runtimes compiled into this server.
#[derive(Clone, Default)]
pub struct Backends {
    onnxruntime: Option<Arc<dyn BackendFactory>>,
    tract: Option<Arc<dyn BackendFactory>>,
    candle: Option<Arc<dyn BackendFactory>>,
    /// GPUs models may be placed on (`--gpus`); `None`: every GPU.
    gpus: Option<Arc<[u32]>>,
}

impl Backends {
    pub fn new(
        onnxruntime: Option<Arc<dyn BackendFactory>>,
        tract: Option<Arc<dyn BackendFactory>>,
    ) -> Self {
        Backends {
            onnxruntime,
            tract,
            candle: None,
            gpus: None,
        }
    }

    /// Limits the GPUs models may be placed on (`None`: no limit; empty: none).
    pub fn with_gpus(mut self, gpus: Option<Vec<u32>>) -> Self {
        self.gpus = gpus.map(Into::into);
        self
    }

    /// Adds the Candle backend (safetensors model families).
    pub fn with_candle(mut self, candle: Arc<dyn BackendFactory>) -> Self {
        self.candle = Some(candle);
        self
    }

    fn usable<'a>(
        f: &'a Option<Arc<dyn BackendFactory>>,
        name: &'static str,
    ) -> Result<&'a Arc<dyn BackendFactory>, String> {
        match f {
            None => Err(format!("{name} is not compiled into this server")),
            Some(f) => f.availability().map(|_| f),
        }
    }

    /// [`Backends::usable`], its reason as the load's error.
    fn factory<'a>(
        f: &'a Option<Arc<dyn BackendFactory>>,
        name: &'static str,
    ) -> Result<&'a Arc<dyn BackendFactory>, BackendError> {
        Self::usable(f, name).map_err(|reason| BackendError::Unavailable {
            backend: name,
            reason,
        })
    }

    /// Loads a model with the configured backend. `auto` and `onnxruntime` fall back
    /// to tract when ONNX Runtime is unavailable or cannot load the model.
    pub fn load(
        &self,
        choice: BackendChoice,
        req: &LoadRequest<'_>,
    ) -> Result<LoadedBackend, BackendError> {
        let with = |f: &Arc<dyn BackendFactory>, fallback_reason: Option<String>| {
            f.load(req).map(|backend| LoadedBackend {
                backend,
                name: f.name(),
                platform: f.platform(),
                fallback_reason,
            })
        };
        let device = req.device;
        if let Device::Cuda(n) = device {
            if let Some(allowed) = self.gpus.as_deref().filter(|a| !a.contains(&n)) {
                let listed: Vec<String> = allowed.iter().map(u32::to_string).collect();
                return Err(BackendError::Unavailable {
                    backend: choice_name(choice),
                    reason: format!(
                        "device = \"{device}\" is not among the GPUs this server may use (--gpus: {})",
                        if listed.is_empty() { "none".to_string() } else { listed.join(",") }
                    ),
                });
            }
        }
        match choice {
            BackendChoice::Candle => {
                with(Self::factory(&self.candle, "candle")?, None)
            }
            BackendChoice::Tract if device != Device::Cpu => Err(BackendError::Unavailable {
                backend: "tract",
                reason: format!(
                    "tract runs on the CPU only; device = \"{device}\" needs backend \"onnxruntime\" or \"candle\""
                ),
            }),
            // A model placed on a GPU never falls back to the CPU without a word:
            // ONNX Runtime's error is the load's error.
            BackendChoice::Auto | BackendChoice::Onnxruntime if device != Device::Cpu => {
                let f = Self::usable(&self.onnxruntime, "onnxruntime").map_err(|reason| {
                    BackendError::Unavailable {
                        backend: "onnxruntime",
                        reason: format!("device = \"{device}\" needs ONNX Runtime: {reason}"),
                    }
                })?;
                with(f, None)
            }
            BackendChoice::Tract => {
                with(Self::factory(&self.tract, "tract")?, None)
            }
            BackendChoice::Auto | BackendChoice::Onnxruntime => {
                let ort_error = match Self::usable(&self.onnxruntime, "onnxruntime") {
                    Ok(f) => match with(f, None) {
                        Ok(b) => return Ok(b),
                        Err(e) => e.to_string(),
                    },
                    Err(reason) => format!("ONNX Runtime is not available: {reason}"),
                };
                let tract = Self::usable(&self.tract, "tract").map_err(|reason| {
                    BackendError::Unavailable {
                        backend: "tract",
                        reason: format!("{reason}; and {ort_error}"),
                    }
                })?;
                with(tract, Some(ort_error.clone()))
                    .map_err(|e| BackendError::Fallback(format!("{e}; and {ort_error}")))
            }
        }
    }
}
