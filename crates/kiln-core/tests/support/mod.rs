//! In-process stand-ins for a runtime and a repository, so that the core's
//! routing, hot swap, drain and rollback are tested without model files, a real
//! runtime or the binary.

use kiln_core::backend::{Backend, BackendError, BackendFactory, LoadRequest};
use kiln_core::repository::{FilesPrint, ModelDir, ModelPrint, Repository, RepositoryError, Stamp};
use kiln_core::{Backends, ControlMode, Core, CoreOptions, DataType, InferInput, InferRequest};
use kiln_core::{ModelSignature, Tensor, TensorSpec, Version};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a fake version behaves; looked up at every run, so a test can change it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Each output element is its input plus this.
    pub add: f32,
    pub delay: Duration,
    pub fail: bool,
}

/// A runtime registered as "onnxruntime" that loads fake models: `y = x + add`,
/// FP32 `[-1, 2]` in and out. Behaviour per (model, version) comes from a table
/// the test holds.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    pub behaviour: Arc<Mutex<HashMap<(String, u64), Behaviour>>>,
    /// Fake models alive now.
    pub alive: Arc<AtomicUsize>,
    /// `Err`: the runtime cannot be used in this process.
    pub unavailable: Option<String>,
}

impl FakeRuntime {
    pub fn set(&self, model: &str, version: u64, b: Behaviour) {
        self.behaviour
            .lock()
            .unwrap()
            .insert((model.to_string(), version), b);
    }
}

struct FakeModel {
    key: (String, u64),
    signature: ModelSignature,
    runtime: FakeRuntime,
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.runtime.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend for FakeModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let b = self
            .runtime
            .behaviour
            .lock()
            .unwrap()
            .get(&self.key)
            .copied()
            .unwrap_or_default();
        std::thread::sleep(b.delay);
        if b.fail {
            return Err(BackendError::Run("the fake model failed".into()));
        }
        let x = &inputs[0];
        let y: Vec<f32> = x
            .to_vec::<f32>()
            .map_err(|e| BackendError::Run(e.to_string()))?
            .into_iter()
            .map(|v| v + b.add)
            .collect();
        Tensor::from_vec(x.shape().to_vec(), y)
            .map(|t| vec![t])
            .map_err(|e| BackendError::Run(e.to_string()))
    }
}

impl BackendFactory for FakeRuntime {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }
    fn platform(&self) -> &'static str {
        "fake"
    }
    fn availability(&self) -> Result<(), String> {
        self.unavailable.clone().map_or(Ok(()), Err)
    }
    fn load(&self, req: &LoadRequest<'_>) -> Result<Box<dyn Backend>, BackendError> {
        if req.path.to_string_lossy().contains("broken") {
            return Err(BackendError::Load {
                backend: "onnxruntime",
                path: req.path.to_path_buf(),
                message: "not a model".into(),
            });
        }
        let spec = |n: &str| TensorSpec {
            name: n.into(),
            dtype: DataType::Fp32,
            shape: vec![-1, 2],
        };
        self.alive.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeModel {
            key: (req.model_name.to_string(), req.version.0),
            signature: ModelSignature {
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
            },
            runtime: self.clone(),
        }))
    }
}

#[derive(Default)]
struct MemModel {
    config: Option<String>,
    /// Version → a generation number that stands for its files.
    versions: BTreeMap<u64, u64>,
    /// Versions whose "file" the fake runtime refuses.
    broken: Vec<u64>,
}

/// A repository held in memory.
#[derive(Default)]
pub struct MemoryRepository {
    models: Mutex<BTreeMap<String, MemModel>>,
}

impl MemoryRepository {
    /// Adds a version, or changes its files when it exists.
    pub fn put(&self, model: &str, version: u64) {
        let mut m = self.models.lock().unwrap();
        let entry = m.entry(model.to_string()).or_default();
        *entry.versions.entry(version).or_default() += 1;
    }
    pub fn put_broken(&self, model: &str, version: u64) {
        self.put(model, version);
        let mut m = self.models.lock().unwrap();
        m.get_mut(model).unwrap().broken.push(version);
    }
    pub fn config(&self, model: &str, text: &str) {
        let mut m = self.models.lock().unwrap();
        m.entry(model.to_string()).or_default().config = Some(text.to_string());
    }
    fn dir(name: &str, m: &MemModel) -> ModelDir {
        ModelDir {
            name: name.to_string(),
            path: PathBuf::from("mem").join(name),
            versions: m
                .versions
                .keys()
                .map(|&v| {
                    let folder = if m.broken.contains(&v) {
                        format!("{v}-broken")
                    } else {
                        v.to_string()
                    };
                    (Version(v), PathBuf::from("mem").join(name).join(folder))
                })
                .collect(),
        }
    }
}

impl Repository for MemoryRepository {
    fn location(&self) -> String {
        "memory".into()
    }
    fn scan(&self) -> Result<Vec<ModelDir>, RepositoryError> {
        let m = self.models.lock().unwrap();
        Ok(m.iter().map(|(n, mm)| Self::dir(n, mm)).collect())
    }
    fn scan_model(&self, name: &str) -> Result<Option<ModelDir>, RepositoryError> {
        let m = self.models.lock().unwrap();
        Ok(m.get(name).map(|mm| Self::dir(name, mm)))
    }
    fn fingerprint(&self, dir: &ModelDir) -> ModelPrint {
        let m = self.models.lock().unwrap();
        let mm = m.get(&dir.name);
        let versions = mm
            .map(|mm| {
                mm.versions
                    .iter()
                    .map(|(&v, &g)| {
                        let files: FilesPrint =
                            vec![(PathBuf::from("model.onnx"), g, Stamp::Modified(None))];
                        (Version(v), files)
                    })
                    .collect()
            })
            .unwrap_or_default();
        ModelPrint::new(
            mm.and_then(|mm| mm.config.clone()).map(String::into_bytes),
            versions,
        )
    }
    fn read_config(&self, dir: &ModelDir) -> Result<Option<String>, std::io::Error> {
        let m = self.models.lock().unwrap();
        Ok(m.get(&dir.name).and_then(|mm| mm.config.clone()))
    }
    fn has_file(&self, path: &Path) -> bool {
        path.starts_with("mem")
    }
}

/// A core in explicit mode over `repo`, with the fake runtime.
pub fn core(repo: &Arc<MemoryRepository>, runtime: &FakeRuntime) -> Core {
    Core::with_repository(
        CoreOptions {
            strict_readiness: true,
            control_mode: ControlMode::Explicit,
            startup_models: vec!["*".into()],
            ..Default::default()
        },
        Backends::new().register(Arc::new(runtime.clone())),
        repo.clone(),
    )
}

/// An inference request of one row `[v, v]`.
pub fn request(model: &str, version: Option<&str>, v: f32) -> InferRequest {
    InferRequest {
        model: model.into(),
        version: version.map(str::to_string),
        inputs: vec![InferInput {
            name: "x".into(),
            tensor: Tensor::from_vec(vec![1, 2], vec![v, v]).unwrap(),
        }],
        ..Default::default()
    }
}

/// Runs a request and returns the version that answered and its first output element.
pub async fn infer(core: &Core, req: InferRequest) -> Result<(u64, f32), kiln_core::KilnError> {
    let r = core.infer(req).await?;
    Ok((r.version.0, r.outputs[0].tensor.to_vec::<f32>().unwrap()[0]))
}
