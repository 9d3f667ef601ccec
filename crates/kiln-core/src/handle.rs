//! The core handle every front end holds: cheap to clone, and the only door into
//! the core. Reads (readiness, metadata, routing, statistics, traffic) answer at
//! once; the repository operations are `async` and run their blocking work (file
//! reads, model loads, thread joins) on the runtime's blocking threads, so a
//! front end never has to.

use crate::audit::{self, Actor, Change};
use crate::backend::Backends;
use crate::budget::ByteBudget;
use crate::error::KilnError;
use crate::infer::{InferRequest, InferResponse};
use crate::loader::{ControlMode, LoadReport, Loader, PollState};
use crate::model::Version;
use crate::registry::{lock, IndexEntry, ModelVersion, Registry};
use crate::repository::{FsRepository, Repository, RepositoryError};
use crate::server::Server;
use crate::stats::StatsSnapshot;
use crate::traffic::api::{self, TrafficView};
use crate::traffic::policy::TrafficUpdate;
use crate::traffic::{rollback, routing};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Request bytes held in memory at once (bodies being decoded, tensors
    /// queued or computing); `None`: no limit.
    pub max_inflight_bytes: Option<usize>,
}

struct Inner {
    opts: CoreOptions,
    registry: Arc<Registry>,
    loader: Loader,
    server: Server,
    /// The start-up load finished.
    loaded: AtomicBool,
    poll: Mutex<PollState>,
    budget: ByteBudget,
}

/// The core handle: cheap to clone, shared by every front end.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

impl Core {
    /// A core over the folder `opts.repository`.
    pub fn new(opts: CoreOptions, backends: Backends) -> Self {
        let repository = FsRepository::new(opts.repository.clone(), opts.ready_marker.clone());
        Self::with_repository(opts, backends, Arc::new(repository))
    }

    /// A core over any source of model folders (`opts.repository` and
    /// `opts.ready_marker` are then the source's business).
    pub fn with_repository(
        opts: CoreOptions,
        backends: Backends,
        repository: Arc<dyn Repository>,
    ) -> Self {
        let registry = Arc::new(Registry::default());
        let loader = Loader {
            registry: registry.clone(),
            backends,
            repository,
            control_mode: opts.control_mode,
            startup_models: opts.startup_models.clone(),
        };
        Core {
            inner: Arc::new(Inner {
                server: Server::new(registry.clone()),
                registry,
                loader,
                loaded: AtomicBool::new(false),
                poll: Mutex::new(PollState::default()),
                budget: ByteBudget::new(opts.max_inflight_bytes.unwrap_or(usize::MAX)),
                opts,
            }),
        }
    }

    pub fn options(&self) -> &CoreOptions {
        &self.inner.opts
    }

    /// The process is up and answering.
    pub fn is_live(&self) -> bool {
        true
    }

    /// Ready to take inference traffic: the repository is loaded, the server is
    /// not draining, and (with strict readiness) every model that was not unloaded
    /// on purpose has a serving version.
    pub fn is_ready(&self) -> bool {
        self.is_started()
            && !self.is_draining()
            && (!self.inner.opts.strict_readiness || self.inner.registry.all_serving())
    }

    /// The start-up load has finished (whatever it loaded).
    pub fn is_started(&self) -> bool {
        self.inner.loaded.load(Ordering::SeqCst)
    }

    /// Readiness goes false and new inference requests are refused as
    /// unavailable; requests already admitted (queued or computing) finish.
    pub fn begin_drain(&self) {
        self.inner.server.begin_drain();
    }

    /// Whether [`Core::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.server.is_draining()
    }

    /// Inference requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inner.server.in_flight()
    }

    /// Resolves once draining has begun and no admitted request is left.
    pub async fn drained(&self) {
        self.inner.server.drained().await
    }

    /// The budget front ends charge a request's bytes to before holding them.
    pub fn budget(&self) -> &ByteBudget {
        &self.inner.budget
    }

    /// Runs one inference request.
    pub async fn infer(&self, req: InferRequest) -> Result<InferResponse, KilnError> {
        self.inner.server.infer(req).await
    }

    /// Resolves a model and an optional version (a number, `stable` or `canary`) to
    /// a serving version; without one, the stable version (no canary draw).
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, KilnError> {
        routing::route(&self.inner.registry, name, version, None, false).map(|r| r.primary)
    }

    /// Versions of a model that serve, ascending.
    pub fn versions(&self, name: &str) -> Vec<Version> {
        self.inner.registry.serving(name)
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
                    .inner
                    .registry
                    .slot(n)
                    .ok_or_else(|| routing::unknown_model(n))?;
                let served = slot.served.load();
                served.versions.values().cloned().collect()
            }
            (None, _) => self.inner.registry.all_versions(),
        };
        Ok(versions
            .into_iter()
            .map(|mv| {
                let s = mv.stats();
                (mv, s)
            })
            .collect())
    }

    /// The traffic policy of a model and the versions it applies to.
    pub fn traffic(&self, name: &str) -> Result<TrafficView, KilnError> {
        api::view(&self.inner.registry, name)
    }

    /// Changes a model's traffic policy at run time (see [`api::set`]), on
    /// the audit trail.
    pub fn set_traffic(
        &self,
        actor: &Actor,
        name: &str,
        update: &TrafficUpdate,
    ) -> Result<TrafficView, KilnError> {
        let policy = |v: &TrafficView| audit::policy(&v.state.policy);
        let before = self.traffic(name).map(|v| policy(&v)).unwrap_or_default();
        let result = api::set(&self.inner.registry, name, update);
        let after = match &result {
            Ok(v) => policy(v),
            Err(_) => before.clone(),
        };
        let change = Change {
            action: "traffic",
            model: Some(name),
            before,
            after,
        };
        audit::record(
            actor,
            change,
            result.as_ref().map(|_| ()).map_err(|e| e.message.as_str()),
        );
        result
    }

    /// One look of the rollback watcher (call it a few times a second).
    pub fn watch_rollbacks(&self) {
        rollback::watch(&self.inner.registry)
    }

    /// Loads what the control mode says to load at start; the server is ready
    /// (as far as loading goes) once it returns.
    pub async fn load_repository(&self) -> Result<(), KilnError> {
        let result: Result<(), RepositoryError> = self
            .off_runtime("repository load", |c| c.inner.loader.load_repository())
            .await?;
        result.map_err(|e| KilnError::internal(e.to_string()))?;
        self.inner.loaded.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The repository API's load (explicit mode); `config` replaces
    /// `config.toml`. On the audit trail.
    pub async fn load(
        &self,
        actor: &Actor,
        name: &str,
        config: Option<crate::config::ModelConfig>,
    ) -> Result<LoadReport, KilnError> {
        let before = self.versions(name);
        let owned = name.to_string();
        let result = self
            .off_runtime("model load", move |c| c.inner.loader.load(&owned, config))
            .await
            .and_then(|r| r.map_err(KilnError::from));
        audit::record_versions(actor, "load", name, &before, served(&result));
        result
    }

    /// The repository API's unload (explicit mode). On the audit trail.
    pub async fn unload(&self, actor: &Actor, name: &str) -> Result<LoadReport, KilnError> {
        let before = self.versions(name);
        let owned = name.to_string();
        let result = self
            .off_runtime("model unload", move |c| c.inner.loader.unload(&owned))
            .await
            .and_then(|r| r.map_err(KilnError::from));
        audit::record_versions(actor, "unload", name, &before, served(&result));
        result
    }

    /// The repository index: one line per model version known, sorted by name.
    pub async fn index(&self, ready_only: bool) -> Result<Vec<IndexEntry>, KilnError> {
        self.off_runtime("repository index", move |c| {
            c.inner.loader.index(ready_only)
        })
        .await
    }

    /// One scan of poll mode: loads models whose folder changed and has stayed
    /// the same for `settle`, unloads models whose folder is gone.
    pub async fn poll(&self, settle: Duration) -> Result<(), KilnError> {
        self.off_runtime("repository poll", move |c| {
            c.inner.loader.poll(&mut lock(&c.inner.poll), settle)
        })
        .await
    }

    /// Runs a front end's CPU-bound work (decoding a large body) on the runtime's
    /// blocking threads, never on a worker, where it would stall every
    /// connection that worker serves.
    pub async fn compute<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, KilnError> {
        self.off_runtime(what, move |_| work()).await
    }

    /// Runs blocking core work on the runtime's blocking threads; a panic there
    /// becomes one internal error, here and nowhere else.
    async fn off_runtime<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&Core) -> T + Send + 'static,
    ) -> Result<T, KilnError> {
        let core = self.clone();
        tokio::task::spawn_blocking(move || work(&core))
            .await
            .map_err(|e| {
                tracing::error!("the {what} panicked: {e}");
                KilnError::internal(format!("the {what} panicked"))
            })
    }
}

/// What a load or unload left serving, as the audit trail takes it.
fn served(result: &Result<LoadReport, KilnError>) -> Result<&[Version], &str> {
    result
        .as_ref()
        .map(|r| &r.serving[..])
        .map_err(|e| e.message.as_str())
}
