//! The server under load: one inference request over gRPC or REST, its failure
//! named by status, and the model's inputs from its metadata.

use crate::payload::{self, Input, InputSpec};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use kiln_grpc::pb::{ModelInferRequest, ModelMetadataRequest};
use kiln_grpc::GrpcInferenceServiceClient;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Grpc,
    Http,
}

/// One prepared request and the connections to send it on.
#[derive(Clone)]
pub enum Target {
    Grpc {
        /// Calls go round the channels (each one HTTP/2 connection).
        channels: Vec<GrpcInferenceServiceClient<Channel>>,
        request: Box<ModelInferRequest>,
    },
    Http(Box<HttpTarget>),
}

#[derive(Clone)]
pub struct HttpTarget {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: http::Uri,
    body: Bytes,
    header_length: Option<usize>,
}

pub async fn grpc_channels(
    url: &str,
    connections: usize,
) -> anyhow::Result<Vec<GrpcInferenceServiceClient<Channel>>> {
    let mut out = Vec::new();
    for _ in 0..connections.max(1) {
        let channel = Channel::from_shared(format!("http://{url}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        out.push(
            GrpcInferenceServiceClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        );
    }
    Ok(out)
}

pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

/// The model's inputs, from its V2 metadata.
pub async fn input_specs(
    protocol: Protocol,
    url: &str,
    model: &str,
    version: &str,
) -> anyhow::Result<Vec<InputSpec>> {
    match protocol {
        Protocol::Grpc => {
            let mut c = grpc_channels(url, 1).await?.remove(0);
            let m = c
                .model_metadata(ModelMetadataRequest {
                    name: model.into(),
                    version: version.into(),
                })
                .await?
                .into_inner();
            Ok(m.inputs
                .into_iter()
                .map(|t| InputSpec {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                })
                .collect())
        }
        Protocol::Http => {
            let path = if version.is_empty() {
                format!("/v2/models/{model}")
            } else {
                format!("/v2/models/{model}/versions/{version}")
            };
            let uri: http::Uri = format!("http://{url}{path}").parse()?;
            let answer = http_client().get(uri).await?;
            let status = answer.status();
            let body = answer.into_body().collect().await?.to_bytes();
            anyhow::ensure!(
                status.is_success(),
                "model metadata: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            let inputs = v["inputs"].as_array().cloned().unwrap_or_default();
            Ok(inputs
                .iter()
                .map(|t| InputSpec {
                    name: t["name"].as_str().unwrap_or_default().into(),
                    datatype: t["datatype"].as_str().unwrap_or_default().into(),
                    shape: t["shape"]
                        .as_array()
                        .map(|s| s.iter().filter_map(|d| d.as_i64()).collect())
                        .unwrap_or_default(),
                })
                .collect())
        }
    }
}

impl Target {
    pub async fn new(
        protocol: Protocol,
        url: &str,
        model: &str,
        version: &str,
        inputs: &[Input],
        binary: bool,
        connections: usize,
    ) -> anyhow::Result<Target> {
        Ok(match protocol {
            Protocol::Grpc => Target::Grpc {
                channels: grpc_channels(url, connections).await?,
                request: Box::new(payload::grpc_request(model, version, inputs)),
            },
            Protocol::Http => {
                let path = if version.is_empty() {
                    format!("/v2/models/{model}/infer")
                } else {
                    format!("/v2/models/{model}/versions/{version}/infer")
                };
                let (body, header_length) = payload::http_body(inputs, binary);
                Target::Http(Box::new(HttpTarget {
                    client: http_client(),
                    uri: format!("http://{url}{path}").parse()?,
                    body,
                    header_length,
                }))
            }
        })
    }

    /// Sends the request (`n`: which one, to pick a connection); `Err` names
    /// how it failed.
    pub async fn call(&self, n: u64) -> Result<(), String> {
        match self {
            Target::Grpc { channels, request } => {
                let mut c = channels[(n % channels.len() as u64) as usize].clone();
                c.model_infer(request.as_ref().clone())
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("grpc {:?}", s.code()))
            }
            Target::Http(h) => {
                let HttpTarget {
                    client,
                    uri,
                    body,
                    header_length,
                } = h.as_ref();
                let mut req = http::Request::post(uri.clone());
                req = match header_length {
                    Some(n) => req
                        .header("content-type", "application/octet-stream")
                        .header("inference-header-content-length", *n),
                    None => req.header("content-type", "application/json"),
                };
                let req = req
                    .body(Full::new(body.clone()))
                    .map_err(|e| format!("request: {e}"))?;
                let answer = client
                    .request(req)
                    .await
                    .map_err(|e| format!("transport: {}", short(&e.to_string())))?;
                let status = answer.status();
                // Read the whole answer, as a client would.
                answer
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("transport: {}", short(&e.to_string())))?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("http {}", status.as_u16()))
                }
            }
        }
    }
}

/// Errors are counted by message: keep the part that names the kind.
fn short(m: &str) -> String {
    m.chars().take(60).collect()
}
