//! The loader: brings a model in line with its repository folder without dropping
//! a request. It reads the folder, decides what to keep, load and retire (`plan`),
//! loads and warms up each new or changed version off to the side (`build`), then
//! publishes the new set with one pointer swap. Requests already holding a version
//! finish on it; a retired version is released when its last request ends. A
//! version that fails to load leaves what serves untouched.
//!
//! Everything here blocks (file reads, model loads): the core calls it from its
//! blocking threads, never from the async runtime's workers.

use crate::backend::Backends;
use crate::config::{self, ModelConfig};
use crate::loader::build::{build, VersionSource};
use crate::loader::error::{LoadError, VersionError};
use crate::loader::plan::{plan, settle, Pick};
use crate::metrics as m;
use crate::model::Version;
use crate::registry::{lock, IndexEntry, ModelSlot, ModelState, ModelVersion, Registry, Served};
use crate::repository::{Repository, RepositoryError};
use crate::traffic::policy::TrafficState;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Who decides which models load (Triton's `--model-control-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlMode {
    /// Everything in the repository loads at start; nothing changes afterwards.
    #[default]
    None,
    /// Everything loads at start; the repository is watched for changes.
    Poll,
    /// Only the models named at start load; the repository API loads and unloads.
    Explicit,
}

impl ControlMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlMode::None => "none",
            ControlMode::Poll => "poll",
            ControlMode::Explicit => "explicit",
        }
    }
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

pub struct Loader {
    pub(crate) registry: Arc<Registry>,
    pub(crate) backends: Backends,
    pub(crate) repository: Arc<dyn Repository>,
    pub(crate) control_mode: ControlMode,
    /// Explicit mode: models loaded at start (`*`: all of them).
    pub(crate) startup_models: Vec<String>,
}

impl Loader {
    /// Loads what the control mode says to load at start. A model that fails is
    /// reported in the index; the others serve regardless.
    pub fn load_repository(&self) -> Result<(), RepositoryError> {
        let dirs = self.repository.scan()?;
        let all = self.control_mode != ControlMode::Explicit
            || self.startup_models.iter().any(|n| n == "*");
        let names: Vec<String> = if all {
            dirs.into_iter().map(|d| d.name).collect()
        } else {
            self.startup_models.clone()
        };
        for name in names {
            if let Err(e) = self.reconcile(&name, None) {
                tracing::error!(model = %name, "{e}");
            }
        }
        Ok(())
    }

    /// The repository API's load (explicit mode): loads a model, or reloads it,
    /// swapping in only the versions whose files or config changed. `config`
    /// replaces `config.toml` for this load.
    pub fn load(&self, name: &str, config: Option<ModelConfig>) -> Result<LoadReport, LoadError> {
        self.explicit_only("load")?;
        self.reconcile(name, config)
    }

    /// The repository API's unload (explicit mode): the model stops taking
    /// requests; those in flight finish on it.
    pub fn unload(&self, name: &str) -> Result<LoadReport, LoadError> {
        self.explicit_only("unload")?;
        let slot = self
            .registry
            .slot(name)
            .filter(|s| !s.served.load().unloaded)
            .ok_or_else(|| LoadError::NotLoaded(name.to_string()))?;
        Ok(retire(name, &slot, "unloaded"))
    }

    fn explicit_only(&self, action: &'static str) -> Result<(), LoadError> {
        match self.control_mode {
            ControlMode::Explicit => Ok(()),
            mode => Err(LoadError::NotExplicit {
                action,
                mode: mode.as_str(),
            }),
        }
    }

    /// Brings a model in line with its folder (or `config` in place of its
    /// `config.toml`).
    pub(crate) fn reconcile(
        &self,
        name: &str,
        config: Option<ModelConfig>,
    ) -> Result<LoadReport, LoadError> {
        if !crate::repository::valid_model_name(name) {
            return Err(LoadError::InvalidName(name.to_string()));
        }
        let dir = match self.repository.scan_model(name) {
            Ok(Some(dir)) => dir,
            Ok(None) => {
                return Err(LoadError::NotInRepository {
                    name: name.to_string(),
                })
            }
            Err(source) => {
                return Err(LoadError::Repository {
                    name: name.to_string(),
                    source,
                })
            }
        };
        let slot = self.registry.slot_or_insert(name);
        let mut record = lock(&slot.load);
        let fingerprint = self.repository.fingerprint(&dir);
        record.fingerprint = Some(fingerprint.clone());
        let current = slot.served.load_full();
        // Records a failure of the whole model: what serves goes on serving.
        let keep_serving = |e: LoadError| {
            let reason = match &e {
                LoadError::Config { source, .. } => source.to_string(),
                LoadError::NoVersion { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            report_failure(name, None, &reason);
            let mut index = current.ready_lines();
            index.push(IndexEntry::new(name, None, ModelState::Unavailable, reason));
            publish(&slot, current.versions.clone(), index);
            e
        };
        let cfg = match config.map(Ok).unwrap_or_else(|| self.read_config(&dir)) {
            Ok(c) => c,
            Err(source) => {
                return Err(keep_serving(LoadError::Config {
                    name: name.to_string(),
                    source,
                }))
            }
        };
        let on_disk = dir.version_numbers();
        let wanted = cfg.version_policy.select(&on_disk);
        if wanted.is_empty() {
            let reason = if on_disk.is_empty() {
                format!(
                    "'{name}' has no numeric version folder (expected {name}/1/{}){}",
                    cfg.model_filename,
                    self.repository.version_rule()
                )
            } else {
                format!(
                    "version policy {} matches none of the versions {:?}",
                    cfg.version_policy.describe(),
                    on_disk.iter().map(|v| v.0).collect::<Vec<_>>()
                )
            };
            return Err(keep_serving(LoadError::NoVersion {
                name: name.to_string(),
                reason,
            }));
        }

        // What each version is loaded from: its files (taken once, with the
        // model's fingerprint) and the part of the config versions depend on.
        let key = cfg.for_versions();
        let serving: Vec<_> = current
            .versions
            .iter()
            .map(|(v, mv)| (*v, (mv.files.clone(), mv.config.for_versions())))
            .collect();
        let sources: Vec<_> = wanted
            .iter()
            .map(|&v| {
                (
                    v,
                    (
                        fingerprint.files(v).cloned().unwrap_or_default(),
                        key.clone(),
                    ),
                )
            })
            .collect();
        let decided = plan(&serving, &sources);
        if !decided.load.is_empty() {
            // Show them as loading while what serves goes on serving.
            let mut index = current.ready_lines();
            for v in &decided.load {
                index.retain(|i| i.version != Some(*v));
                index.push(IndexEntry::new(
                    name,
                    Some(*v),
                    ModelState::Loading,
                    String::new(),
                ));
            }
            publish(&slot, current.versions.clone(), index);
        }
        let mut built: BTreeMap<Version, Arc<ModelVersion>> = BTreeMap::new();
        let mut failures: Vec<(Version, VersionError)> = Vec::new();
        for &v in &decided.load {
            let files = fingerprint.files(v).cloned().unwrap_or_default();
            let result = self
                .repository
                .fetch(&dir, v, &files)
                .map_err(|e| VersionError::Storage(e.to_string()))
                .and_then(|folder| {
                    let file = crate::repository::model_file(
                        &folder,
                        &cfg.model_filename,
                        cfg.model_filename_chosen,
                        |p| self.repository.has_file(p),
                    );
                    if !self.repository.has_file(&file) {
                        return Err(VersionError::Model(format!(
                            "model file {} not found",
                            dir.version_path(v)
                                .unwrap_or(&dir.path)
                                .join(&cfg.model_filename)
                                .display()
                        )));
                    }
                    build(
                        &self.backends,
                        VersionSource {
                            name,
                            version: v,
                            path: &file,
                            config: &cfg,
                            files,
                        },
                    )
                })
                .map_err(|e| self.discreet(e));
            match result {
                Ok(mv) => {
                    tracing::info!(
                        model = %name,
                        version = v.0,
                        backend = mv.backend,
                        devices = %config::device_label(&mv.devices),
                        instances = mv.devices.len(),
                        warmed_up = mv.config.warmup,
                        "loaded"
                    );
                    built.insert(v, Arc::new(mv));
                }
                Err(e) => {
                    report_failure(name, Some(v), &e.to_string());
                    failures.push((v, e));
                }
            }
        }
        let failed: Vec<(Version, String)> =
            failures.iter().map(|(v, e)| (*v, e.to_string())).collect();
        let current_versions: Vec<Version> = current.versions.keys().copied().collect();
        let settled = settle(&current_versions, &decided, &failed);
        let next: BTreeMap<Version, Arc<ModelVersion>> = settled
            .serving
            .iter()
            .filter_map(|(v, copy)| {
                let from = match copy {
                    Pick::Current => &current.versions,
                    Pick::New => &built,
                };
                from.get(v).map(|mv| (*v, mv.clone()))
            })
            .collect();
        let index = settled
            .index
            .into_iter()
            .map(|(v, state, reason)| IndexEntry::new(name, Some(v), state, reason))
            .collect();
        let serving: Vec<Version> = next.keys().copied().collect();
        {
            let _w = lock(&slot.window);
            let traffic = (cfg.traffic.clone(), cfg.rollback.clone());
            if record.traffic.as_ref() != Some(&traffic) {
                if record.traffic.is_some() {
                    tracing::info!(model = %name, "traffic policy changed in the config");
                }
                slot.traffic.store(Arc::new(TrafficState::from_config(
                    traffic.0.as_ref(),
                    traffic.1.as_ref(),
                )));
                record.traffic = Some(traffic);
            }
            publish(&slot, next, index);
        }
        if !settled.retired.is_empty() {
            tracing::info!(model = %name, versions = ?settled.retired.iter().map(|v| v.0).collect::<Vec<_>>(), "retired; released when their last request ends");
        }
        if failures.is_empty() {
            Ok(LoadReport {
                serving,
                loaded: built.keys().copied().collect(),
                retired: settled.retired,
            })
        } else {
            Err(LoadError::Versions {
                name: name.to_string(),
                failures,
            })
        }
    }

    /// A version's error without the repository's place on disk (clients read
    /// these messages): paths in it become relative to the repository.
    fn discreet(&self, e: VersionError) -> VersionError {
        let root = format!("{}/", self.repository.location().trim_end_matches('/'));
        match e {
            VersionError::Model(m) => VersionError::Model(m.replace(&root, "")),
            VersionError::Runtime(m) => VersionError::Runtime(m.replace(&root, "")),
            VersionError::Storage(m) => VersionError::Storage(m.replace(&root, "")),
        }
    }

    fn read_config(
        &self,
        dir: &crate::repository::ModelDir,
    ) -> Result<ModelConfig, config::ConfigError> {
        // Named relative to the repository in messages.
        let path = std::path::Path::new(&dir.name).join(config::CONFIG_FILE);
        match self.repository.read_config(dir) {
            Ok(None) => Ok(ModelConfig::default()),
            Ok(Some(text)) => ModelConfig::parse(&text, &path),
            Err(source) => Err(config::ConfigError::Read { path, source }),
        }
    }
}

/// Swaps in what a model serves.
fn publish(
    slot: &ModelSlot,
    versions: BTreeMap<Version, Arc<ModelVersion>>,
    index: Vec<IndexEntry>,
) {
    slot.served.store(Arc::new(Served {
        versions,
        index,
        unloaded: false,
    }));
}

/// Takes every version of a model out of service.
pub(crate) fn retire(name: &str, slot: &ModelSlot, reason: &str) -> LoadReport {
    let mut record = lock(&slot.load);
    let old = slot.served.swap(Arc::new(Served {
        versions: BTreeMap::new(),
        index: vec![IndexEntry::new(
            name,
            None,
            ModelState::Unavailable,
            reason.to_string(),
        )],
        unloaded: true,
    }));
    *record = Default::default();
    let retired: Vec<Version> = old.versions.keys().copied().collect();
    tracing::info!(model = %name, versions = ?retired.iter().map(|v| v.0).collect::<Vec<_>>(), "{reason}; versions are released when their last request ends");
    LoadReport {
        serving: vec![],
        loaded: vec![],
        retired,
    }
}

/// Logs and counts a failed load (`version` `None`: the model's config or folder).
fn report_failure(name: &str, version: Option<Version>, reason: &str) {
    tracing::error!(model = %name, version = ?version.map(|v| v.0), "failed to load: {reason}");
    metrics::counter!(m::MODEL_LOAD_FAILURES, "model" => name.to_string(), "version" => version.map(|v| v.to_string()).unwrap_or_default()).increment(1);
}
