//! The core handle every front end holds: the model table, readiness, and the
//! inference path.

use crate::backend::{Backend, Backends, LoadRequest};
use crate::config::{self, ModelConfigFile};
use crate::error::{ErrorKind, KilnError};
use crate::infer::{validate, InferOutput, InferRequest, InferResponse};
use crate::metrics::{self as m, Outcome, VersionMetrics};
use crate::model::{ModelSignature, Version};
use crate::repository;
use crate::scheduler::{Computed, Scheduler, SchedulerConfig};
use crate::stats::{StatsSnapshot, VersionStats};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Extensions of the V2 protocol this server implements completely.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_configuration", "statistics"];

pub struct CoreOptions {
    pub repository: PathBuf,
    /// Ready only when every model in the repository loaded (Triton's default).
    pub strict_readiness: bool,
}

/// One loaded, serving model version.
pub struct ModelVersion {
    pub name: String,
    pub version: Version,
    /// Model and version, for messages: `name:version`.
    pub label: String,
    pub backend: &'static str,
    pub platform: &'static str,
    pub max_batch_size: u32,
    pub signature: ModelSignature,
    pub config: ModelConfigFile,
    scheduler: Scheduler,
    metrics: Arc<VersionMetrics>,
    stats: Arc<VersionStats>,
}

impl ModelVersion {
    pub fn queue_depth(&self) -> usize {
        self.scheduler.queue_depth()
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

/// A model as the table holds it: the versions that serve and the index lines.
#[derive(Default)]
struct ModelEntry {
    versions: BTreeMap<Version, Arc<ModelVersion>>,
    index: Vec<IndexEntry>,
}

struct Inner {
    opts: CoreOptions,
    backends: Backends,
    models: ArcSwap<HashMap<String, Arc<ModelEntry>>>,
    loaded: AtomicBool,
    draining: AtomicBool,
    /// Serialises changes to the table (readers never take it).
    write: Mutex<()>,
}

/// The core handle: cheap to clone, shared by every front end.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

/// Server metadata (`GET /v2`).
#[derive(Debug, Clone)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: &'static [&'static str],
}

impl Core {
    pub fn new(opts: CoreOptions, backends: Backends) -> Self {
        Core {
            inner: Arc::new(Inner {
                opts,
                backends,
                models: ArcSwap::from_pointee(HashMap::new()),
                loaded: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                write: Mutex::new(()),
            }),
        }
    }

    /// Scans the repository and loads every model (blocking: call it off the async
    /// runtime). A model that fails is marked UNAVAILABLE with its reason; the others
    /// serve regardless.
    pub fn load_repository(&self) -> Result<(), repository::RepositoryError> {
        let dirs = repository::scan(&self.inner.opts.repository)?;
        for dir in dirs {
            let entry = self.load_model(&dir);
            let _guard = self.inner.write.lock().unwrap_or_else(|p| p.into_inner());
            let mut table = HashMap::clone(&self.inner.models.load());
            table.insert(dir.name.clone(), Arc::new(entry));
            self.inner.models.store(Arc::new(table));
        }
        self.inner.loaded.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn load_model(&self, dir: &repository::ModelDir) -> ModelEntry {
        let fail = |version: Option<Version>, reason: String| {
            tracing::error!(model = %dir.name, version = ?version.map(|v| v.0), "failed to load: {reason}");
            metrics::counter!(m::MODEL_LOAD_FAILURES, "model" => dir.name.clone()).increment(1);
            ModelEntry {
                versions: BTreeMap::new(),
                index: vec![IndexEntry {
                    name: dir.name.clone(),
                    version,
                    state: ModelState::Unavailable,
                    reason,
                }],
            }
        };
        let cfg = match ModelConfigFile::load(&dir.path) {
            Ok(c) => c,
            Err(e) => return fail(None, e.to_string()),
        };
        // Until version policies arrive, the highest version serves.
        let Some((version, vpath)) = dir.versions.last() else {
            return fail(
                None,
                format!(
                    "{} has no numeric version folder (expected {}/1/{})",
                    dir.path.display(),
                    dir.name,
                    cfg.model_filename()
                ),
            );
        };
        match self.load_version(&dir.name, *version, vpath.join(cfg.model_filename()), cfg) {
            Ok(mv) => {
                tracing::info!(model = %dir.name, version = version.0, backend = mv.backend, "loaded");
                let mut versions = BTreeMap::new();
                versions.insert(*version, Arc::new(mv));
                ModelEntry {
                    versions,
                    index: vec![IndexEntry {
                        name: dir.name.clone(),
                        version: Some(*version),
                        state: ModelState::Ready,
                        reason: String::new(),
                    }],
                }
            }
            Err(e) => fail(Some(*version), e),
        }
    }

    fn load_version(
        &self,
        name: &str,
        version: Version,
        path: PathBuf,
        cfg: ModelConfigFile,
    ) -> Result<ModelVersion, String> {
        let started = Instant::now();
        if !path.is_file() {
            return Err(format!("model file {} not found", path.display()));
        }
        let req = LoadRequest {
            model_name: name,
            version,
            path: &path,
            config: &cfg,
        };
        let loaded = self
            .inner
            .backends
            .load(cfg.backend, &req)
            .map_err(|e| e.to_string())?;
        if let Some(why) = &loaded.fallback_reason {
            tracing::warn!(
                model = name,
                version = version.0,
                "serving with {} because {why}",
                loaded.name
            );
        }
        let resolved = config::resolve_signature(loaded.backend.signature(), &cfg, &path)
            .map_err(|e| e.to_string())?;
        let label = format!("{name}:{version}");
        let backend: Arc<dyn Backend> = Arc::from(loaded.backend);
        let v = version.to_string();
        let metrics = Arc::new(VersionMetrics::new(name, &v));
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
            instances: cfg.instances(),
        };
        let scheduler = Scheduler::start(scheduling, backend, metrics.clone(), stats.clone())
            .map_err(|e| format!("cannot start compute threads: {e}"))?;
        metrics::gauge!(m::MODEL_LOAD_DURATION, "model" => name.to_string(), "version" => v.clone()).set(started.elapsed().as_secs_f64());
        metrics::gauge!(m::MODEL_VERSIONS_LOADED, "model" => name.to_string(), "version" => v.clone()).set(1.0);
        Ok(ModelVersion {
            name: name.to_string(),
            version,
            label,
            backend: loaded.name,
            platform: loaded.platform,
            max_batch_size: resolved.max_batch_size,
            signature: resolved.signature,
            config: cfg,
            scheduler,
            metrics,
            stats,
        })
    }

    /// The process is up and answering.
    pub fn is_live(&self) -> bool {
        true
    }

    /// Ready to take inference traffic: the repository is loaded, the server is
    /// not draining, and (with strict readiness) every model is ready.
    pub fn is_ready(&self) -> bool {
        if !self.inner.loaded.load(Ordering::SeqCst) || self.inner.draining.load(Ordering::SeqCst) {
            return false;
        }
        !self.inner.opts.strict_readiness
            || self
                .inner
                .models
                .load()
                .values()
                .all(|e| e.index.iter().all(|i| i.state == ModelState::Ready))
    }

    /// Readiness goes false; requests in flight finish.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn server_metadata(&self) -> ServerMetadata {
        ServerMetadata {
            name: "kiln",
            version: env!("CARGO_PKG_VERSION"),
            extensions: EXTENSIONS,
        }
    }

    /// Resolves a model and optional version to a serving version.
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, KilnError> {
        let table = self.inner.models.load();
        let Some(entry) = table.get(name) else {
            return Err(KilnError::not_found(format!("unknown model '{name}'")));
        };
        match version.filter(|v| !v.is_empty()) {
            None => entry.versions.values().next_back().cloned().ok_or_else(|| {
                let reason = entry.index.first().map(|i| i.reason.as_str()).unwrap_or("");
                KilnError::unavailable(format!("model '{name}' has no ready version: {reason}"))
            }),
            Some(v) => {
                let parsed = Version::parse(v).ok_or_else(|| {
                    KilnError::not_found(format!("model '{name}' has no version '{v}'"))
                })?;
                entry.versions.get(&parsed).cloned().ok_or_else(|| {
                    let known = entry.index.iter().any(|i| i.version == Some(parsed));
                    if known {
                        KilnError::unavailable(format!("model '{name}' version {v} is not ready"))
                    } else {
                        KilnError::not_found(format!("model '{name}' has no version '{v}'"))
                    }
                })
            }
        }
    }

    /// Versions of a model that serve, ascending.
    pub fn versions(&self, name: &str) -> Vec<Version> {
        self.inner
            .models
            .load()
            .get(name)
            .map(|e| e.versions.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The repository index: one line per model version known, sorted by name.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let table = self.inner.models.load();
        let mut out: Vec<IndexEntry> = table
            .values()
            .flat_map(|e| e.index.iter().cloned())
            .filter(|i| !ready_only || i.state == ModelState::Ready)
            .collect();
        out.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        out
    }

    /// Runs one inference request through validation, the version's queue and its
    /// backend.
    pub async fn infer(&self, req: InferRequest) -> Result<InferResponse, KilnError> {
        let started = Instant::now();
        if self.inner.draining.load(Ordering::SeqCst) {
            return Err(KilnError::unavailable("the server is shutting down"));
        }
        let mv = self.model(&req.model, req.version.as_deref())?;
        // Counts the request's outcome when this future ends, even when it is
        // dropped because the client went away.
        let mut guard = OutcomeGuard::new(&mv, started);
        let valid = validate(
            &mv.label,
            &mv.signature.inputs,
            &mv.signature.outputs,
            mv.max_batch_size,
            req.inputs,
            &req.outputs,
        )
        .inspect_err(|_| guard.outcome = Outcome::Invalid)?;
        let timeout = req.timeout.into_iter().chain(mv.config.timeout()).min();
        let deadline = timeout.map(|t| started + t);
        let rx = mv
            .scheduler
            .submit(valid.inputs, valid.batch_size, deadline)
            .inspect_err(|_| guard.outcome = Outcome::Rejected)?;
        let answer = match deadline {
            None => rx.await,
            Some(d) => match tokio::time::timeout_at(d.into(), rx).await {
                Ok(answer) => answer,
                Err(_) => {
                    // Dropping the receiver tells the scheduler not to compute it.
                    guard.outcome = Outcome::Timeout;
                    return Err(timed_out(&mv.label, timeout.unwrap_or_default()));
                }
            },
        };
        let Ok(done) = answer else {
            guard.outcome = Outcome::Error;
            return Err(KilnError::internal(format!(
                "model {}: compute thread stopped",
                mv.label
            )));
        };
        let Computed {
            outputs: all,
            queue,
            compute,
            ..
        } = done;
        mv.metrics.queue.record(queue.as_secs_f64());
        let all = all.inspect_err(|e| {
            guard.outcome = match e.kind {
                ErrorKind::Unavailable => Outcome::Rejected,
                ErrorKind::DeadlineExceeded => Outcome::Timeout,
                _ => Outcome::Error,
            }
        })?;
        mv.metrics.compute.record(compute.total().as_secs_f64());
        if all.len() != mv.signature.outputs.len() {
            guard.outcome = Outcome::Error;
            return Err(KilnError::internal(format!(
                "model {}: backend returned {} outputs, expected {}",
                mv.label,
                all.len(),
                mv.signature.outputs.len()
            )));
        }
        // Validation rejects duplicate output names, so each slot is taken once.
        let mut all: Vec<Option<crate::tensor::Tensor>> = all.into_iter().map(Some).collect();
        let mut outputs = Vec::with_capacity(valid.outputs.len());
        for &i in &valid.outputs {
            if let Some(tensor) = all[i].take() {
                outputs.push(InferOutput {
                    name: mv.signature.outputs[i].name.clone(),
                    tensor,
                });
            }
        }
        guard.outcome = Outcome::Success;
        let total = started.elapsed();
        mv.metrics.request.record(total.as_secs_f64());
        mv.metrics.inferences.increment(valid.batch_size as u64);
        mv.stats
            .record_success(valid.batch_size, total, queue, &compute);
        guard.recorded = true;
        Ok(InferResponse {
            model: mv.name.clone(),
            version: mv.version,
            id: req.id,
            outputs,
        })
    }

    /// Statistics of every serving version of `name` (all models when `None`), or
    /// of one version.
    pub fn stats(
        &self,
        name: Option<&str>,
        version: Option<&str>,
    ) -> Result<Vec<(Arc<ModelVersion>, StatsSnapshot)>, KilnError> {
        let versions: Vec<Arc<ModelVersion>> = match (name, version.filter(|v| !v.is_empty())) {
            (Some(n), Some(_)) => vec![self.model(n, version)?],
            (Some(n), None) => {
                let table = self.inner.models.load();
                let entry = table
                    .get(n)
                    .ok_or_else(|| KilnError::not_found(format!("unknown model '{n}'")))?;
                entry.versions.values().cloned().collect()
            }
            (None, _) => {
                let table = self.inner.models.load();
                let mut all: Vec<Arc<ModelVersion>> = table
                    .values()
                    .flat_map(|e| e.versions.values().cloned())
                    .collect();
                all.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
                all
            }
        };
        Ok(versions
            .into_iter()
            .map(|mv| {
                let s = mv.stats();
                (mv, s)
            })
            .collect())
    }
}

fn timed_out(label: &str, limit: Duration) -> KilnError {
    KilnError::new(
        ErrorKind::DeadlineExceeded,
        format!(
            "model {label}: the request timed out after {} µs before it was answered",
            limit.as_micros()
        ),
    )
}

/// Counts a request's outcome and keeps the in-flight gauge, however the request ends.
struct OutcomeGuard<'a> {
    mv: &'a ModelVersion,
    started: Instant,
    outcome: Outcome,
    /// Statistics were recorded on the success path.
    recorded: bool,
}

impl<'a> OutcomeGuard<'a> {
    fn new(mv: &'a ModelVersion, started: Instant) -> Self {
        mv.metrics.inflight.increment(1.0);
        OutcomeGuard {
            mv,
            started,
            outcome: Outcome::Cancelled,
            recorded: false,
        }
    }
}

impl Drop for OutcomeGuard<'_> {
    fn drop(&mut self) {
        self.mv.metrics.inflight.decrement(1.0);
        self.mv.metrics.count(self.outcome);
        if !self.recorded {
            self.mv.stats.record_failure(self.started.elapsed());
        }
    }
}
