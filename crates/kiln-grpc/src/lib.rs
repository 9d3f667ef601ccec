//! Kiln's gRPC front end: `inference.GRPCInferenceService`, wire-compatible with
//! Triton's `grpc_service.proto`. It only decodes, validates and encodes; the core
//! does the work.

pub mod convert;

/// Generated protocol types (package `inference`).
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("inference");
}

use futures_util::{Stream, StreamExt};
use kiln_core::config::{config_dims, input_config_dims, scalar_per_row, Device, VersionPolicy};
use kiln_core::{Core, ErrorKind, KilnError, ModelVersion};
use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::*;
use std::pin::Pin;
use tonic::{Request, Response, Status};

pub use pb::grpc_inference_service_client::GrpcInferenceServiceClient;

/// Maps the core's error to a gRPC status: the one place this mapping lives.
pub fn status(e: KilnError) -> Status {
    match e.kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(e.message),
        ErrorKind::NotFound => Status::not_found(e.message),
        ErrorKind::Unavailable => Status::unavailable(e.message),
        ErrorKind::DeadlineExceeded => Status::deadline_exceeded(e.message),
        ErrorKind::Internal => Status::internal(e.message),
    }
}

/// The service implementation, holding a clone of the core handle.
#[derive(Clone)]
pub struct InferenceService {
    core: Core,
}

impl InferenceService {
    pub fn new(core: Core) -> Self {
        InferenceService { core }
    }

    /// A tonic service with message size limits applied.
    pub fn into_server(self, max_message_bytes: usize) -> GrpcInferenceServiceServer<Self> {
        GrpcInferenceServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    async fn infer(
        core: &Core,
        req: ModelInferRequest,
        deadline: Option<std::time::Duration>,
        routing_key: Option<&str>,
    ) -> Result<ModelInferResponse, Status> {
        let mut req = convert::request(req, deadline).map_err(status)?;
        if req.routing_key.is_none() {
            req.routing_key = routing_key.map(str::to_string);
        }
        let resp = core.infer(req).await.map_err(status)?;
        Ok(convert::response(resp))
    }
}

/// The routing key sent as call metadata (a request parameter takes precedence).
fn routing_key(md: &tonic::metadata::MetadataMap) -> Option<String> {
    md.get(kiln_core::traffic::ROUTING_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// A repository load's `config` parameter (Kiln's config keys, JSON or TOML).
fn load_config(
    params: &std::collections::HashMap<String, ModelRepositoryParameter>,
) -> Result<Option<kiln_core::config::ModelConfigFile>, Status> {
    use model_repository_parameter::ParameterChoice as P;
    if let Some(k) = params.keys().find(|k| k.starts_with("file:")) {
        return Err(Status::invalid_argument(format!(
            "parameter '{k}': loading model files through the API is not supported; place them in the repository"
        )));
    }
    let text = match params
        .get("config")
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => return Ok(None),
        Some(P::StringParam(text)) => text.as_str(),
        Some(P::BytesParam(b)) => std::str::from_utf8(b)
            .map_err(|_| Status::invalid_argument("parameter 'config' is not UTF-8"))?,
        Some(_) => {
            return Err(Status::invalid_argument(
                "parameter 'config' must be a string",
            ))
        }
    };
    kiln_core::config::ModelConfigFile::parse_override(text)
        .map(Some)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn version_arg(v: &str) -> Option<&str> {
    Some(v).filter(|v| !v.is_empty())
}

fn model_config(mv: &ModelVersion) -> ModelConfig {
    let mb = mv.max_batch_size;
    ModelConfig {
        name: mv.name.clone(),
        platform: mv.platform.to_string(),
        backend: mv.backend.to_string(),
        max_batch_size: i32::try_from(mb).unwrap_or(i32::MAX),
        input: mv
            .signature
            .inputs
            .iter()
            .map(|s| ModelInput {
                name: s.name.clone(),
                data_type: convert::config_type(s.dtype) as i32,
                dims: input_config_dims(s, mb),
                reshape: scalar_per_row(s, mb).then(|| ModelTensorReshape { shape: vec![] }),
                ..Default::default()
            })
            .collect(),
        output: mv
            .signature
            .outputs
            .iter()
            .map(|s| ModelOutput {
                name: s.name.clone(),
                data_type: convert::config_type(s.dtype) as i32,
                dims: config_dims(s, mb),
            })
            .collect(),
        instance_group: mv
            .instance_groups()
            .iter()
            .enumerate()
            .map(|(i, (device, count))| ModelInstanceGroup {
                name: format!("{}_{i}", mv.name),
                count: i32::try_from(*count).unwrap_or(i32::MAX),
                gpus: match device {
                    Device::Cpu => vec![],
                    Device::Cuda(n) => vec![i32::try_from(*n).unwrap_or(i32::MAX)],
                },
                kind: match device {
                    Device::Cpu => model_instance_group::Kind::Cpu,
                    Device::Cuda(_) => model_instance_group::Kind::Gpu,
                } as i32,
            })
            .collect(),
        default_model_filename: mv.config.model_filename().to_string(),
        scheduling_choice: {
            let s = mv.scheduling();
            s.batches().then(|| {
                model_config::SchedulingChoice::DynamicBatching(ModelDynamicBatching {
                    preferred_batch_size: s
                        .preferred_batch_sizes
                        .iter()
                        .map(|&n| i32::try_from(n).unwrap_or(i32::MAX))
                        .collect(),
                    max_queue_delay_microseconds: s.max_queue_delay.as_micros() as u64,
                    preserve_ordering: false,
                })
            })
        },
        version_policy: Some(ModelVersionPolicy {
            policy_choice: Some(match mv.config.version_policy() {
                VersionPolicy::Latest(n) => {
                    model_version_policy::PolicyChoice::Latest(model_version_policy::Latest {
                        num_versions: u32::try_from(n).unwrap_or(u32::MAX),
                    })
                }
                VersionPolicy::All => {
                    model_version_policy::PolicyChoice::All(model_version_policy::All {})
                }
                VersionPolicy::Specific(list) => {
                    model_version_policy::PolicyChoice::Specific(model_version_policy::Specific {
                        versions: list.iter().map(|v| v.0 as i64).collect(),
                    })
                }
            }),
        }),
        ..Default::default()
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

fn duration(d: &kiln_core::stats::StatDuration) -> Option<StatisticDuration> {
    Some(StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

fn model_stats(mv: &ModelVersion, s: &kiln_core::stats::StatsSnapshot) -> ModelStatistics {
    ModelStatistics {
        name: mv.name.clone(),
        version: mv.version.to_string(),
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(InferStatistics {
            success: duration(&s.success),
            fail: duration(&s.fail),
            queue: duration(&s.queue),
            compute_input: duration(&s.compute_input),
            compute_infer: duration(&s.compute_infer),
            compute_output: duration(&s.compute_output),
            cache_hit: duration(&s.cache_hit),
            cache_miss: duration(&s.cache_miss),
        }),
        batch_stats: s
            .batch_stats
            .iter()
            .map(|b| InferBatchStatistics {
                batch_size: b.batch_size,
                compute_input: duration(&b.compute_input),
                compute_infer: duration(&b.compute_infer),
                compute_output: duration(&b.compute_output),
            })
            .collect(),
        memory_usage: vec![],
        response_stats: Default::default(),
    }
}

type StreamResult =
    Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send + 'static>>;

/// Requests of one stream computed at once; answers keep the order of requests.
const STREAM_CONCURRENCY: usize = 64;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse {
            live: self.core.is_live(),
        }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.core.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        r: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = r.into_inner();
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
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        let m = self.core.server_metadata();
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
        let r = r.into_inner();
        let mv = self
            .core
            .model(&r.name, version_arg(&r.version))
            .map_err(status)?;
        let meta = |s: &kiln_core::TensorSpec| model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.dtype.as_str().to_string(),
            shape: s.shape.clone(),
        };
        let mb = mv.max_batch_size;
        Ok(Response::new(ModelMetadataResponse {
            name: mv.name.clone(),
            versions: self
                .core
                .versions(&mv.name)
                .iter()
                .map(|v| v.to_string())
                .collect(),
            platform: mv.platform.to_string(),
            inputs: mv
                .signature
                .inputs
                .iter()
                .map(|s| model_metadata_response::TensorMetadata {
                    shape: kiln_core::config::input_metadata_shape(s, mb),
                    ..meta(s)
                })
                .collect(),
            outputs: mv.signature.outputs.iter().map(meta).collect(),
        }))
    }

    async fn model_infer(
        &self,
        r: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = deadline(r.metadata());
        let key = routing_key(r.metadata());
        Self::infer(&self.core, r.into_inner(), deadline, key.as_deref())
            .await
            .map(Response::new)
    }

    type ModelStreamInferStream = StreamResult;

    async fn model_stream_infer(
        &self,
        r: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let core = self.core.clone();
        // A stream's deadline bounds every request in it.
        let ends = deadline(r.metadata()).map(|d| std::time::Instant::now() + d);
        let key = routing_key(r.metadata());
        let out = r
            .into_inner()
            .map(move |item| {
                let core = core.clone();
                let key = key.clone();
                async move {
                    let req = match item {
                        Ok(req) => req,
                        // The stream itself broke (e.g. a message over the size limit): end it with that status.
                        Err(s) => return Err(s),
                    };
                    // Errors of one request travel in the stream; the stream goes on.
                    let left = ends.map(|e| e.saturating_duration_since(std::time::Instant::now()));
                    Ok(match Self::infer(&core, req, left, key.as_deref()).await {
                        Ok(resp) => ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(resp),
                        },
                        Err(s) => ModelStreamInferResponse {
                            error_message: s.message().to_string(),
                            infer_response: None,
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
        let r = r.into_inner();
        let mv = self
            .core
            .model(&r.name, version_arg(&r.version))
            .map_err(status)?;
        Ok(Response::new(ModelConfigResponse {
            config: Some(model_config(&mv)),
        }))
    }

    async fn model_statistics(
        &self,
        r: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = r.into_inner();
        let name = Some(r.name.as_str()).filter(|n| !n.is_empty());
        let list = self
            .core
            .stats(name, version_arg(&r.version))
            .map_err(status)?;
        Ok(Response::new(ModelStatisticsResponse {
            model_stats: list.iter().map(|(mv, s)| model_stats(mv, s)).collect(),
        }))
    }

    async fn repository_index(
        &self,
        r: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let r = r.into_inner();
        // The index lists the repository's folders too: file-system work, off the runtime.
        let core = self.core.clone();
        let models = tokio::task::spawn_blocking(move || core.index(r.ready))
            .await
            .map_err(|_| Status::internal("the index panicked"))?
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
        let r = r.into_inner();
        let config = load_config(&r.parameters)?;
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || core.load(&r.model_name, config))
            .await
            .map_err(|_| Status::internal("the model load panicked"))?
            .map_err(status)?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let r = r.into_inner();
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || core.unload(&r.model_name))
            .await
            .map_err(|_| Status::internal("the model unload panicked"))?
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
