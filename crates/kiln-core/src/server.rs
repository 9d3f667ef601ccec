//! The core handle every front end holds: the model table, readiness, routing
//! between versions, and the inference path. Loading, reloading and unloading
//! live in `lifecycle.rs`.

use crate::config::ModelConfigFile;
use crate::error::{ErrorKind, KilnError};
use crate::infer::{validate, InferInput, InferOutput, InferRequest, InferResponse};
use crate::metrics::{self as m, Outcome, VersionMetrics};
use crate::model::{ModelSignature, Version};
use crate::repository::{self, FilesPrint};
use crate::scheduler::{Computed, Scheduler, SchedulerConfig};
use crate::stats::{StatsSnapshot, VersionStats};
use crate::tensor::Tensor;
use crate::traffic::{
    self, HealthRecorder, RollbackWindow, TrafficPolicy, TrafficState, TrafficUpdate, LABEL_CANARY,
    LABEL_STABLE,
};
use crate::Backends;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Extensions of the V2 protocol this server implements completely.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
];

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

#[derive(Debug, Clone, Default)]
pub struct CoreOptions {
    pub repository: PathBuf,
    /// Ready only when every model in the repository loaded (Triton's default).
    pub strict_readiness: bool,
    pub control_mode: ControlMode,
    /// Explicit mode: models loaded at start (`*`: all of them).
    pub startup_models: Vec<String>,
    /// A version folder counts only once it holds a file of this name.
    pub ready_marker: Option<String>,
}

/// One loaded, serving model version.
pub struct ModelVersion {
    pub name: String,
    pub version: Version,
    /// Model and version, for messages: `name:version`.
    pub label: String,
    pub backend: &'static str,
    pub platform: &'static str,
    /// The device each instance runs on (after any `cpu_fallback`).
    pub devices: Vec<crate::config::Device>,
    pub max_batch_size: u32,
    pub signature: ModelSignature,
    pub config: ModelConfigFile,
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
    pub fn instance_groups(&self) -> Vec<(crate::config::Device, usize)> {
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

    /// The version unpinned traffic goes to when no canary takes it.
    fn stable(&self, p: &TrafficPolicy) -> Option<&Arc<ModelVersion>> {
        p.stable
            .and_then(|v| self.versions.get(&v))
            .or_else(|| self.versions.values().next_back())
    }

    fn canary(&self, p: &TrafficPolicy) -> Option<&Arc<ModelVersion>> {
        let stable = self.stable(p)?.version;
        p.canary
            .filter(|&c| c != stable)
            .and_then(|c| self.versions.get(&c))
    }
}

/// A model name's place in the table; it outlives the versions it serves.
pub(crate) struct ModelSlot {
    pub(crate) served: ArcSwap<Served>,
    pub(crate) traffic: ArcSwap<TrafficState>,
    /// Serialises loads and unloads of this model and records what they applied.
    pub(crate) load: Mutex<crate::lifecycle::Applied>,
    /// The rollback watcher's window; its lock also serialises traffic changes.
    pub(crate) window: Mutex<RollbackWindow>,
}

impl ModelSlot {
    pub(crate) fn new() -> Self {
        ModelSlot {
            served: ArcSwap::from_pointee(Served::default()),
            traffic: ArcSwap::from_pointee(TrafficState::from_config(None, None)),
            load: Mutex::new(Default::default()),
            window: Mutex::new(RollbackWindow::default()),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Inner {
    pub(crate) opts: CoreOptions,
    pub(crate) backends: Backends,
    pub(crate) models: ArcSwap<HashMap<String, Arc<ModelSlot>>>,
    pub(crate) loaded: AtomicBool,
    draining: AtomicBool,
    /// Inference requests between their admission and their answer.
    in_flight: AtomicUsize,
    /// Woken when `in_flight` falls to 0 while draining.
    idle: tokio::sync::Notify,
    /// Serialises changes to the table (readers never take it).
    pub(crate) write: Mutex<()>,
}

/// The core handle: cheap to clone, shared by every front end.
#[derive(Clone)]
pub struct Core {
    pub(crate) inner: Arc<Inner>,
}

/// One admitted inference request; dropping it (answer sent, or the client
/// went away) lets a drain finish.
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.draining.load(Ordering::SeqCst)
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// Server metadata (`GET /v2`).
#[derive(Debug, Clone)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: &'static [&'static str],
}

/// A model's traffic policy as the API shows it.
#[derive(Debug, Clone)]
pub struct TrafficView {
    pub name: String,
    /// Serving versions, ascending.
    pub versions: Vec<Version>,
    /// The version unpinned traffic goes to when not sent to the canary.
    pub stable: Option<Version>,
    /// The canary, when it serves and differs from stable.
    pub canary: Option<Version>,
    pub state: TrafficState,
}

/// Where a request goes: its primary version and, maybe, a shadow copy.
struct Route {
    primary: Arc<ModelVersion>,
    shadow: Option<Arc<ModelVersion>>,
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
                in_flight: AtomicUsize::new(0),
                idle: tokio::sync::Notify::new(),
                write: Mutex::new(()),
            }),
        }
    }

    pub fn options(&self) -> &CoreOptions {
        &self.inner.opts
    }

    pub(crate) fn slot(&self, name: &str) -> Option<Arc<ModelSlot>> {
        self.inner.models.load().get(name).cloned()
    }

    /// The process is up and answering.
    pub fn is_live(&self) -> bool {
        true
    }

    /// Ready to take inference traffic: the repository is loaded, the server is
    /// not draining, and (with strict readiness) every model that was not unloaded
    /// on purpose has a serving version.
    pub fn is_ready(&self) -> bool {
        if !self.inner.loaded.load(Ordering::SeqCst) || self.inner.draining.load(Ordering::SeqCst) {
            return false;
        }
        !self.inner.opts.strict_readiness
            || self.inner.models.load().values().all(|slot| {
                let served = slot.served.load();
                served.unloaded || !served.versions.is_empty()
            })
    }

    /// Readiness goes false and new inference requests are refused as
    /// unavailable; requests already admitted (queued or computing) finish.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`Core::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Inference requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Resolves once draining has begun and no admitted request is left.
    pub async fn drained(&self) {
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            // Registers the waiter before the check, so a wake-up in between is kept.
            idle.as_mut().enable();
            if self.is_draining() && self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Counts a request as in flight, unless the server is draining. The count
    /// goes up before draining is read: a request that is admitted is therefore
    /// always seen by [`Core::drained`].
    fn admit(&self) -> Result<InFlight, KilnError> {
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let ticket = InFlight(self.inner.clone());
        if self.is_draining() {
            return Err(KilnError::unavailable("the server is shutting down"));
        }
        Ok(ticket)
    }

    pub fn server_metadata(&self) -> ServerMetadata {
        ServerMetadata {
            name: "kiln",
            version: env!("CARGO_PKG_VERSION"),
            extensions: EXTENSIONS,
        }
    }

    /// Resolves a model and an optional version (a number, `stable` or `canary`) to
    /// a serving version; without one, the stable version (no canary draw).
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, KilnError> {
        self.route(name, version, None, false).map(|r| r.primary)
    }

    /// Picks the version a request runs on. `split`: unpinned requests are drawn
    /// between stable and canary, and a share is copied to the shadow.
    fn route(
        &self,
        name: &str,
        version: Option<&str>,
        key: Option<&str>,
        split: bool,
    ) -> Result<Route, KilnError> {
        let Some(slot) = self.slot(name) else {
            return Err(KilnError::not_found(format!("unknown model '{name}'")));
        };
        let served = slot.served.load();
        let traffic = slot.traffic.load();
        let no_version = || {
            let reason = served
                .index
                .iter()
                .map(|i| i.reason.as_str())
                .find(|r| !r.is_empty())
                .unwrap_or("");
            KilnError::unavailable(format!("model '{name}' has no ready version: {reason}"))
        };
        let primary = match version.filter(|v| !v.is_empty()) {
            None | Some(LABEL_STABLE) => {
                let stable = served.stable(&traffic.policy).ok_or_else(no_version)?;
                match served.canary(&traffic.policy) {
                    Some(c)
                        if split
                            && version.is_none_or(str::is_empty)
                            && traffic::to_canary(traffic.policy.canary_percent, key) =>
                    {
                        c
                    }
                    _ => stable,
                }
            }
            Some(LABEL_CANARY) => served.canary(&traffic.policy).ok_or_else(|| {
                KilnError::not_found(format!("model '{name}' has no canary version serving"))
            })?,
            Some(v) => {
                let parsed = Version::parse(v).ok_or_else(|| {
                    KilnError::not_found(format!(
                        "model '{name}' has no version '{v}' (a version is a number, '{LABEL_STABLE}' or '{LABEL_CANARY}')"
                    ))
                })?;
                served.versions.get(&parsed).ok_or_else(|| {
                    let known = served.index.iter().any(|i| i.version == Some(parsed));
                    if known {
                        KilnError::unavailable(format!("model '{name}' version {v} is not ready"))
                    } else {
                        KilnError::not_found(format!("model '{name}' has no version '{v}'"))
                    }
                })?
            }
        }
        .clone();
        let shadow = if split {
            traffic
                .policy
                .shadow
                .filter(|&s| s != primary.version)
                .and_then(|s| served.versions.get(&s))
                .filter(|_| traffic::to_shadow(traffic.policy.shadow_percent))
                .cloned()
        } else {
            None
        };
        Ok(Route { primary, shadow })
    }

    /// Versions of a model that serve, ascending.
    pub fn versions(&self, name: &str) -> Vec<Version> {
        self.slot(name)
            .map(|s| s.served.load().versions.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The repository index: one line per model version known, sorted by name.
    /// Models in the repository that are not loaded show as UNAVAILABLE.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let table = self.inner.models.load();
        let mut out: Vec<IndexEntry> = Vec::new();
        for slot in table.values() {
            let served = slot.served.load();
            let traffic = slot.traffic.load();
            for line in &served.index {
                let mut line = line.clone();
                if let Some(rb) = &traffic.rolled_back {
                    if line.version == Some(rb.version) {
                        line.reason = format!("canary rolled back: {}", rb.reason);
                    }
                }
                out.push(line);
            }
        }
        if let Ok(dirs) = repository::scan(
            &self.inner.opts.repository,
            self.inner.opts.ready_marker.as_deref(),
        ) {
            for d in dirs {
                if !table.contains_key(&d.name) {
                    out.push(IndexEntry {
                        name: d.name,
                        version: None,
                        state: ModelState::Unavailable,
                        reason: "not loaded".into(),
                    });
                }
            }
        }
        out.retain(|i| !ready_only || i.state == ModelState::Ready);
        out.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        out
    }

    /// The traffic policy of a model and the versions it applies to.
    pub fn traffic(&self, name: &str) -> Result<TrafficView, KilnError> {
        let slot = self
            .slot(name)
            .ok_or_else(|| KilnError::not_found(format!("unknown model '{name}'")))?;
        let served = slot.served.load();
        let state = TrafficState::clone(&slot.traffic.load());
        Ok(TrafficView {
            name: name.to_string(),
            versions: served.versions.keys().copied().collect(),
            stable: served.stable(&state.policy).map(|v| v.version),
            canary: served.canary(&state.policy).map(|v| v.version),
            state,
        })
    }

    /// Changes a model's traffic policy at run time. Versions it names must be
    /// serving. It holds until the next change through the API or to the model's
    /// `[traffic]`/`[rollback]` config, and clears a recorded rollback.
    pub fn set_traffic(
        &self,
        name: &str,
        update: &TrafficUpdate,
    ) -> Result<TrafficView, KilnError> {
        let slot = self
            .slot(name)
            .ok_or_else(|| KilnError::not_found(format!("unknown model '{name}'")))?;
        {
            let _w = lock(&slot.window);
            let served = slot.served.load();
            let policy = update.apply(&slot.traffic.load().policy);
            for (what, v) in [
                ("stable", policy.stable),
                ("canary", policy.canary),
                ("shadow", policy.shadow),
            ] {
                if let Some(v) = v {
                    if !served.versions.contains_key(&v) {
                        return Err(KilnError::invalid(format!(
                            "{what} version {v} of '{name}' is not serving (serving: {:?})",
                            served.versions.keys().map(|v| v.0).collect::<Vec<_>>()
                        )));
                    }
                }
            }
            if policy.canary.is_some() && policy.canary == served.stable(&policy).map(|v| v.version)
            {
                return Err(KilnError::invalid(format!(
                    "the canary of '{name}' must differ from its stable version"
                )));
            }
            tracing::info!(
                model = %name,
                ?policy,
                "traffic policy changed through the API"
            );
            slot.traffic.store(Arc::new(TrafficState {
                policy,
                source: traffic::PolicySource::Api,
                rolled_back: None,
            }));
        }
        self.traffic(name)
    }

    /// One look of the rollback watcher (call it a few times a second): takes what
    /// each version recorded, slides each canary's window, and sets a canary's
    /// share to 0 when it breaches its model's rollback policy.
    pub fn watch_rollbacks(&self) {
        let now = Instant::now();
        let table = self.inner.models.load();
        for (name, slot) in table.iter() {
            let mut window = lock(&slot.window);
            let served = slot.served.load();
            let mut health: HashMap<Version, traffic::Health> = served
                .versions
                .iter()
                .map(|(v, mv)| (*v, mv.health.take()))
                .collect();
            let state = slot.traffic.load();
            let watched = match (
                &state.policy.rollback,
                served.canary(&state.policy),
                served.stable(&state.policy),
            ) {
                (Some(rb), Some(c), Some(s))
                    if state.policy.canary_percent > 0.0 && state.rolled_back.is_none() =>
                {
                    Some((rb, c.version, s.version))
                }
                _ => None,
            };
            let Some((policy, canary, stable)) = watched else {
                window.clear();
                continue;
            };
            let (s, c) = window.push(
                (stable, canary),
                now,
                Duration::from_secs(policy.window_secs),
                health.remove(&stable).unwrap_or_default(),
                health.remove(&canary).unwrap_or_default(),
            );
            if let Some(reason) = traffic::judge(policy, &s, &c) {
                tracing::warn!(model = %name, canary = canary.0, stable = stable.0, "canary rolled back: {reason}");
                metrics::counter!(m::CANARY_ROLLBACKS, "model" => name.clone(), "version" => canary.to_string()).increment(1);
                let mut policy = state.policy.clone();
                policy.canary_percent = 0.0;
                slot.traffic.store(Arc::new(TrafficState {
                    policy,
                    source: state.source,
                    rolled_back: Some(traffic::RolledBack {
                        version: canary,
                        reason,
                        at: std::time::SystemTime::now(),
                    }),
                }));
                window.clear();
            }
        }
    }

    /// Runs one inference request through validation, the version's queue and its
    /// backend.
    pub async fn infer(&self, req: InferRequest) -> Result<InferResponse, KilnError> {
        let started = Instant::now();
        let _admitted = self.admit()?;
        let Route {
            primary: mv,
            shadow,
        } = self.route(
            &req.model,
            req.version.as_deref(),
            req.routing_key.as_deref(),
            true,
        )?;
        // Counts the request's outcome when this future ends, even when it is
        // dropped because the client went away.
        let mut guard = OutcomeGuard::new(&mv, started);
        let shadow = shadow.map(|sh| (sh, req.inputs.clone()));
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
                ErrorKind::InvalidArgument => Outcome::Invalid,
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
        if let Some((sh, inputs)) = shadow {
            let primary: Vec<(String, Tensor)> = outputs
                .iter()
                .map(|o| (o.name.clone(), o.tensor.clone()))
                .collect();
            tokio::spawn(run_shadow(sh, inputs, primary));
        }
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
                let slot = self
                    .slot(n)
                    .ok_or_else(|| KilnError::not_found(format!("unknown model '{n}'")))?;
                let served = slot.served.load();
                served.versions.values().cloned().collect()
            }
            (None, _) => {
                let table = self.inner.models.load();
                let mut all: Vec<Arc<ModelVersion>> = table
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
        let elapsed = self.started.elapsed();
        if !self.recorded {
            self.mv.stats.record_failure(elapsed);
        }
        // What the client did wrong or gave up on says nothing of the version.
        if !matches!(self.outcome, Outcome::Invalid | Outcome::Cancelled) {
            self.mv
                .health
                .record(self.outcome == Outcome::Success, elapsed);
        }
    }
}

/// Runs a shadow copy of a request that succeeded on its primary version, and
/// records how long it took, how it ended and how its outputs differ. Its answer
/// is discarded; the shadow's own queue bounds how much of this can pile up.
async fn run_shadow(
    sh: Arc<ModelVersion>,
    inputs: Vec<InferInput>,
    primary: Vec<(String, Tensor)>,
) {
    let started = Instant::now();
    let labels = [
        ("model", sh.name.clone()),
        ("version", sh.version.to_string()),
    ];
    let outcome = match validate(
        &sh.label,
        &sh.signature.inputs,
        &sh.signature.outputs,
        sh.max_batch_size,
        inputs,
        &[],
    ) {
        Err(_) => Outcome::Invalid,
        Ok(valid) => match sh.scheduler.submit(valid.inputs, valid.batch_size, None) {
            Err(_) => Outcome::Rejected,
            Ok(rx) => match rx.await {
                Ok(Computed {
                    outputs: Ok(outs), ..
                }) => {
                    let named: Vec<(String, Tensor)> = sh
                        .signature
                        .outputs
                        .iter()
                        .map(|s| s.name.clone())
                        .zip(outs)
                        .collect();
                    match traffic::compare(&primary, &named) {
                        traffic::Difference::MaxAbs(d) => {
                            metrics::histogram!(m::SHADOW_OUTPUT_DIFF, &labels).record(d)
                        }
                        traffic::Difference::Mismatch(why) => {
                            tracing::debug!(model = %sh.name, version = sh.version.0, "shadow output mismatch: {why}");
                            metrics::counter!(m::SHADOW_MISMATCHES, &labels).increment(1)
                        }
                    }
                    Outcome::Success
                }
                _ => Outcome::Error,
            },
        },
    };
    metrics::histogram!(m::SHADOW_DURATION, &labels).record(started.elapsed().as_secs_f64());
    metrics::counter!(m::SHADOW_REQUESTS, "model" => sh.name.clone(), "version" => sh.version.to_string(), "outcome" => outcome.as_str()).increment(1);
}
