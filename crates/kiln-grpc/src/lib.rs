//! Kiln's gRPC front end: `inference.GRPCInferenceService`, wire-compatible with
//! Triton's `grpc_service.proto`. It only decodes, validates and encodes; the core
//! does the work.

mod answer_trailers;
mod authenticate;
mod charged_body;
mod codec;
pub mod contents;
pub mod convert;
mod health;
pub mod reflection;
mod views;
#[doc(hidden)]
pub mod wire_limits;

/// Generated protocol types (package `inference`), but for the hand-written
/// `InferTensorContents`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("inference");
    pub use crate::contents::InferTensorContents;
}

use authenticate::{caller, Authenticate};
use futures_util::{Stream, StreamExt};
use kiln_access::{Access, Caller, Scope, Target};
use kiln_core::budget::Charge;
use kiln_core::{Core, ErrorKind, InferRequest, KilnError};
use kiln_protocol::{params::Param, version_arg};
use kiln_telemetry::{Finished, RequestScope, Telemetry, REQUEST_ID_HEADER};
use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::*;
use std::pin::Pin;
use std::sync::Arc;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub use answer_trailers::AnswerTrailers;
use answer_trailers::TrailingTiming;
pub use charged_body::ChargeMessages;
pub use health::HealthService;
pub use pb::grpc_inference_service_client::GrpcInferenceServiceClient;

/// Maps the core's error to a gRPC status: the one place this mapping lives.
pub fn status(e: KilnError) -> Status {
    match e.kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(e.message),
        ErrorKind::NotFound => Status::not_found(e.message),
        ErrorKind::Unavailable => Status::unavailable(e.message),
        ErrorKind::DeadlineExceeded => Status::deadline_exceeded(e.message),
        ErrorKind::ResourceExhausted => Status::resource_exhausted(e.message),
        ErrorKind::ClientTimeout => Status::deadline_exceeded(e.message),
        ErrorKind::Internal => Status::internal(e.message),
        ErrorKind::Unauthenticated => Status::unauthenticated(e.message),
        ErrorKind::PermissionDenied => Status::permission_denied(e.message),
        ErrorKind::RateLimited { retry_after_secs } => {
            let mut s = Status::resource_exhausted(e.message);
            // Like HTTP's header, so that a client's retry logic finds it.
            s.metadata_mut()
                .insert("retry-after", retry_after_secs.into());
            s
        }
    }
}

/// The service implementation, holding a clone of the core handle.
#[derive(Clone)]
pub struct InferenceService {
    core: Core,
    access: Arc<Access>,
    telemetry: Arc<Telemetry>,
}

/// The tonic service [`InferenceService::into_server`] builds.
pub type Server =
    Authenticate<AnswerTrailers<ChargeMessages<GrpcInferenceServiceServer<InferenceService>>>>;

impl InferenceService {
    pub fn new(core: Core, access: Arc<Access>, telemetry: Arc<Telemetry>) -> Self {
        InferenceService {
            core,
            access,
            telemetry,
        }
    }

    /// A tonic service whose callers are identified before their message is
    /// read, with message size limits applied (a message over them is
    /// answered RESOURCE_EXHAUSTED) and incoming messages charged to the
    /// core's byte budget as they arrive.
    pub fn into_server(self, max_message_bytes: usize) -> Server {
        let budget = self.core.budget().clone();
        let access = self.access.clone();
        Authenticate {
            inner: AnswerTrailers(ChargeMessages {
                inner: GrpcInferenceServiceServer::new(self)
                    .max_decoding_message_size(max_message_bytes)
                    .max_encoding_message_size(max_message_bytes),
                budget,
                max_message_bytes,
            }),
            access,
        }
    }

    /// Whether the caller may use a method of `scope` on `target` (checked
    /// before anything is queued).
    fn permit(&self, caller: &Caller, scope: Scope, target: Target<'_>) -> Result<(), Status> {
        self.access.permit(caller, scope, target).map_err(status)
    }

    /// Converts, runs and converts back one inference request; `request_id`
    /// (the request's `id`, else `given`, else a new one) is set once the
    /// message is converted.
    async fn infer(
        core: &Core,
        scope: &RequestScope,
        req: ModelInferRequest,
        call: &Call,
        given: Option<&str>,
        request_id: &mut Option<String>,
    ) -> Result<Answered, KilnError> {
        let Call {
            deadline,
            routing_key,
        } = call;
        let deadline = *deadline;
        // tonic has already decoded the message (its wire bytes were charged
        // as they arrived, see charged_body); from here the decoded message
        // counts against the byte budget.
        let held = convert::held_bytes(&req);
        let charge = core.budget().charge(held)?;
        let span = scope.decode();
        let (mut req, _charge) = if held <= kiln_protocol::INLINE_DECODE_BYTES {
            span.in_scope(|| convert_charged(req, deadline, charge))?
        } else {
            core.compute("request decoder", move || {
                span.in_scope(|| convert_charged(req, deadline, charge))
            })
            .await??
        };
        if req.routing_key.is_none() {
            req.routing_key = routing_key.clone();
        }
        let id = kiln_telemetry::request_id(req.id.as_deref().or(given));
        // The answer's `id` is the client's own, whole; a new one when it gave none.
        if req.id.is_none() {
            req.id = Some(id.clone());
        }
        *request_id = Some(id);
        if scope.traced() {
            req.trace = Some(scope.span().clone());
        }
        let resp = core.infer(req).await?;
        let (timing, version, batch_size) = (resp.timing, resp.version.0, resp.batch_size);
        let response = scope.encode().in_scope(|| convert::response(resp));
        Ok(Answered {
            response,
            timing,
            version,
            batch_size,
        })
    }

    /// One inference request (of a unary call or a stream) in its span,
    /// its telemetry finished; answers its request id with the outcome.
    async fn infer_traced(
        &self,
        scope: RequestScope,
        who: &Caller,
        req: ModelInferRequest,
        call: &Call,
        given: Option<&str>,
    ) -> (String, Result<Answered, KilnError>) {
        let model = req.model_name.clone();
        let mut request_id = None;
        let answer = async {
            self.access
                .permit(who, Scope::Infer, Target::Model(&model))?;
            Self::infer(&self.core, &scope, req, call, given, &mut request_id).await
        }
        .instrument(scope.span().clone())
        .await;
        let id = request_id.unwrap_or_else(|| kiln_telemetry::request_id(given));
        if !scope.records() {
            return (id, answer);
        }
        let code = match &answer {
            Ok(_) => tonic::Code::Ok,
            Err(e) => status(e.clone()).code(),
        };
        scope.finish(&Finished {
            request_id: &id,
            model: &model,
            version: answer.as_ref().ok().map(|a| a.version),
            batch_size: answer.as_ref().ok().map(|a| a.batch_size),
            status: &format!("{code:?}"),
            error: answer.as_ref().err().map(|e| e.message.as_str()),
        });
        (id, answer)
    }
}

/// What a call's metadata says for each request it carries.
struct Call {
    deadline: Option<std::time::Duration>,
    routing_key: Option<String>,
}

/// An inference answer and what its telemetry reports.
struct Answered {
    response: ModelInferResponse,
    timing: kiln_core::Timing,
    version: u64,
    batch_size: usize,
}

fn metadata<'m>(md: &'m MetadataMap, key: &str) -> Option<&'m str> {
    md.get(key).and_then(|v| v.to_str().ok())
}

/// Sets `x-request-id` in an answer's metadata (when the id can travel there).
fn tag(md: &mut MetadataMap, request_id: &str) {
    if let Ok(v) = MetadataValue::try_from(request_id) {
        md.insert(REQUEST_ID_HEADER, v);
    }
}

/// Converts a request; while the message and its tensors are both held, the
/// charge covers both, then (the message consumed) the tensors alone, until the
/// answer.
fn convert_charged(
    req: ModelInferRequest,
    deadline: Option<std::time::Duration>,
    mut charge: Charge,
) -> Result<(InferRequest, Charge), KilnError> {
    charge.set(2 * charge.bytes())?;
    let req = convert::request(req, deadline)?;
    charge.set(req.tensor_bytes())?;
    Ok((req, charge))
}

/// The routing key sent as call metadata (a request parameter takes precedence).
fn routing_key(md: &MetadataMap) -> Option<String> {
    metadata(md, kiln_protocol::ROUTING_KEY_HEADER)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// A repository parameter in the protocol layer's terms.
fn repository_param(p: &ModelRepositoryParameter) -> Param {
    use model_repository_parameter::ParameterChoice as P;
    match &p.parameter_choice {
        None => Param::Null,
        Some(P::BoolParam(b)) => Param::Bool(*b),
        Some(P::Int64Param(n)) => Param::Int(*n),
        Some(P::StringParam(s)) => Param::Str(s.clone()),
        Some(P::BytesParam(b)) => Param::Bytes(b.clone()),
    }
}

/// How much sooner than a call's `grpc-timeout` Kiln gives up on it (at most a
/// quarter of the timeout). tonic's transport arms its own timer for the same
/// header when the call arrives, and answers CANCELLED "Timeout expired" when it
/// fires; Kiln answers a little before it so that the client gets the protocol's
/// DEADLINE_EXCEEDED, the metrics count a timeout, and the queued request is
/// dropped by the scheduler. An answer that reached the client after its deadline
/// would be of no use anyway.
const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(2);

/// What is left of a call's gRPC deadline (`grpc-timeout`), when it has one, less
/// [`DEADLINE_MARGIN`].
fn deadline(md: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    md.get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(convert::grpc_timeout)
        .map(|t| t - DEADLINE_MARGIN.min(t / 4))
}

type StreamResult =
    Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send + 'static>>;

/// Requests of one stream computed at once; answers keep the order of requests.
const STREAM_CONCURRENCY: usize = 64;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        r: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        self.permit(&caller(r.extensions()), Scope::Health, Target::Server)?;
        Ok(Response::new(ServerLiveResponse {
            live: self.core.is_live(),
        }))
    }

    async fn server_ready(
        &self,
        r: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        self.permit(&caller(r.extensions()), Scope::Health, Target::Server)?;
        Ok(Response::new(ServerReadyResponse {
            ready: self.core.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        r: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let who = caller(r.extensions());
        let r = r.into_inner();
        self.permit(&who, Scope::Infer, Target::Model(&r.name))?;
        let ready = match self.core.model(&r.name, version_arg(&r.version)) {
            Ok(_) => true,
            // Like Triton: a model that is not loaded (or not known) is not ready.
            Err(e) if matches!(e.kind, ErrorKind::Unavailable | ErrorKind::NotFound) => false,
            Err(e) => return Err(status(e)),
        };
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        r: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.permit(&caller(r.extensions()), Scope::Infer, Target::Server)?;
        let m = kiln_protocol::server_metadata();
        Ok(Response::new(ServerMetadataResponse {
            name: m.name.to_string(),
            version: m.version.to_string(),
            extensions: m.extensions.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let who = caller(r.extensions());
        let r = r.into_inner();
        self.permit(&who, Scope::Infer, Target::Model(&r.name))?;
        let mv = self
            .core
            .model(&r.name, version_arg(&r.version))
            .map_err(status)?;
        let m = kiln_protocol::views::metadata(&mv, &self.core.versions(&mv.name));
        Ok(Response::new(views::metadata(m)))
    }

    async fn model_infer(
        &self,
        r: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let md = r.metadata();
        let call = Call {
            deadline: deadline(md),
            routing_key: routing_key(md),
        };
        let given = metadata(md, REQUEST_ID_HEADER).map(str::to_string);
        let scope = self
            .telemetry
            .begin("grpc", &r.get_ref().model_name, |k| metadata(md, k));
        let who = caller(r.extensions());
        let (id, answer) = self
            .infer_traced(scope, &who, r.into_inner(), &call, given.as_deref())
            .await;
        match answer {
            Ok(a) => {
                let mut answer = Response::new(a.response);
                tag(answer.metadata_mut(), &id);
                if let Ok(v) = kiln_protocol::server_timing(&a.timing).parse() {
                    answer.extensions_mut().insert(TrailingTiming(v));
                }
                Ok(answer)
            }
            Err(e) => {
                let mut s = status(e);
                tag(s.metadata_mut(), &id);
                Err(s)
            }
        }
    }

    type ModelStreamInferStream = StreamResult;

    async fn model_stream_infer(
        &self,
        r: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let service = self.clone();
        // A stream's deadline bounds every request in it.
        let ends = deadline(r.metadata()).map(|d| std::time::Instant::now() + d);
        let key = routing_key(r.metadata());
        // A stream's `traceparent` makes each of its requests a span of the
        // caller's trace; a request id is each request's own.
        let traceparent = metadata(r.metadata(), "traceparent").map(str::to_string);
        let tracestate = metadata(r.metadata(), "tracestate").map(str::to_string);
        let who = caller(r.extensions());
        let out = r
            .into_inner()
            .map(move |item| {
                let service = service.clone();
                let call = Call {
                    // Each request gets what is left of the stream's deadline.
                    deadline: ends.map(|e| e.saturating_duration_since(std::time::Instant::now())),
                    routing_key: key.clone(),
                };
                let who = who.clone();
                let (traceparent, tracestate) = (traceparent.clone(), tracestate.clone());
                async move {
                    let req = match item {
                        Ok(req) => req,
                        // The stream itself broke (e.g. a message over the size limit): end it with that status.
                        Err(s) => return Err(s),
                    };
                    let scope = service
                        .telemetry
                        .begin("grpc", &req.model_name, |k| match k {
                            "traceparent" => traceparent.as_deref(),
                            "tracestate" => tracestate.as_deref(),
                            _ => None,
                        });
                    let model_name = req.model_name.clone();
                    // Each request names its model and counts against the rate;
                    // errors of one request travel in the stream, which goes on.
                    let (id, answer) = service.infer_traced(scope, &who, req, &call, None).await;
                    Ok(match answer {
                        Ok(mut a) => {
                            // A stream has no trailers per answer: the timing
                            // travels as a parameter of the response.
                            a.response.parameters.insert(
                                kiln_protocol::SERVER_TIMING.into(),
                                InferParameter {
                                    parameter_choice: Some(
                                        infer_parameter::ParameterChoice::StringParam(
                                            kiln_protocol::server_timing(&a.timing),
                                        ),
                                    ),
                                },
                            );
                            ModelStreamInferResponse {
                                error_message: String::new(),
                                infer_response: Some(a.response),
                            }
                        }
                        Err(e) => ModelStreamInferResponse {
                            error_message: e.message,
                            // Names the request the error is for.
                            infer_response: Some(ModelInferResponse {
                                model_name,
                                id,
                                ..Default::default()
                            }),
                        },
                    })
                }
            })
            .buffered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(out)))
    }

    async fn model_config(
        &self,
        r: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let who = caller(r.extensions());
        let r = r.into_inner();
        self.permit(&who, Scope::Infer, Target::Model(&r.name))?;
        let mv = self
            .core
            .model(&r.name, version_arg(&r.version))
            .map_err(status)?;
        Ok(Response::new(ModelConfigResponse {
            config: Some(views::model_config(kiln_protocol::views::model_config(&mv))),
        }))
    }

    async fn model_statistics(
        &self,
        r: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let who = caller(r.extensions());
        let r = r.into_inner();
        let name = Some(r.name.as_str()).filter(|n| !n.is_empty());
        self.permit(
            &who,
            Scope::Metrics,
            name.map_or(Target::AllModels, Target::Model),
        )?;
        let list = self
            .core
            .stats(name, version_arg(&r.version))
            .map_err(status)?;
        let list = kiln_protocol::views::statistics(&list);
        Ok(Response::new(ModelStatisticsResponse {
            model_stats: list.iter().map(views::model_stats).collect(),
        }))
    }

    async fn repository_index(
        &self,
        r: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        self.permit(&caller(r.extensions()), Scope::Admin, Target::AllModels)?;
        let r = r.into_inner();
        let models = self
            .core
            .index(r.ready)
            .await
            .map_err(status)?
            .into_iter()
            .map(|e| repository_index_response::ModelIndex {
                name: e.name,
                version: e.version.map(|v| v.to_string()).unwrap_or_default(),
                state: e.state.as_str().to_string(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        r: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let who = caller(r.extensions());
        let r = r.into_inner();
        self.permit(&who, Scope::Admin, Target::Model(&r.model_name))?;
        let config = kiln_protocol::params::load_config(
            r.parameters.keys().map(String::as_str),
            r.parameters.get("config").map(repository_param),
        )
        .map_err(status)?;
        self.core
            .load(&who.actor(), &r.model_name, config)
            .await
            .map_err(status)?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let who = caller(r.extensions());
        let r = r.into_inner();
        self.permit(&who, Scope::Admin, Target::Model(&r.model_name))?;
        self.core
            .unload(&who.actor(), &r.model_name)
            .await
            .map_err(status)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn with_timeout(v: &str) -> tonic::metadata::MetadataMap {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("grpc-timeout", v.parse().unwrap());
        md
    }

    #[test]
    fn deadline_answers_before_the_transport_timer() {
        assert_eq!(
            deadline(&with_timeout("20m")),
            Some(Duration::from_millis(18))
        );
        assert_eq!(
            deadline(&with_timeout("4m")),
            Some(Duration::from_millis(3))
        );
        assert_eq!(deadline(&with_timeout("0n")), Some(Duration::ZERO));
        assert_eq!(deadline(&with_timeout("soon")), None);
        assert_eq!(deadline(&tonic::metadata::MetadataMap::new()), None);
    }
}
