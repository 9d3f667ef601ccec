//! ONNX Runtime backend, loaded dynamically (`ort` with `load-dynamic`).
//!
//! The shared library is found in this order (the first file that exists wins):
//! 1. the path given to [`OrtFactory::new`] (`--onnxruntime-lib` / `KILN_ONNXRUNTIME_LIB`);
//! 2. `ORT_DYLIB_PATH`;
//! 3. `libonnxruntime.so*` beside the `kiln` executable, or in `../lib` from it;
//! 4. the `onnxruntime` Python wheel inside a virtualenv: `$VIRTUAL_ENV`, `./.venv`, and the
//!    `.venv` of the source tree the executable was built in (`target/<profile>/../../.venv`);
//! 5. `/usr/local/lib`, `/usr/lib`, `/usr/lib/x86_64-linux-gnu`, `/opt/onnxruntime/lib`.
//!
//! When none is found, or the library cannot be initialised, the factory reports
//! itself unavailable with the reason and the places searched, and models fall back
//! to tract.
//!
//! Before the first model is placed on a GPU, the CUDA 13 and cuDNN 9 libraries the
//! CUDA execution provider needs are looked for (see [`cuda_search_dirs`]) and the
//! ones found are loaded from there; the rest are left to the system's loader
//! (`LD_LIBRARY_PATH`, `ldconfig`).

use kiln_core::backend::{Backend, BackendError, BackendFactory, LoadRequest};
use kiln_core::{DataType, Device, ModelSignature, Tensor, TensorSpec};
use ort::memory::Allocator;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensor, DynTensorValueType, DynValue, TensorElementType, ValueType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

mod text;

const NAME: &str = "onnxruntime";
const LIB_PREFIX: &str = "libonnxruntime.so";

/// Where to look for the ONNX Runtime library, in order, given an explicit path.
pub fn search_paths(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        files.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        files.push(PathBuf::from(p));
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    if let Some(d) = &exe_dir {
        dirs.push(d.clone());
        dirs.push(d.join("../lib"));
    }
    let mut venvs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        venvs.push(PathBuf::from(v));
    }
    venvs.push(PathBuf::from(".venv"));
    if let Some(d) = &exe_dir {
        venvs.push(d.join("../../.venv"));
    }
    for v in venvs {
        if let Ok(rd) = std::fs::read_dir(v.join("lib")) {
            let mut pys: Vec<PathBuf> = rd
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                .map(|e| e.path().join("site-packages/onnxruntime/capi"))
                .collect();
            pys.sort();
            dirs.extend(pys);
        }
    }
    for d in [
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/opt/onnxruntime/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    for d in dirs {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(LIB_PREFIX))
            .map(|e| e.path())
            .collect();
        // Prefer the most specific name (libonnxruntime.so.1.31.1 over libonnxruntime.so).
        found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        if found.is_empty() {
            files.push(d.join(LIB_PREFIX));
        } else {
            files.extend(found);
        }
    }
    files
}

/// Where to look for the CUDA and cuDNN libraries, in order:
/// 1. the directories given (`--cuda-library-path` / `KILN_CUDA_LIBRARY_PATH`);
/// 2. NVIDIA's pip wheels in the `site-packages` the ONNX Runtime library came from
///    (`nvidia/cu13/lib`, `nvidia/*/lib`, as `onnxruntime-gpu[cuda,cudnn]` installs them);
/// 3. `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`,
///    `/usr/local/cuda-13/lib64`;
/// 4. `/usr/lib/x86_64-linux-gnu`, `/usr/local/lib` (Debian's and NVIDIA's cuDNN packages).
pub fn cuda_search_dirs(explicit: &[PathBuf], ort_library: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = explicit.to_vec();
    // <site-packages>/onnxruntime/capi/libonnxruntime.so → <site-packages>/nvidia.
    if let Some(nvidia) =
        ort_library.and_then(|l| l.parent()?.parent()?.parent().map(|sp| sp.join("nvidia")))
    {
        dirs.push(nvidia.join("cu13/lib"));
        let mut wheels: Vec<PathBuf> = std::fs::read_dir(&nvidia)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("lib"))
            .filter(|d| d.is_dir())
            .collect();
        wheels.sort();
        dirs.extend(wheels);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            dirs.push(PathBuf::from(v).join("lib64"));
        }
    }
    dirs.extend(
        [
            "/usr/local/cuda/lib64",
            "/usr/local/cuda-13/lib64",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/local/lib",
        ]
        .map(PathBuf::from),
    );
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// The libraries ONNX Runtime's CUDA provider loads, dependencies first, each
/// with the first of `dirs` that holds it (`None`: left to the system's loader).
pub fn find_cuda_libraries(dirs: &[PathBuf]) -> Vec<(&'static str, Option<PathBuf>)> {
    ort::ep::cuda::CUDA_DYLIBS
        .iter()
        .chain(ort::ep::cuda::CUDNN_DYLIBS)
        .map(|&lib| (lib, dirs.iter().map(|d| d.join(lib)).find(|p| p.is_file())))
        .collect()
}

/// Loads models with ONNX Runtime.
pub struct OrtFactory {
    explicit: Option<PathBuf>,
    cuda_dirs: Vec<PathBuf>,
    env: OnceLock<Result<(ort::environment::Environment, PathBuf), String>>,
    cuda_preloaded: OnceLock<()>,
}

impl OrtFactory {
    pub fn new(explicit: Option<PathBuf>) -> Self {
        OrtFactory {
            explicit,
            cuda_dirs: Vec::new(),
            env: OnceLock::new(),
            cuda_preloaded: OnceLock::new(),
        }
    }

    /// Directories searched first for the CUDA and cuDNN libraries.
    pub fn with_cuda_library_path(mut self, dirs: Vec<PathBuf>) -> Self {
        self.cuda_dirs = dirs;
        self
    }

    /// Loads the CUDA and cuDNN libraries found by the search, once, and logs
    /// where each came from.
    fn preload_cuda(&self, ort_library: &Path) {
        self.cuda_preloaded.get_or_init(|| {
            let dirs = cuda_search_dirs(&self.cuda_dirs, Some(ort_library));
            let mut from = Vec::new();
            let mut left = Vec::new();
            for (lib, path) in find_cuda_libraries(&dirs) {
                match path {
                    Some(p) => match ort::util::preload_dylib(&p) {
                        Ok(()) => from.push(p.display().to_string()),
                        Err(e) => {
                            tracing::warn!("cannot load {}: {e}", p.display());
                            left.push(lib);
                        }
                    },
                    None => left.push(lib),
                }
            }
            tracing::info!(
                "CUDA libraries for ONNX Runtime: loaded {}; left to the system's loader: {}",
                if from.is_empty() {
                    "none".to_string()
                } else {
                    from.join(", ")
                },
                if left.is_empty() {
                    "none".to_string()
                } else {
                    left.join(", ")
                }
            );
        });
    }

    fn environment(&self) -> &Result<(ort::environment::Environment, PathBuf), String> {
        self.env.get_or_init(|| {
            let candidates = search_paths(self.explicit.as_deref());
            let lib = match &self.explicit {
                Some(p) if !p.is_file() => {
                    return Err(format!("--onnxruntime-lib {} does not exist", p.display()))
                }
                Some(p) => p.clone(),
                None => candidates
                    .iter()
                    .find(|p| p.is_file())
                    .cloned()
                    .ok_or_else(|| {
                        let searched: Vec<String> =
                            candidates.iter().map(|p| p.display().to_string()).collect();
                        format!(
                        "library not found; set --onnxruntime-lib or ORT_DYLIB_PATH (searched: {})",
                        searched.join(", ")
                    )
                    })?,
            };
            let built = std::panic::catch_unwind(|| {
                ort::init_from(&lib)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        b.with_name("kiln")
                            .with_telemetry(false)
                            .build()
                            .map_err(|e| e.to_string())
                    })
            })
            .map_err(|_| {
                format!(
                    "{} panicked while initialising (ONNX Runtime 1.31 is required)",
                    lib.display()
                )
            })?;
            built
                .map(|env| (env, lib.clone()))
                .map_err(|e| format!("cannot initialise {}: {e}", lib.display()))
        })
    }

    /// The library in use, once initialised.
    pub fn library(&self) -> Option<&Path> {
        self.environment().as_ref().ok().map(|(_, p)| p.as_path())
    }
}

impl BackendFactory for OrtFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn platform(&self) -> &'static str {
        "onnxruntime_onnx"
    }

    fn availability(&self) -> Result<(), String> {
        self.environment()
            .as_ref()
            .map(|_| ())
            .map_err(Clone::clone)
    }

    fn load(&self, req: &LoadRequest<'_>) -> Result<Box<dyn Backend>, BackendError> {
        let (env, ort_library) =
            self.environment()
                .as_ref()
                .map_err(|reason| BackendError::Unavailable {
                    backend: NAME,
                    reason: reason.clone(),
                })?;
        let load_err = |message: String| BackendError::Load {
            backend: NAME,
            path: req.path.to_path_buf(),
            message,
        };
        if req.device != Device::Cpu {
            self.preload_cuda(ort_library);
        }
        let sessions = Sessions::open(env, req).map_err(load_err)?;
        let (inputs, outputs) = sessions
            .with_session(|s| Ok((outlets(s.inputs()), outlets(s.outputs()))))
            .map_err(|e| load_err(e.to_string()))?;
        if req.config.family.is_some() {
            let dir = req.path.parent().unwrap_or(Path::new("."));
            let model = text::TextEmbedding::new(
                sessions,
                dir,
                req.config,
                kiln_text::group_tokens(req.config, req.device),
                &inputs,
                &outputs,
            )
            .map_err(load_err)?;
            return Ok(Box::new(model));
        }
        let signature = ModelSignature {
            inputs: specs(&inputs, "input").map_err(load_err)?,
            outputs: specs(&outputs, "output").map_err(load_err)?,
        };
        let input_types = signature
            .inputs
            .iter()
            .map(|s| element_type(s.dtype))
            .collect::<Result<Vec<_>, _>>()
            .map_err(load_err)?;
        Ok(Box::new(OrtBackend {
            sessions,
            signature,
            input_types,
        }))
    }
}

/// One ONNX Runtime session per instance of a version on one device: running a
/// session needs exclusive access.
pub(crate) struct Sessions {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
}

impl Sessions {
    /// `instances_per_device` sessions with the config's threading and device.
    fn open(env: &ort::environment::Environment, req: &LoadRequest<'_>) -> Result<Self, String> {
        let ort_err = |e: ort::Error<ort::session::builder::SessionBuilder>| {
            ort::Error::<()>::from(e).to_string()
        };
        let instances = req.config.instances_per_device;
        let mut sessions = Vec::with_capacity(instances);
        for _ in 0..instances {
            let mut builder = Session::builder(env).map_err(|e| e.to_string())?;
            if let Some(spin) = req.config.intra_op_spinning {
                builder = builder.with_intra_op_spinning(spin).map_err(ort_err)?;
            }
            if let Some(between) = req.config.intra_op_spin_between_runs {
                // ONNX Runtime's "force spinning stop": the pool's threads stop
                // spinning when the last concurrent Run returns.
                let stop = if between { "0" } else { "1" };
                builder = builder
                    .with_config_entry("session.force_spinning_stop", stop)
                    .map_err(ort_err)?;
            }
            if let Some(n) = req.config.intra_op_threads.filter(|&n| n > 0) {
                builder = builder.with_intra_threads(n).map_err(ort_err)?;
            }
            if let Device::Cuda(n) = req.device {
                // Registration fails (rather than falling back to the CPU) when the
                // library has no CUDA execution provider, or CUDA, cuDNN or the GPU
                // cannot be had: a model placed on a GPU never runs on the CPU silently.
                let cuda = ort::ep::CUDA::default()
                    .with_device_id(i32::try_from(n).unwrap_or(i32::MAX))
                    .with_tf32(req.config.tf32)
                    .build()
                    .error_on_failure();
                builder = builder.with_execution_providers([cuda]).map_err(|e| {
                    let e = ort_err(e);
                    let driver = if e.contains("libcuda.so") {
                        " (libcuda.so.1 is the NVIDIA driver's: this machine or container has no driver)"
                    } else {
                        ""
                    };
                    format!(
                        "device = \"cuda:{n}\": ONNX Runtime's CUDA execution provider cannot be used ({}); \
                         it needs the onnxruntime-gpu library (libonnxruntime_providers_cuda.so beside \
                         libonnxruntime.so), CUDA 13 and cuDNN 9 libraries, and a visible GPU {n}",
                        e.trim_end().to_string() + driver
                    )
                })?;
            }
            let session = builder
                .commit_from_file(req.path)
                .map_err(|e| e.to_string())?;
            sessions.push(Mutex::new(session));
        }
        Ok(Sessions {
            sessions,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `f` on a free session if there is one, else on the next in turn
    /// once it is free.
    fn with_session<R>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut guard = (0..n)
            .find_map(|i| self.sessions[(start + i) % n].try_lock().ok())
            .map(Ok)
            .unwrap_or_else(|| self.sessions[start].lock())
            .map_err(|_| BackendError::Run("session poisoned by an earlier panic".into()))?;
        f(&mut guard)
    }
}

/// Names and types of a session's inputs or outputs.
pub(crate) type Outlets = Vec<(String, ValueType)>;

fn outlets(o: &[ort::value::Outlet]) -> Outlets {
    o.iter()
        .map(|o| (o.name().to_string(), o.dtype().clone()))
        .collect()
}

fn specs(outlets: &Outlets, what: &str) -> Result<Vec<TensorSpec>, String> {
    outlets
        .iter()
        .map(|(name, dtype)| match dtype {
            ValueType::Tensor { ty, shape, .. } => Ok(TensorSpec {
                name: name.clone(),
                dtype: data_type(*ty).ok_or_else(|| format!("{what} '{name}' has element type {ty:?}, which Kiln does not serve"))?,
                shape: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
            }),
            other => Err(format!(
                "{what} '{name}' is {other}, not a tensor; only tensor inputs and outputs are served (for skl2onnx classifiers convert with zipmap=False)"
            )),
        })
        .collect()
}

fn data_type(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn element_type(d: DataType) -> Result<TensorElementType, String> {
    Ok(match d {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Uint16 => TensorElementType::Uint16,
        DataType::Uint32 => TensorElementType::Uint32,
        DataType::Uint64 => TensorElementType::Uint64,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int16 => TensorElementType::Int16,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp16 => TensorElementType::Float16,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bf16 => TensorElementType::Bfloat16,
        DataType::Bytes => TensorElementType::String,
    })
}

/// One model loaded into ONNX Runtime, its tensors passed through as they are.
struct OrtBackend {
    sessions: Sessions,
    signature: ModelSignature,
    input_types: Vec<TensorElementType>,
}

impl OrtBackend {
    fn to_ort(
        &self,
        t: &Tensor,
        ty: TensorElementType,
        name: &str,
    ) -> Result<DynValue, BackendError> {
        let shape: Vec<i64> = t.wire_shape();
        if ty == TensorElementType::String {
            let strings = t
                .byte_elements()
                .map_err(|e| BackendError::Run(e.to_string()))?
                .into_iter()
                .map(|b| {
                    // The client's data, not the model's failure: it fails that
                    // request alone (the scheduler reruns the rest of the batch).
                    std::str::from_utf8(b).map(str::to_owned).map_err(|_| {
                        BackendError::InvalidInput(format!(
                            "input '{name}': ONNX Runtime string tensors need UTF-8 elements"
                        ))
                    })
                })
                .collect::<Result<Vec<String>, _>>()?;
            let tensor = ort::value::Tensor::from_string_array((shape, strings.as_slice()))
                .map_err(|e| BackendError::Run(e.to_string()))?;
            return Ok(tensor.into_dyn());
        }
        let mut tensor = DynTensor::new(&Allocator::default(), ty, shape)
            .map_err(|e| BackendError::Run(e.to_string()))?;
        let bytes = t.data();
        if !bytes.is_empty() {
            let ptr = tensor.data_ptr_mut().cast::<u8>();
            // SAFETY: the tensor was just allocated on the CPU with `ty` and `shape`, whose byte
            // size equals `bytes.len()` (checked when the Kiln tensor was built and validated).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
        }
        Ok(tensor.into_dyn())
    }
}

fn from_ort(value: DynValue, name: &str) -> Result<Tensor, BackendError> {
    let err = |m: String| BackendError::Run(format!("output '{name}': {m}"));
    let (ty, shape) = match value.dtype() {
        ValueType::Tensor { ty, shape, .. } => (*ty, shape.clone()),
        other => return Err(err(format!("is {other}, not a tensor"))),
    };
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let dtype = data_type(ty).ok_or_else(|| err(format!("element type {ty:?} is not served")))?;
    if dtype == DataType::Bytes {
        let (_, strings) = value
            .try_extract_strings()
            .map_err(|e| err(e.to_string()))?;
        return Tensor::from_byte_elements(dims, &strings).map_err(|e| err(e.to_string()));
    }
    let tensor = value
        .downcast::<DynTensorValueType>()
        .map_err(|e| err(e.to_string()))?;
    let n = ty
        .byte_size(shape.num_elements())
        .ok_or_else(|| err("size overflows".into()))?;
    let data = if n == 0 {
        Vec::new()
    } else {
        let ptr = tensor.data_ptr().cast::<u8>();
        if ptr.is_null() {
            return Err(err("no data".into()));
        }
        // SAFETY: CPU tensor of `n` bytes owned by `tensor`, alive for this borrow.
        unsafe { std::slice::from_raw_parts(ptr, n) }.to_vec()
    };
    Tensor::from_bytes(dtype, dims, data).map_err(|e| err(e.to_string()))
}

impl Backend for OrtBackend {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for ((t, spec), ty) in inputs
            .iter()
            .zip(&self.signature.inputs)
            .zip(&self.input_types)
        {
            values.push((
                Cow::Borrowed(spec.name.as_str()),
                self.to_ort(t, *ty, &spec.name)?.into(),
            ));
        }
        self.sessions.with_session(|s| {
            let mut outputs = s
                .run(values)
                .map_err(|e| BackendError::Run(e.to_string()))?;
            self.signature
                .outputs
                .iter()
                .map(|spec| {
                    let v = outputs.remove(spec.name.as_str()).ok_or_else(|| {
                        BackendError::Run(format!(
                            "output '{}' missing from ONNX Runtime's result",
                            spec.name
                        ))
                    })?;
                    from_ort(v, &spec.name)
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod cuda_search_tests {
    use super::*;

    #[test]
    fn cuda_libraries_come_from_the_first_directory_holding_them() {
        let t = tempfile::tempdir().unwrap();
        let first = t.path().join("first");
        let sp = t.path().join("venv/lib/python3.12/site-packages");
        let wheel = sp.join("nvidia/cudnn/lib");
        let cu13 = sp.join("nvidia/cu13/lib");
        for d in [&first, &wheel, &cu13, &sp.join("onnxruntime/capi")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(first.join("libcudart.so.13"), b"").unwrap();
        std::fs::write(cu13.join("libcudart.so.13"), b"").unwrap();
        std::fs::write(cu13.join("libcublas.so.13"), b"").unwrap();
        std::fs::write(wheel.join("libcudnn.so.9"), b"").unwrap();
        let ort = sp.join("onnxruntime/capi/libonnxruntime.so.1.31.1");
        let dirs = cuda_search_dirs(std::slice::from_ref(&first), Some(&ort));
        assert_eq!(dirs[..3], [first.clone(), cu13.clone(), wheel.clone()]);
        let found: std::collections::HashMap<_, _> =
            find_cuda_libraries(&dirs).into_iter().collect();
        assert_eq!(
            found["libcudart.so.13"],
            Some(first.join("libcudart.so.13"))
        );
        assert_eq!(found["libcublas.so.13"], Some(cu13.join("libcublas.so.13")));
        assert_eq!(found["libcudnn.so.9"], Some(wheel.join("libcudnn.so.9")));
        assert!(dirs.contains(&PathBuf::from("/usr/local/cuda/lib64")));
    }
}
