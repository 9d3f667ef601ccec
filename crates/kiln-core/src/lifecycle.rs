//! Loading, reloading and unloading model versions without dropping a request.
//!
//! A load reads the model's folder, picks the versions its policy serves, loads
//! and warms up each new or changed one off to the side, then publishes the new
//! set with one pointer swap. Requests already holding a version finish on it; a
//! retired version is released when its last request ends. A version that fails
//! to load leaves what serves untouched.

use crate::backend::{Backend, LoadRequest, LoadedBackend};
use crate::config::{self, Device, ModelConfigFile, RollbackConfig, TrafficConfig};
use crate::error::KilnError;
use crate::metrics::{self as m, VersionMetrics};
use crate::model::{ModelSignature, Version};
use crate::repository::{self, FilesPrint, ModelPrint};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::server::{
    lock, ControlMode, Core, IndexEntry, ModelSlot, ModelState, ModelVersion, Served,
};
use crate::stats::VersionStats;
use crate::tensor::Tensor;
use crate::traffic::{HealthRecorder, TrafficState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the last load of a model applied.
#[derive(Default)]
pub(crate) struct Applied {
    /// The folder's fingerprint when it was read (poll mode compares against it).
    print: Option<ModelPrint>,
    /// The `[traffic]` and `[rollback]` sections in force from the config: when
    /// they change, they replace the policy; otherwise API changes and rollbacks stay.
    traffic: Option<(Option<TrafficConfig>, Option<RollbackConfig>)>,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Versions serving after the load.
    pub serving: Vec<Version>,
    /// Versions loaded (new or changed) by this load.
    pub loaded: Vec<Version>,
    /// Versions no longer serving (released when their last request ends).
    pub retired: Vec<Version>,
}

/// Poll mode's memory between two scans.
#[derive(Default)]
pub struct PollState {
    /// A changed fingerprint and when it was first seen: it loads once it has
    /// stayed the same for the settle time.
    pending: HashMap<String, (ModelPrint, Instant)>,
}

impl Core {
    /// Loads what the control mode says to load at start (blocking: call it off
    /// the async runtime). A model that fails is reported in the index; the others
    /// serve regardless.
    pub fn load_repository(&self) -> Result<(), repository::RepositoryError> {
        let opts = &self.inner.opts;
        let dirs = repository::scan(&opts.repository, opts.ready_marker.as_deref())?;
        let all = opts.control_mode != ControlMode::Explicit
            || opts.startup_models.iter().any(|n| n == "*");
        let names: Vec<String> = if all {
            dirs.into_iter().map(|d| d.name).collect()
        } else {
            opts.startup_models.clone()
        };
        for name in names {
            if let Err(e) = self.sync(&name, None) {
                tracing::error!(model = %name, "{}", e.message);
            }
        }
        self.inner.loaded.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The repository API's load (explicit mode): loads a model, or reloads it,
    /// swapping in only the versions whose files or config changed. `config`
    /// replaces `config.toml` for this load.
    pub fn load(
        &self,
        name: &str,
        config: Option<ModelConfigFile>,
    ) -> Result<LoadReport, KilnError> {
        self.explicit_only("load")?;
        self.sync(name, config)
    }

    /// The repository API's unload (explicit mode): the model stops taking
    /// requests; those in flight finish on it.
    pub fn unload(&self, name: &str) -> Result<LoadReport, KilnError> {
        self.explicit_only("unload")?;
        let slot = self
            .slot(name)
            .filter(|s| !s.served.load().unloaded)
            .ok_or_else(|| KilnError::not_found(format!("model '{name}' is not loaded")))?;
        Ok(self.retire(name, &slot, "unloaded"))
    }

    fn explicit_only(&self, what: &str) -> Result<(), KilnError> {
        let mode = self.inner.opts.control_mode;
        if mode == ControlMode::Explicit {
            Ok(())
        } else {
            Err(KilnError::invalid(format!(
                "explicit model {what} is not allowed in model control mode '{}' (start kiln with --model-control-mode explicit)",
                mode.as_str()
            )))
        }
    }

    /// Takes every version of a model out of service.
    fn retire(&self, name: &str, slot: &ModelSlot, reason: &str) -> LoadReport {
        let mut applied = lock(&slot.load);
        let old = slot.served.swap(Arc::new(Served {
            versions: BTreeMap::new(),
            index: vec![IndexEntry {
                name: name.to_string(),
                version: None,
                state: ModelState::Unavailable,
                reason: reason.to_string(),
            }],
            unloaded: true,
        }));
        *applied = Applied::default();
        let retired: Vec<Version> = old.versions.keys().copied().collect();
        tracing::info!(model = %name, versions = ?retired.iter().map(|v| v.0).collect::<Vec<_>>(), "{reason}; versions are released when their last request ends");
        LoadReport {
            serving: vec![],
            loaded: vec![],
            retired,
        }
    }

    fn slot_or_insert(&self, name: &str) -> Arc<ModelSlot> {
        let _w = lock(&self.inner.write);
        if let Some(s) = self.slot(name) {
            return s;
        }
        let slot = Arc::new(ModelSlot::new());
        let mut table = HashMap::clone(&self.inner.models.load());
        table.insert(name.to_string(), slot.clone());
        self.inner.models.store(Arc::new(table));
        slot
    }

    fn remove_slot(&self, name: &str) {
        let _w = lock(&self.inner.write);
        let mut table = HashMap::clone(&self.inner.models.load());
        table.remove(name);
        self.inner.models.store(Arc::new(table));
    }

    /// Brings a model in line with its folder (or `config` in place of its
    /// `config.toml`).
    pub(crate) fn sync(
        &self,
        name: &str,
        config: Option<ModelConfigFile>,
    ) -> Result<LoadReport, KilnError> {
        if !repository::valid_model_name(name) {
            return Err(KilnError::invalid(format!(
                "'{name}' is not a valid model name"
            )));
        }
        let opts = &self.inner.opts;
        let Some(dir) =
            repository::scan_model(&opts.repository, name, opts.ready_marker.as_deref())
        else {
            return Err(KilnError::not_found(format!(
                "no model '{name}' in the repository {}",
                opts.repository.display()
            )));
        };
        let slot = self.slot_or_insert(name);
        let mut applied = lock(&slot.load);
        let print = repository::model_print(&dir);
        applied.print = Some(print.clone());
        let current = slot.served.load_full();
        let keep_serving = |reason: String, version: Option<Version>| {
            report_failure(name, version, &reason);
            let mut index = current.ready_lines();
            index.push(IndexEntry {
                name: name.to_string(),
                version,
                state: ModelState::Unavailable,
                reason: reason.clone(),
            });
            slot.served.store(Arc::new(Served {
                versions: current.versions.clone(),
                index,
                unloaded: false,
            }));
            KilnError::invalid(format!("failed to load '{name}': {reason}"))
        };
        let cfg = match config
            .map(Ok)
            .unwrap_or_else(|| ModelConfigFile::load(&dir.path))
        {
            Ok(c) => c,
            Err(e) => return Err(keep_serving(e.to_string(), None)),
        };
        let on_disk = dir.version_numbers();
        let wanted = cfg.version_policy().select(&on_disk);
        if wanted.is_empty() {
            let why = if on_disk.is_empty() {
                format!(
                    "{} has no numeric version folder (expected {name}/1/{}){}",
                    dir.path.display(),
                    cfg.model_filename(),
                    opts.ready_marker
                        .as_deref()
                        .map(|m| format!(" holding the marker file '{m}'"))
                        .unwrap_or_default()
                )
            } else {
                format!(
                    "version policy {} matches none of the versions {:?}",
                    cfg.version_policy().describe(),
                    on_disk.iter().map(|v| v.0).collect::<Vec<_>>()
                )
            };
            return Err(keep_serving(why, None));
        }

        // Which versions need loading: new ones, and those whose files or
        // version-relevant config changed.
        let key = cfg.for_versions();
        let mut next: BTreeMap<Version, Arc<ModelVersion>> = BTreeMap::new();
        let mut to_load = Vec::new();
        for &v in &wanted {
            let path = dir.version_path(v).unwrap_or(&dir.path).to_path_buf();
            // Taken once with the model's fingerprint, not read again.
            let files = print.files(v).cloned().unwrap_or_default();
            match current.versions.get(&v) {
                Some(mv) if mv.files == files && mv.config.for_versions() == key => {
                    next.insert(v, mv.clone());
                }
                _ => to_load.push((v, path, files)),
            }
        }
        if !to_load.is_empty() {
            // Show them as loading while what serves goes on serving.
            let mut index = current.ready_lines();
            for (v, _, _) in &to_load {
                index.retain(|i| i.version != Some(*v));
                index.push(IndexEntry {
                    name: name.to_string(),
                    version: Some(*v),
                    state: ModelState::Loading,
                    reason: String::new(),
                });
            }
            slot.served.store(Arc::new(Served {
                versions: current.versions.clone(),
                index,
                unloaded: false,
            }));
        }
        let mut loaded = Vec::new();
        let mut failures: Vec<(Version, String)> = Vec::new();
        for (v, path, files) in to_load {
            let file = path.join(cfg.model_filename());
            match self.load_version(name, v, &file, cfg.clone(), files) {
                Ok(mv) => {
                    tracing::info!(
                        model = %name,
                        version = v.0,
                        backend = mv.backend,
                        devices = %config::device_label(&mv.devices),
                        instances = mv.devices.len(),
                        warmed_up = mv.config.warms_up(),
                        "loaded"
                    );
                    next.insert(v, Arc::new(mv));
                    loaded.push(v);
                }
                Err(reason) => {
                    report_failure(name, Some(v), &reason);
                    if let Some(old) = current.versions.get(&v) {
                        next.insert(v, old.clone());
                    }
                    failures.push((v, reason));
                }
            }
        }
        if !failures.is_empty() {
            // A failed load retires nothing: what served goes on serving.
            for (v, mv) in &current.versions {
                next.entry(*v).or_insert_with(|| mv.clone());
            }
        }
        let mut index: Vec<IndexEntry> = next
            .keys()
            .map(|v| IndexEntry {
                name: name.to_string(),
                version: Some(*v),
                state: ModelState::Ready,
                reason: failures
                    .iter()
                    .find(|(f, _)| f == v)
                    .map(|(_, r)| format!("serving its previous files; reload failed: {r}"))
                    .unwrap_or_default(),
            })
            .collect();
        for (v, reason) in &failures {
            if !next.contains_key(v) {
                index.push(IndexEntry {
                    name: name.to_string(),
                    version: Some(*v),
                    state: ModelState::Unavailable,
                    reason: reason.clone(),
                });
            }
        }
        let retired: Vec<Version> = current
            .versions
            .keys()
            .filter(|v| !next.contains_key(v))
            .copied()
            .collect();
        let serving: Vec<Version> = next.keys().copied().collect();
        {
            let _w = lock(&slot.window);
            let traffic = (cfg.traffic.clone(), cfg.rollback.clone());
            if applied.traffic.as_ref() != Some(&traffic) {
                if applied.traffic.is_some() {
                    tracing::info!(model = %name, "traffic policy changed in the config");
                }
                slot.traffic.store(Arc::new(TrafficState::from_config(
                    traffic.0.as_ref(),
                    traffic.1.as_ref(),
                )));
                applied.traffic = Some(traffic);
            }
            slot.served.store(Arc::new(Served {
                versions: next,
                index,
                unloaded: false,
            }));
        }
        if !retired.is_empty() {
            tracing::info!(model = %name, versions = ?retired.iter().map(|v| v.0).collect::<Vec<_>>(), "retired; released when their last request ends");
        }
        if failures.is_empty() {
            Ok(LoadReport {
                serving,
                loaded,
                retired,
            })
        } else {
            let list: Vec<String> = failures
                .iter()
                .map(|(v, r)| format!("version {v}: {r}"))
                .collect();
            Err(KilnError::invalid(format!(
                "failed to load '{name}' {}",
                list.join("; ")
            )))
        }
    }

    fn load_version(
        &self,
        name: &str,
        version: Version,
        path: &Path,
        cfg: ModelConfigFile,
        files: FilesPrint,
    ) -> Result<ModelVersion, String> {
        let started = Instant::now();
        if !path.is_file() {
            return Err(format!("model file {} not found", path.display()));
        }
        // One loaded copy per device; instances on the same device share it.
        let placements = cfg.placements();
        let mut copies: Vec<(Device, Device, Arc<dyn Backend>)> = Vec::new();
        let (mut backend_name, mut platform) = ("", "");
        for (device, _) in config::group_devices(&placements) {
            let (on, loaded) = self.load_on(name, version, path, &cfg, device)?;
            match copies.first() {
                None => (backend_name, platform) = (loaded.name, loaded.platform),
                Some((_, first_on, first)) if first.signature() != loaded.backend.signature() => {
                    return Err(format!(
                        "the model's inputs and outputs on {on} ({}) differ from those on {first_on} ({backend_name})",
                        loaded.name
                    ));
                }
                Some(_) => {}
            }
            copies.push((device, on, Arc::from(loaded.backend)));
        }
        let Some((_, _, first)) = copies.first() else {
            return Err("no device to load it on".into());
        };
        let resolved =
            config::resolve_signature(first.signature(), &cfg, path).map_err(|e| e.to_string())?;
        if cfg.warms_up() {
            for (_, _, backend) in &copies {
                warm_up(backend.as_ref(), &resolved.signature)?;
            }
        }
        // Each instance's copy, and the device it really runs on.
        let (devices, backends): (Vec<Device>, Vec<Arc<dyn Backend>>) = placements
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
            max_queue_delay: cfg.queue_delay(),
            preferred_batch_sizes: cfg
                .preferred_batch_sizes
                .iter()
                .map(|&n| n as usize)
                .collect(),
            max_queue_size: cfg.queue_size(),
            instances: backends.len(),
            max_batch_cost: cfg.max_batch_tokens,
        };
        let scheduler = Scheduler::start(scheduling, backends, metrics.clone(), stats.clone())
            .map_err(|e| format!("cannot start compute threads: {e}"))?;
        metrics::gauge!(m::MODEL_LOAD_DURATION, "model" => name.to_string(), "version" => v.clone()).set(started.elapsed().as_secs_f64());
        metrics::gauge!(m::MODEL_VERSIONS_LOADED, "model" => name.to_string(), "version" => v.clone()).increment(1.0);
        Ok(ModelVersion {
            name: name.to_string(),
            version,
            label,
            backend: backend_name,
            platform,
            devices,
            max_batch_size: resolved.max_batch_size,
            signature: resolved.signature,
            config: cfg,
            scheduler,
            metrics,
            stats,
            files,
            health: HealthRecorder::default(),
        })
    }

    /// Loads one copy of a version on `device`; with `cpu_fallback`, a GPU that
    /// cannot be used gives a CPU copy and a warning. Returns where it runs.
    fn load_on(
        &self,
        name: &str,
        version: Version,
        path: &Path,
        cfg: &ModelConfigFile,
        device: Device,
    ) -> Result<(Device, LoadedBackend), String> {
        let req = LoadRequest {
            model_name: name,
            version,
            path,
            config: cfg,
            device,
        };
        let (on, loaded) = match self.inner.backends.load(cfg.backend, &req) {
            Ok(loaded) => (device, loaded),
            Err(e) if device != Device::Cpu && cfg.cpu_fallback() => {
                tracing::warn!(
                    model = %name,
                    version = version.0,
                    "cannot run on {device} ({e}); loading on the CPU instead (cpu_fallback = true)"
                );
                let cpu = LoadRequest {
                    device: Device::Cpu,
                    ..req
                };
                let loaded = self
                    .inner
                    .backends
                    .load(cfg.backend, &cpu)
                    .map_err(|cpu_e| {
                        format!("cannot run on {device} ({e}), nor on the CPU: {cpu_e}")
                    })?;
                (Device::Cpu, loaded)
            }
            Err(e) => return Err(e.to_string()),
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

    /// One scan of poll mode (blocking): loads models whose folder changed and has
    /// stayed the same for `settle`, unloads models whose folder is gone. A failed
    /// load is retried only once the folder changes again.
    pub fn poll(&self, state: &mut PollState, settle: Duration) {
        let opts = &self.inner.opts;
        let dirs = match repository::scan(&opts.repository, opts.ready_marker.as_deref()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("poll: {e}");
                return;
            }
        };
        let names: HashSet<&str> = dirs.iter().map(|d| d.name.as_str()).collect();
        let gone: Vec<(String, Arc<ModelSlot>)> = self
            .inner
            .models
            .load()
            .iter()
            .filter(|(n, _)| !names.contains(n.as_str()))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (name, slot) in gone {
            self.retire(&name, &slot, "removed from the repository");
            self.remove_slot(&name);
            state.pending.remove(&name);
        }
        let now = Instant::now();
        for dir in &dirs {
            let print = repository::model_print(dir);
            let applied = self
                .slot(&dir.name)
                .and_then(|s| lock(&s.load).print.clone());
            if applied.as_ref() == Some(&print) {
                state.pending.remove(&dir.name);
                continue;
            }
            match state.pending.get(&dir.name) {
                Some((p, since)) if *p == print => {
                    if now.duration_since(*since) >= settle {
                        state.pending.remove(&dir.name);
                        tracing::info!(model = %dir.name, "changed in the repository; loading");
                        if let Err(e) = self.sync(&dir.name, None) {
                            tracing::error!(model = %dir.name, "{}", e.message);
                        }
                    }
                }
                _ => {
                    state.pending.insert(dir.name.clone(), (print, now));
                }
            }
        }
    }
}

/// Logs and counts a failed load (`version` `None`: the model's config or folder).
fn report_failure(name: &str, version: Option<Version>, reason: &str) {
    tracing::error!(model = %name, version = ?version.map(|v| v.0), "failed to load: {reason}");
    metrics::counter!(m::MODEL_LOAD_FAILURES, "model" => name.to_string(), "version" => version.map(|v| v.to_string()).unwrap_or_default()).increment(1);
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
            Some(size) => Tensor::from_bytes(spec.dtype, shape, vec![0; count * size]),
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
