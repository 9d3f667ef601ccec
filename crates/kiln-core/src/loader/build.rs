//! Builds one serving version: a loaded copy of the model per device, a warm-up
//! request through each, and the scheduler that feeds them.

use crate::backend::{Backend, BackendError, Backends, LoadRequest, LoadedBackend};
use crate::config::{self, Device, ModelConfig};
use crate::loader::error::VersionError;
use crate::metrics::{self as m, VersionMetrics};
use crate::model::{ModelSignature, Version};
use crate::registry::ModelVersion;
use crate::repository::FilesPrint;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::stats::VersionStats;
use crate::tensor::Tensor;
use crate::traffic::health::HealthRecorder;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// What one version is built from.
pub(crate) struct VersionSource<'a> {
    pub(crate) name: &'a str,
    pub(crate) version: Version,
    /// The model file.
    pub(crate) path: &'a Path,
    pub(crate) config: &'a ModelConfig,
    pub(crate) files: FilesPrint,
}

impl From<BackendError> for VersionError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable { .. } => VersionError::Runtime(e.to_string()),
            _ => VersionError::Model(e.to_string()),
        }
    }
}

pub(crate) fn build(
    backends: &Backends,
    src: VersionSource<'_>,
) -> Result<ModelVersion, VersionError> {
    let started = Instant::now();
    let (name, version, path, cfg) = (src.name, src.version, src.path, src.config);
    // One loaded copy per device; instances on the same device share it.
    let placements = cfg.placements();
    let mut copies: Vec<(Device, Device, Arc<dyn Backend>)> = Vec::new();
    let (mut backend_name, mut platform) = ("", "");
    for (device, _) in config::group_devices(&placements) {
        let (on, loaded) = load_on(backends, &src, device)?;
        match copies.first() {
            None => (backend_name, platform) = (loaded.name, loaded.platform),
            Some((_, first_on, first)) if first.signature() != loaded.backend.signature() => {
                return Err(VersionError::Model(format!(
                    "the model's inputs and outputs on {on} ({}) differ from those on {first_on} ({backend_name})",
                    loaded.name
                )));
            }
            Some(_) => {}
        }
        copies.push((device, on, Arc::from(loaded.backend)));
    }
    let Some((_, _, first)) = copies.first() else {
        return Err(VersionError::Model("no device to load it on".into()));
    };
    let resolved = config::resolve_signature(first.signature(), cfg, path)
        .map_err(|e| VersionError::Model(e.to_string()))?;
    if cfg.warmup {
        for (_, _, backend) in &copies {
            warm_up(backend.as_ref(), &resolved.signature).map_err(VersionError::Model)?;
        }
    }
    // Each instance's copy, and the device it really runs on.
    let (devices, instances): (Vec<Device>, Vec<Arc<dyn Backend>>) = placements
        .iter()
        .filter_map(|p| copies.iter().find(|(wanted, _, _)| wanted == p))
        .map(|(_, on, b)| (*on, b.clone()))
        .unzip();
    let label = format!("{name}:{version}");
    let v = version.to_string();
    let metrics = Arc::new(VersionMetrics::new(
        name,
        &v,
        &config::device_label(&devices),
    ));
    let stats = Arc::new(VersionStats::default());
    let scheduling = SchedulerConfig {
        label: label.clone(),
        max_batch_size: resolved.max_batch_size as usize,
        dynamic_batching: cfg.batching(resolved.max_batch_size),
        max_queue_delay: cfg.max_queue_delay,
        preferred_batch_sizes: cfg
            .preferred_batch_sizes
            .iter()
            .map(|&n| n as usize)
            .collect(),
        max_queue_size: cfg.max_queue_size,
        instances: instances.len(),
        max_batch_cost: cfg.max_batch_tokens,
    };
    let scheduler = Scheduler::start(scheduling, instances, metrics.clone(), stats.clone())
        .map_err(|e| VersionError::Runtime(format!("cannot start compute threads: {e}")))?;
    metrics::gauge!(m::MODEL_LOAD_DURATION, "model" => name.to_string(), "version" => v.clone())
        .set(started.elapsed().as_secs_f64());
    metrics::gauge!(m::MODEL_VERSIONS_LOADED, "model" => name.to_string(), "version" => v.clone())
        .increment(1.0);
    Ok(ModelVersion {
        name: name.to_string(),
        version,
        label,
        backend: backend_name,
        platform,
        devices,
        max_batch_size: resolved.max_batch_size,
        signature: resolved.signature,
        config: cfg.clone(),
        scheduler,
        metrics,
        stats,
        files: src.files,
        health: HealthRecorder::default(),
    })
}

/// Loads one copy of a version on `device`; with `cpu_fallback`, a GPU that
/// cannot be used gives a CPU copy and a warning. Returns where it runs.
fn load_on(
    backends: &Backends,
    src: &VersionSource<'_>,
    device: Device,
) -> Result<(Device, LoadedBackend), VersionError> {
    let (name, version, cfg) = (src.name, src.version, src.config);
    let req = LoadRequest {
        model_name: name,
        version,
        path: src.path,
        config: cfg,
        device,
    };
    let (on, loaded) = match backends.load(cfg.backend, &req) {
        Ok(loaded) => (device, loaded),
        Err(e) if device != Device::Cpu && cfg.cpu_fallback => {
            tracing::warn!(
                model = %name,
                version = version.0,
                "cannot run on {device} ({e}); loading on the CPU instead (cpu_fallback = true)"
            );
            let cpu = LoadRequest {
                device: Device::Cpu,
                ..req
            };
            let loaded = backends.load(cfg.backend, &cpu).map_err(|cpu_e| {
                let message = format!("cannot run on {device} ({e}), nor on the CPU: {cpu_e}");
                match VersionError::from(cpu_e) {
                    VersionError::Runtime(_) => VersionError::Runtime(message),
                    VersionError::Model(_) | VersionError::Storage(_) => {
                        VersionError::Model(message)
                    }
                }
            })?;
            (Device::Cpu, loaded)
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(why) = &loaded.fallback_reason {
        tracing::warn!(
            model = %name,
            version = version.0,
            "serving with {} because {why}",
            loaded.name
        );
    }
    Ok((on, loaded))
}

/// Runs one synthetic request (zeros, batch 1, variable dimensions 1, empty
/// strings) straight through a freshly loaded backend.
fn warm_up(backend: &dyn Backend, sig: &ModelSignature) -> Result<(), String> {
    let mut inputs = Vec::with_capacity(sig.inputs.len());
    for spec in &sig.inputs {
        let shape: Vec<usize> = spec
            .shape
            .iter()
            .map(|&d| if d < 0 { 1 } else { d as usize })
            .collect();
        let count = crate::tensor::element_count(&shape)
            .map_err(|e| format!("cannot build the warm-up request: {e}"))?;
        let t = match spec.dtype.size() {
            Some(size) => {
                let bytes = count
                    .checked_mul(size)
                    .ok_or("cannot build the warm-up request: its size overflows")?;
                Tensor::from_bytes(spec.dtype, shape, vec![0; bytes])
            }
            None => Tensor::from_byte_elements(shape, &vec![b"" as &[u8]; count]),
        }
        .map_err(|e| format!("cannot build the warm-up request: {e}"))?;
        inputs.push(t);
    }
    let outputs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.run(inputs)))
        .map_err(|_| "the warm-up request panicked".to_string())?
        .map_err(|e| format!("the warm-up request failed: {e} (set warmup = false to skip it)"))?;
    if outputs.len() != sig.outputs.len() {
        return Err(format!(
            "the warm-up request returned {} outputs, expected {}",
            outputs.len(),
            sig.outputs.len()
        ));
    }
    Ok(())
}
