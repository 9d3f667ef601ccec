//! Kiln's REST front end: the KServe V2 protocol with Triton's extensions, over axum.
//! It only decodes, validates and encodes; the core does the work.

mod body;
mod caller;
/// The inference body codec (public for the fuzz targets).
#[doc(hidden)]
pub mod codec;
mod traffic;
mod views;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use caller::Who;
use kiln_access::{Access, Scope, Target};
use kiln_core::budget::Charge;
use kiln_core::{Core, ErrorKind, KilnError};
use kiln_telemetry::{Finished, RequestScope, Telemetry, REQUEST_ID_HEADER};
use serde_json::json;
use std::sync::Arc;
use tracing::Instrument;

pub use codec::HEADER_LENGTH;

/// Renders the Prometheus exposition text (supplied by the binary).
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
pub struct HttpOptions {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request's body may take to arrive once its headers have.
    pub body_read_timeout: std::time::Duration,
    /// Serves `GET /metrics` when set.
    pub metrics: Option<MetricsRender>,
    /// Who may call what.
    pub access: Arc<Access>,
    /// Traces, request ids and access logs of inference requests.
    pub telemetry: Arc<Telemetry>,
}

#[derive(Clone)]
struct AppState {
    core: Core,
    opts: HttpOptions,
}

impl AppState {
    /// Whether the caller may use an endpoint of `scope` on `target`: checked
    /// first, before a body is read or anything queued.
    fn permit(&self, who: &Who, scope: Scope, target: Target<'_>) -> Result<(), ApiError> {
        Ok(self.opts.access.permit(&who.0, scope, target)?)
    }
}

/// An error in the protocol's form: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(KilnError);

impl From<KilnError> for ApiError {
    fn from(e: KilnError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.answer(None)
    }
}

impl ApiError {
    /// The error's answer; an inference request's also names its request id.
    fn answer(self, request_id: Option<&str>) -> Response {
        let status = status(Answer::Failed(self.0.kind));
        let body = match request_id {
            None => json!({ "error": self.0.message }),
            Some(id) => json!({ "error": self.0.message, "id": id }),
        };
        let mut resp = (status, Json(body)).into_response();
        match self.0.kind {
            ErrorKind::RateLimited { retry_after_secs } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            ErrorKind::Unauthenticated => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

/// What an answer says, as far as its status goes.
enum Answer {
    Ok,
    /// A health or readiness check that is negative.
    NotReady,
    Failed(ErrorKind),
}

/// The one place HTTP statuses are chosen (the router's own 404 for an unknown
/// route and 405 aside).
fn status(answer: Answer) -> StatusCode {
    match answer {
        Answer::Ok => StatusCode::OK,
        // Triton answers a negative health or readiness check with 400.
        Answer::NotReady => StatusCode::BAD_REQUEST,
        Answer::Failed(kind) => match kind {
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        },
    }
}

/// A health answer: 200 when `yes`, else 400, with `{key: yes}` and `extra`.
fn health(key: &str, yes: bool, extra: Option<(&str, &str)>) -> Response {
    let mut body = json!({ key: yes });
    if let Some((k, v)) = extra {
        body[k] = json!(v);
    }
    let answer = if yes { Answer::Ok } else { Answer::NotReady };
    (status(answer), Json(body)).into_response()
}

/// Builds the REST router on a core handle.
pub fn router(core: Core, opts: HttpOptions) -> Router {
    let mut r = Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config_v),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/v2/models/stats", get(stats_all))
        .route("/v2/models/{model}/stats", get(stats_model))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(stats_version),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route(
            "/v2/models/{model}/traffic",
            get(traffic_get).post(traffic_set),
        );
    if opts.metrics.is_some() {
        r = r.route("/metrics", get(metrics));
    }
    let state = AppState { core, opts };
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are read and limited by the handlers, which answer in the protocol's form.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            close_while_draining,
        ))
        .with_state(state)
}

/// While the server drains, every answer says `Connection: close`, so that
/// keep-alive clients reconnect (through the load balancer, to another replica)
/// instead of sending more requests here.
async fn close_while_draining(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut resp = next.run(req).await;
    if s.core.is_draining() {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

async fn not_found() -> Response {
    let body = json!({ "error": "no such endpoint" });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn method_not_allowed() -> Response {
    let body = json!({ "error": "method not allowed on this endpoint" });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

async fn live(State(s): State<AppState>, who: Who) -> Result<Response, ApiError> {
    s.permit(&who, Scope::Health, Target::Server)?;
    Ok(health("live", s.core.is_live(), None))
}

async fn ready(State(s): State<AppState>, who: Who) -> Result<Response, ApiError> {
    s.permit(&who, Scope::Health, Target::Server)?;
    Ok(health("ready", s.core.is_ready(), None))
}

async fn server_metadata(State(s): State<AppState>, who: Who) -> Result<Response, ApiError> {
    s.permit(&who, Scope::Infer, Target::Server)?;
    Ok(Json(views::server_metadata(&kiln_protocol::server_metadata())).into_response())
}

async fn model_metadata(
    State(s): State<AppState>,
    who: Who,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    metadata_for(&s, &who, &model, None)
}

async fn model_metadata_v(
    State(s): State<AppState>,
    who: Who,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    metadata_for(&s, &who, &model, Some(&version))
}

fn metadata_for(
    s: &AppState,
    who: &Who,
    model: &str,
    version: Option<&str>,
) -> Result<Response, ApiError> {
    s.permit(who, Scope::Infer, Target::Model(model))?;
    let mv = s.core.model(model, version)?;
    let m = kiln_protocol::views::metadata(&mv, &s.core.versions(&mv.name));
    Ok(Json(views::metadata(&m)).into_response())
}

async fn model_ready(
    State(s): State<AppState>,
    who: Who,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    ready_for(&s, &who, &model, None)
}

async fn model_ready_v(
    State(s): State<AppState>,
    who: Who,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    ready_for(&s, &who, &model, Some(&version))
}

fn ready_for(
    s: &AppState,
    who: &Who,
    model: &str,
    version: Option<&str>,
) -> Result<Response, ApiError> {
    s.permit(who, Scope::Infer, Target::Model(model))?;
    match s.core.model(model, version) {
        Ok(_) => Ok(health("ready", true, Some(("name", model)))),
        Err(e) if e.kind == ErrorKind::Unavailable => {
            Ok(health("ready", false, Some(("name", model))))
        }
        Err(e) => Err(e.into()),
    }
}

async fn model_config(
    State(s): State<AppState>,
    who: Who,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    config_for(&s, &who, &model, None)
}

async fn model_config_v(
    State(s): State<AppState>,
    who: Who,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    config_for(&s, &who, &model, Some(&version))
}

fn config_for(
    s: &AppState,
    who: &Who,
    model: &str,
    version: Option<&str>,
) -> Result<Response, ApiError> {
    s.permit(who, Scope::Infer, Target::Model(model))?;
    let mv = s.core.model(model, version)?;
    Ok(Json(views::config(&kiln_protocol::views::model_config(&mv))).into_response())
}

async fn stats_all(State(s): State<AppState>, who: Who) -> Result<Response, ApiError> {
    stats_for(&s, &who, None, None)
}

async fn stats_model(
    State(s): State<AppState>,
    who: Who,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    stats_for(&s, &who, Some(&model), None)
}

async fn stats_version(
    State(s): State<AppState>,
    who: Who,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    stats_for(&s, &who, Some(&model), Some(&version))
}

fn stats_for(
    s: &AppState,
    who: &Who,
    model: Option<&str>,
    version: Option<&str>,
) -> Result<Response, ApiError> {
    s.permit(
        who,
        Scope::Metrics,
        model.map_or(Target::AllModels, Target::Model),
    )?;
    let list = kiln_protocol::views::statistics(&s.core.stats(model, version)?);
    Ok(Json(views::stats(&list)).into_response())
}

async fn repository_index(
    State(s): State<AppState>,
    who: Who,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    s.permit(&who, Scope::Admin, Target::AllModels)?;
    // tritonclient posts an empty body; `{"ready": true}` filters to ready models.
    let v = json_body(&s, &headers, body, false).await?;
    let ready_only = v.get("ready").and_then(|r| r.as_bool()).unwrap_or(false);
    Ok(Json(views::index(&s.core.index(ready_only).await?)).into_response())
}

/// Largest body of the repository and traffic APIs: their JSON is a few
/// hundred bytes, and is parsed into a tree (about ten times its size).
const CONTROL_BODY_LIMIT: usize = 1 << 20;

/// Parses an optional JSON body (empty means `{}`); `object`: it must be an object.
async fn json_body(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    object: bool,
) -> Result<serde_json::Value, ApiError> {
    let limit = s.opts.max_body_bytes.min(CONTROL_BODY_LIMIT);
    let body = body::read(
        body,
        headers,
        limit,
        s.opts.body_read_timeout,
        s.core.budget(),
    )
    .await?
    .bytes;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| KilnError::invalid(format!("malformed JSON body: {e}")))?;
    if object && !v.is_object() {
        return Err(KilnError::invalid("the body must be a JSON object").into());
    }
    Ok(v)
}

/// Triton's load: `{"parameters": {"config": "<Kiln config as JSON or TOML>"}}`,
/// all optional. Answers once the model serves (or failed to load).
async fn repository_load(
    State(s): State<AppState>,
    who: Who,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    s.permit(&who, Scope::Admin, Target::Model(&model))?;
    let v = json_body(&s, &headers, body, true).await?;
    let params = v.get("parameters").cloned().unwrap_or(json!({}));
    let Some(params) = params.as_object() else {
        return Err(KilnError::invalid("'parameters' must be a JSON object").into());
    };
    let config = kiln_protocol::params::load_config(
        params.keys().map(String::as_str),
        params.get("config").map(codec::param),
    )?;
    let report = s.core.load(&who.0.actor(), &model, config).await?;
    Ok(Json(views::load_report(&model, &report)).into_response())
}

async fn repository_unload(
    State(s): State<AppState>,
    who: Who,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    s.permit(&who, Scope::Admin, Target::Model(&model))?;
    // `unload_dependents` and other parameters change nothing: Kiln has no ensembles.
    json_body(&s, &headers, body, true).await?;
    let report = s.core.unload(&who.0.actor(), &model).await?;
    Ok(Json(views::load_report(&model, &report)).into_response())
}

async fn traffic_get(
    State(s): State<AppState>,
    who: Who,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    s.permit(&who, Scope::Admin, Target::Model(&model))?;
    Ok(Json(views::traffic(&s.core.traffic(&model)?)).into_response())
}

async fn traffic_set(
    State(s): State<AppState>,
    who: Who,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    s.permit(&who, Scope::Admin, Target::Model(&model))?;
    let v = json_body(&s, &headers, body, true).await?;
    let update = traffic::update(&v)?;
    let view = s.core.set_traffic(&who.0.actor(), &model, &update)?;
    Ok(Json(views::traffic(&view)).into_response())
}

async fn infer(
    State(s): State<AppState>,
    who: Who,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_traced(s, who, model, None, headers, body).await
}

async fn infer_v(
    State(s): State<AppState>,
    who: Who,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_traced(s, who, model, Some(version), headers, body).await
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An inference request in its span, answered with its request id (in the
/// body's `id`, an error's body and the `x-request-id` header), its
/// telemetry finished.
async fn infer_traced(
    s: AppState,
    who: Who,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let scope = s
        .opts
        .telemetry
        .begin("http", &model, |k| header(&headers, k));
    let mut request_id = None;
    let answer = async {
        s.permit(&who, Scope::Infer, Target::Model(&model))?;
        infer_for(
            &s,
            &scope,
            model.clone(),
            version,
            &headers,
            body,
            &mut request_id,
        )
        .await
    }
    .instrument(scope.span().clone())
    .await;
    let id = request_id
        .unwrap_or_else(|| kiln_telemetry::request_id(header(&headers, REQUEST_ID_HEADER)));
    let (mut response, done) = match answer {
        Ok((r, v, b)) => (r, Ok((v, b))),
        Err(e) => {
            let message = e.0.message.clone();
            (e.answer(Some(&id)), Err(message))
        }
    };
    scope.finish(&Finished {
        request_id: &id,
        model: &model,
        version: done.as_ref().ok().map(|d| d.0),
        batch_size: done.as_ref().ok().map(|d| d.1),
        status: response.status().as_str(),
        error: done.as_ref().err().map(String::as_str),
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// Decodes a body; while both are held, the charge covers the body and its
/// tensors, then (the body dropped) the tensors alone, until the answer.
fn decode(
    model: String,
    version: Option<String>,
    read: body::Read,
    header_len: Option<usize>,
) -> Result<(codec::Decoded, Charge), KilnError> {
    let body::Read { bytes, mut charge } = read;
    let decoded = codec::decode_request(model, version, &bytes, header_len)?;
    let tensors = decoded.request.tensor_bytes();
    charge.set(bytes.len() + tensors)?;
    drop(bytes);
    charge.set(tensors)?;
    Ok((decoded, charge))
}

/// Reads, decodes, runs and encodes an inference request; `request_id` is
/// set once the body is decoded. Answers the response, and the version and
/// batch size that served it.
async fn infer_for(
    s: &AppState,
    scope: &RequestScope,
    model: String,
    version: Option<String>,
    headers: &HeaderMap,
    body: Body,
    request_id: &mut Option<String>,
) -> Result<(Response, u64, usize), ApiError> {
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    KilnError::invalid(format!("{HEADER_LENGTH} must be a non-negative integer"))
                })?,
        ),
    };
    let read = body::read(
        body,
        headers,
        s.opts.max_body_bytes,
        s.opts.body_read_timeout,
        s.core.budget(),
    )
    .await?;
    let span = scope.decode();
    let (mut decoded, _charge) = if read.bytes.len() <= kiln_protocol::INLINE_DECODE_BYTES {
        span.in_scope(|| decode(model, version, read, header_len))?
    } else {
        s.core
            .compute("request decoder", move || {
                span.in_scope(|| decode(model, version, read, header_len))
            })
            .await??
    };
    let id = kiln_telemetry::request_id(
        decoded
            .request
            .id
            .as_deref()
            .or_else(|| header(headers, REQUEST_ID_HEADER)),
    );
    // The answer's `id` is the client's own, whole; a new one when it gave none.
    if decoded.request.id.as_deref().is_none_or(str::is_empty) {
        decoded.request.id = Some(id.clone());
    }
    *request_id = Some(id);
    if scope.traced() {
        decoded.request.trace = Some(scope.span().clone());
    }
    if decoded.request.routing_key.is_none() {
        decoded.request.routing_key = headers
            .get(kiln_protocol::ROUTING_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
    }
    let resp = s.core.infer(decoded.request).await?;
    let timing = kiln_protocol::server_timing(&resp.timing);
    let (version, batch_size) = (resp.version.0, resp.batch_size);
    let encoded = scope
        .encode()
        .in_scope(|| codec::encode_response(resp, &decoded.binary))?;
    let mut response = Response::new(Body::from(encoded.body));
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&timing) {
        h.insert(kiln_protocol::SERVER_TIMING, v);
    }
    match encoded.json_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok((response, version, batch_size))
}

async fn metrics(State(s): State<AppState>, who: Who) -> Result<Response, ApiError> {
    s.permit(&who, Scope::Metrics, Target::AllModels)?;
    let text = s.opts.metrics.as_ref().map(|f| f()).unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
