//! The backend trait every runtime implements, and the choice among them.

use crate::config::{BackendChoice, Device, ModelConfig, DEFAULT_CANDLE_FILENAME};
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
    pub config: &'a ModelConfig,
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

/// Names under which the runtimes Kiln knows are registered.
pub const ONNXRUNTIME: &str = "onnxruntime";
pub const TRACT: &str = "tract";
pub const CANDLE: &str = "candle";

/// The runtime a config's `backend` asks for first.
fn choice_name(c: BackendChoice) -> &'static str {
    match c {
        BackendChoice::Auto | BackendChoice::Onnxruntime => ONNXRUNTIME,
        BackendChoice::Tract => TRACT,
        BackendChoice::Candle => CANDLE,
    }
}

/// The runtimes this server has, registered by name (a factory's `name()`), and
/// the GPUs models may be placed on. A test registers a fake runtime under a
/// real name to load models without one.
#[derive(Clone, Default)]
pub struct Backends {
    factories: Vec<Arc<dyn BackendFactory>>,
    /// GPUs models may be placed on (`--gpus`); `None`: every GPU.
    gpus: Option<Arc<[u32]>>,
}

impl Backends {
    /// No runtime at all; add them with [`Backends::register`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a runtime under its `name()`, replacing one registered under the same name.
    pub fn register(mut self, factory: Arc<dyn BackendFactory>) -> Self {
        self.factories.retain(|f| f.name() != factory.name());
        self.factories.push(factory);
        self
    }

    /// Limits the GPUs models may be placed on (`None`: no limit; empty: none).
    pub fn with_gpus(mut self, gpus: Option<Vec<u32>>) -> Self {
        self.gpus = gpus.map(Into::into);
        self
    }

    /// The runtime registered as `name`, when it can be used in this process.
    fn usable(&self, name: &'static str) -> Result<&Arc<dyn BackendFactory>, String> {
        match self.factories.iter().find(|f| f.name() == name) {
            None => Err(format!("{name} is not compiled into this server")),
            Some(f) => f.availability().map(|_| f),
        }
    }

    /// [`Backends::usable`], its reason as the load's error.
    fn factory(&self, name: &'static str) -> Result<&Arc<dyn BackendFactory>, BackendError> {
        self.usable(name)
            .map_err(|reason| BackendError::Unavailable {
                backend: name,
                reason,
            })
    }

    /// Loads a model with the configured backend. `auto` and `onnxruntime` fall back
    /// when ONNX Runtime is unavailable or cannot load the model: to tract, or for a
    /// text `family` to Candle on the version's `model.safetensors`.
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
                with(self.factory(CANDLE)?, None)
            }
            BackendChoice::Tract if device != Device::Cpu => Err(BackendError::Unavailable {
                backend: TRACT,
                reason: format!(
                    "tract runs on the CPU only; device = \"{device}\" needs backend \"onnxruntime\" or \"candle\""
                ),
            }),
            // A model placed on a GPU never falls back to the CPU without a word:
            // ONNX Runtime's error is the load's error.
            BackendChoice::Auto | BackendChoice::Onnxruntime if device != Device::Cpu => {
                let f = self.usable(ONNXRUNTIME).map_err(|reason| {
                    BackendError::Unavailable {
                        backend: ONNXRUNTIME,
                        reason: format!("device = \"{device}\" needs ONNX Runtime: {reason}"),
                    }
                })?;
                with(f, None)
            }
            BackendChoice::Tract => {
                with(self.factory(TRACT)?, None)
            }
            BackendChoice::Auto | BackendChoice::Onnxruntime => {
                let (ort_error, ort_failed) = match self.usable(ONNXRUNTIME) {
                    Ok(f) => match with(f, None) {
                        Ok(b) => return Ok(b),
                        Err(e) => (e.to_string(), Some(e)),
                    },
                    Err(reason) => (format!("ONNX Runtime is not available: {reason}"), None),
                };
                // A text family falls back to Candle on the same weights beside the
                // graph (tract knows neither the family nor the graph's contrib
                // operators); any other model to tract on the same file.
                let (name, path) = match req.config.family {
                    Some(_) => (CANDLE, req.path.with_file_name(DEFAULT_CANDLE_FILENAME)),
                    None => (TRACT, req.path.to_path_buf()),
                };
                let fallback = match self.usable(name) {
                    Ok(f) => f,
                    // ONNX Runtime ran and refused the model: that is the answer.
                    Err(_) if ort_failed.is_some() => return Err(ort_failed.unwrap_or(BackendError::Run(ort_error))),
                    Err(reason) => {
                        return Err(BackendError::Unavailable {
                            backend: name,
                            reason: format!("{reason}; and {ort_error}"),
                        })
                    }
                };
                let fallback_req = LoadRequest { path: &path, ..*req };
                fallback
                    .load(&fallback_req)
                    .map(|backend| LoadedBackend {
                        backend,
                        name: fallback.name(),
                        platform: fallback.platform(),
                        fallback_reason: Some(ort_error.clone()),
                    })
                    .map_err(|e| BackendError::Fallback(format!("{e}; and {ort_error}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime registered as `name`, usable or not, whose models have no inputs.
    struct Runtime {
        name: &'static str,
        usable: bool,
    }

    struct Empty(ModelSignature);

    impl Backend for Empty {
        fn signature(&self) -> &ModelSignature {
            &self.0
        }
        fn run(&self, _: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
            Ok(Vec::new())
        }
    }

    impl BackendFactory for Runtime {
        fn name(&self) -> &'static str {
            self.name
        }
        fn platform(&self) -> &'static str {
            self.name
        }
        fn availability(&self) -> Result<(), String> {
            if self.usable {
                Ok(())
            } else {
                Err("library not found".into())
            }
        }
        fn load(&self, req: &LoadRequest<'_>) -> Result<Box<dyn Backend>, BackendError> {
            // Candle is handed the weights beside the graph.
            if self.name == CANDLE && !req.path.ends_with("m/1/model.safetensors") {
                return Err(BackendError::Run(format!("given {}", req.path.display())));
            }
            Ok(Box::new(Empty(ModelSignature {
                inputs: Vec::new(),
                outputs: Vec::new(),
            })))
        }
    }

    fn load(backends: &Backends, config: &str) -> Result<LoadedBackend, BackendError> {
        let config = ModelConfig::parse(config, Path::new("config.toml")).unwrap();
        let req = LoadRequest {
            model_name: "m",
            version: Version(1),
            path: Path::new("m/1/model.onnx"),
            config: &config,
            device: Device::Cpu,
        };
        backends.load(config.backend, &req)
    }

    #[test]
    fn models_fall_back_to_tract_and_text_families_to_candle() {
        let runtime = |name, usable| Arc::new(Runtime { name, usable });
        let backends = Backends::new()
            .register(runtime(ONNXRUNTIME, false))
            .register(runtime(TRACT, true))
            .register(runtime(CANDLE, true));
        let plain = load(&backends, "backend = \"onnxruntime\"").unwrap();
        assert_eq!(plain.name, TRACT);
        assert!(plain.fallback_reason.unwrap().contains("library not found"));
        let text = "backend = \"onnxruntime\"\nfamily = \"bert_embedding\"";
        let b = load(&backends, text).unwrap();
        assert_eq!(b.name, CANDLE);
        assert!(b.fallback_reason.unwrap().contains("library not found"));
        // Without Candle, a text family does not try tract: the reason says why.
        let no_candle = Backends::new()
            .register(runtime(ONNXRUNTIME, false))
            .register(runtime(TRACT, true))
            .register(runtime(CANDLE, false));
        match load(&no_candle, text) {
            Err(BackendError::Unavailable { backend, reason }) => {
                assert_eq!(backend, CANDLE);
                assert!(reason.contains("ONNX Runtime is not available"), "{reason}");
            }
            Err(e) => panic!("{e}"),
            Ok(b) => panic!("loaded by {}", b.name),
        }
    }
}
