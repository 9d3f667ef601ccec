//! The model table: one slot per model name, each holding the versions it
//! serves, its traffic policy and what its last load applied. Readers take no
//! lock (`arc-swap`); a change builds a new value and swaps the pointer.
//!
//! This module only holds state. Deciding what loads is the loader's, choosing a
//! version for a request is routing's, and answering requests is the server's.

use crate::config::{Device, ModelConfig, RollbackConfig, TrafficConfig};
use crate::metrics::{self as m, VersionMetrics};
use crate::model::{ModelSignature, Version};
use crate::repository::{FilesPrint, ModelPrint};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::stats::{StatsSnapshot, VersionStats};
use crate::traffic::health::{HealthRecorder, RollbackWindow};
use crate::traffic::policy::TrafficState;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// One loaded, serving model version.
pub struct ModelVersion {
    pub name: String,
    pub version: Version,
    /// Model and version, for messages: `name:version`.
    pub label: String,
    pub backend: &'static str,
    pub platform: &'static str,
    /// The device each instance runs on (after any `cpu_fallback`).
    pub devices: Vec<Device>,
    pub max_batch_size: u32,
    pub signature: ModelSignature,
    pub config: ModelConfig,
    pub(crate) scheduler: Scheduler,
    pub(crate) metrics: Arc<VersionMetrics>,
    pub(crate) stats: Arc<VersionStats>,
    /// The files it was loaded from, to tell when they change.
    pub(crate) files: FilesPrint,
    /// Outcomes since the rollback watcher last looked.
    pub(crate) health: HealthRecorder,
}

impl ModelVersion {
    pub fn queue_depth(&self) -> usize {
        self.scheduler.queue_depth()
    }

    /// Instances per device, in the order of the config (Triton's instance groups).
    pub fn instance_groups(&self) -> Vec<(Device, usize)> {
        crate::config::group_devices(&self.devices)
    }

    /// How the version schedules requests (batching, delay, queue, instances).
    pub fn scheduling(&self) -> &SchedulerConfig {
        self.scheduler.config()
    }

    /// Triton statistics since the version loaded.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

impl Drop for ModelVersion {
    fn drop(&mut self) {
        metrics::gauge!(m::MODEL_VERSIONS_LOADED, "model" => self.name.clone(), "version" => self.version.to_string()).decrement(1.0);
        tracing::info!(model = %self.name, version = self.version.0, "released");
    }
}

/// State of a model version in the repository index (Triton's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Loading,
    Ready,
    Unavailable,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Loading => "LOADING",
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
        }
    }
}

/// A line of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: Option<Version>,
    pub state: ModelState,
    pub reason: String,
}

impl IndexEntry {
    pub(crate) fn new(
        name: &str,
        version: Option<Version>,
        state: ModelState,
        reason: String,
    ) -> Self {
        IndexEntry {
            name: name.to_string(),
            version,
            state,
            reason,
        }
    }
}

/// What a model serves at one moment: swapped whole, never edited.
#[derive(Default)]
pub(crate) struct Served {
    pub(crate) versions: BTreeMap<Version, Arc<ModelVersion>>,
    pub(crate) index: Vec<IndexEntry>,
    /// Unloaded on purpose (explicit mode): does not count against readiness.
    pub(crate) unloaded: bool,
}

impl Served {
    /// The index lines of the versions that serve.
    pub(crate) fn ready_lines(&self) -> Vec<IndexEntry> {
        self.index
            .iter()
            .filter(|i| i.state == ModelState::Ready)
            .cloned()
            .collect()
    }
}

/// What the last load of a model applied.
#[derive(Default)]
pub(crate) struct LoadRecord {
    /// The folder's fingerprint when it was read (poll mode compares against it).
    pub(crate) fingerprint: Option<ModelPrint>,
    /// The `[traffic]` and `[rollback]` sections in force from the config: when
    /// they change, they replace the policy; otherwise API changes and rollbacks stay.
    pub(crate) traffic: Option<(Option<TrafficConfig>, Option<RollbackConfig>)>,
}

/// A model name's place in the table; it outlives the versions it serves.
pub(crate) struct ModelSlot {
    pub(crate) served: ArcSwap<Served>,
    pub(crate) traffic: ArcSwap<TrafficState>,
    /// Serialises loads and unloads of this model and records what they applied.
    pub(crate) load: Mutex<LoadRecord>,
    /// The rollback watcher's window; its lock also serialises traffic changes.
    pub(crate) window: Mutex<RollbackWindow>,
}

impl ModelSlot {
    fn new() -> Self {
        ModelSlot {
            served: ArcSwap::from_pointee(Served::default()),
            traffic: ArcSwap::from_pointee(TrafficState::from_config(None, None)),
            load: Mutex::new(LoadRecord::default()),
            window: Mutex::new(RollbackWindow::default()),
        }
    }
}

/// Locks a mutex whose holder may have panicked: the state it guards is always
/// whole (it is only ever replaced), so the poison carries no meaning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every model name the server knows.
#[derive(Default)]
pub struct Registry {
    models: ArcSwap<HashMap<String, Arc<ModelSlot>>>,
    /// Serialises changes to the table (readers never take it).
    write: Mutex<()>,
}

impl Registry {
    pub(crate) fn slot(&self, name: &str) -> Option<Arc<ModelSlot>> {
        self.models.load().get(name).cloned()
    }

    /// The table as it is now.
    pub(crate) fn slots(&self) -> Arc<HashMap<String, Arc<ModelSlot>>> {
        self.models.load_full()
    }

    pub(crate) fn slot_or_insert(&self, name: &str) -> Arc<ModelSlot> {
        let _w = lock(&self.write);
        if let Some(s) = self.slot(name) {
            return s;
        }
        let slot = Arc::new(ModelSlot::new());
        let mut table = HashMap::clone(&self.models.load());
        table.insert(name.to_string(), slot.clone());
        self.models.store(Arc::new(table));
        slot
    }

    pub(crate) fn remove(&self, name: &str) {
        let _w = lock(&self.write);
        let mut table = HashMap::clone(&self.models.load());
        table.remove(name);
        self.models.store(Arc::new(table));
    }

    /// Versions of a model that serve, ascending.
    pub fn serving(&self, name: &str) -> Vec<Version> {
        self.slot(name)
            .map(|s| s.served.load().versions.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every serving version of every model, sorted by name and version.
    pub fn all_versions(&self) -> Vec<Arc<ModelVersion>> {
        let mut all: Vec<Arc<ModelVersion>> = self
            .models
            .load()
            .values()
            .flat_map(|s| {
                s.served
                    .load()
                    .versions
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        all
    }

    /// Whether every model that was not unloaded on purpose has a serving version.
    pub fn all_serving(&self) -> bool {
        self.models.load().values().all(|slot| {
            let served = slot.served.load();
            served.unloaded || !served.versions.is_empty()
        })
    }
}
