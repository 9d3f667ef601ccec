//! The standard gRPC health service (`grpc.health.v1.Health`), for Kubernetes'
//! gRPC probes and `grpc_health_probe`: the empty service name (or the V2
//! service's) is the server's readiness; a model's name is that model's. A
//! server starting up or draining is NOT_SERVING; a model still loading or with
//! no version that serves is NOT_SERVING; a name that is neither is NOT_FOUND
//! (SERVICE_UNKNOWN on Watch), as the protocol says.

use crate::authenticate::caller;
use crate::status;
use futures_util::Stream;
use kiln_access::{Access, Caller, Scope, Target};
use kiln_core::{Core, ErrorKind, KilnError};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
// `State`, not `ServingStatus`: gRPC statuses are built in `status()` alone, and
// tests/layering.rs looks for them by name.
use tonic_health::pb::health_check_response::ServingStatus as State;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// How often a Watch looks again.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Service names that mean the whole server.
const SERVER_NAMES: [&str; 2] = ["", "inference.GRPCInferenceService"];

#[derive(Clone)]
pub struct HealthService {
    core: Core,
    access: Arc<Access>,
}

impl HealthService {
    pub fn new(core: Core, access: Arc<Access>) -> Self {
        HealthService { core, access }
    }

    /// The service behind Kiln's authentication: the server's health follows
    /// `--open-health`; a model's needs what its ModelReady needs.
    pub fn into_server(self) -> crate::authenticate::Authenticate<HealthServer<HealthService>> {
        let access = self.access.clone();
        crate::authenticate::Authenticate {
            inner: HealthServer::new(self),
            access,
        }
    }

    fn permit(&self, who: &Caller, service: &str) -> Result<(), Status> {
        let (scope, target) = if SERVER_NAMES.contains(&service) {
            (Scope::Health, Target::Server)
        } else {
            (Scope::Infer, Target::Model(service))
        };
        self.access.permit(who, scope, target).map_err(status)
    }

    /// `None`: no such service.
    fn status_of(&self, service: &str) -> Option<State> {
        let serving = |yes: bool| {
            if yes {
                State::Serving
            } else {
                State::NotServing
            }
        };
        if SERVER_NAMES.contains(&service) {
            return Some(serving(self.core.is_ready()));
        }
        match self.core.model(service, None) {
            Ok(_) => Some(serving(!self.core.is_draining())),
            Err(e) if e.kind == ErrorKind::Unavailable => Some(State::NotServing),
            // Before the start-up load ends, a model may not have begun loading.
            Err(_) if !self.core.is_started() => Some(State::NotServing),
            Err(_) => None,
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        r: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let who = caller(r.extensions());
        let service = r.into_inner().service;
        self.permit(&who, &service)?;
        match self.status_of(&service) {
            Some(s) => Ok(Response::new(HealthCheckResponse { status: s as i32 })),
            None => Err(status(KilnError::new(
                ErrorKind::NotFound,
                format!(
                    "no service '{}' (the server is '', a model is its name)",
                    kiln_core::error::quote(&service)
                ),
            ))),
        }
    }

    type WatchStream = WatchStream;

    /// Sends the status at once and again whenever it changes; ends once the
    /// server drains (after saying NOT_SERVING), so a shutdown is not held up.
    async fn watch(
        &self,
        r: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = caller(r.extensions());
        let service = r.into_inner().service;
        self.permit(&who, &service)?;
        let this = self.clone();
        let stream = futures_util::stream::unfold(
            (this, service, None::<State>, false),
            |(this, service, last, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let now = this.status_of(&service).unwrap_or(State::ServiceUnknown);
                    let draining = this.core.is_draining();
                    if Some(now) != last || draining {
                        let answer = HealthCheckResponse { status: now as i32 };
                        return Some((Ok(answer), (this, service, Some(now), draining)));
                    }
                    tokio::time::sleep(WATCH_EVERY).await;
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
