//! Drives the real binary over gRPC with the generated tonic client.

mod common;

use kiln_grpc::pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use kiln_grpc::pb::*;
use tonic::Code;

use common::grpc_client as client;

fn fp32_input(name: &str, shape: Vec<i64>) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape,
        ..Default::default()
    }
}

fn mlp_request(batch: usize) -> ModelInferRequest {
    let data: Vec<u8> = (0..batch * 16)
        .flat_map(|i| ((i % 5) as f32 * 0.3).to_le_bytes())
        .collect();
    ModelInferRequest {
        model_name: "mlp_tiny".into(),
        inputs: vec![fp32_input("INPUT0", vec![batch as i64, 16])],
        raw_input_contents: vec![data],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metadata_config_and_infer() {
    let s = common::start("tests/models", &[]);
    let mut c = client(s.grpc).await;
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        !c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready,
        "broken model: not ready"
    );
    let ready = |name: &str| ModelReadyRequest {
        name: name.into(),
        version: String::new(),
    };
    assert!(
        c.model_ready(ready("mlp_tiny"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("broken"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    // Like Triton: an unknown (or unloaded) model is simply not ready.
    assert!(
        !c.model_ready(ready("nope"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );

    let md = c
        .model_metadata(ModelMetadataRequest {
            name: "mlp_tiny".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(md.inputs[0].shape, vec![-1, 16]);
    assert_eq!(md.versions, vec!["1"]);
    let cfg = c
        .model_config(ModelConfigRequest {
            name: "mlp_tiny".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(cfg.max_batch_size, 32);
    assert_eq!(cfg.input[0].dims, vec![16]);
    assert_eq!(cfg.input[0].data_type, DataType::TypeFp32 as i32);

    let resp = c.model_infer(mlp_request(2)).await.unwrap();
    // Where its time went, in the trailing metadata.
    let timing = resp.metadata().get("server-timing").expect("server-timing");
    common::server_timing(timing.to_str().unwrap());
    let resp = resp.into_inner();
    assert_eq!(resp.model_version, "1");
    assert_eq!(resp.outputs[0].shape, vec![2, 4]);
    let probs: Vec<f32> = resp.raw_output_contents[0]
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    for row in probs.chunks(4) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    // Typed contents instead of raw bytes give the same answer.
    let mut typed = mlp_request(2);
    let values: Vec<f32> = typed.raw_input_contents[0]
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    typed.raw_input_contents.clear();
    typed.inputs[0].contents = Some(InferTensorContents {
        fp32_contents: values,
        ..Default::default()
    });
    typed.outputs = vec![InferRequestedOutputTensor {
        name: "OUTPUT0".into(),
        ..Default::default()
    }];
    let again = c.model_infer(typed).await.unwrap().into_inner();
    assert_eq!(again.raw_output_contents, resp.raw_output_contents);

    let idx = c
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    let broken = idx.models.iter().find(|m| m.name == "broken").unwrap();
    assert_eq!(broken.state, "UNAVAILABLE");
    assert!(!broken.reason.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datatype_round_trips_with_typed_and_raw_contents() {
    let s = common::start("tests/models", &[]);
    let mut c = client(s.grpc).await;
    let typed: Vec<(&str, InferTensorContents)> = vec![
        (
            "BOOL",
            InferTensorContents {
                bool_contents: vec![true, false],
                ..Default::default()
            },
        ),
        (
            "UINT8",
            InferTensorContents {
                uint_contents: vec![0, 255],
                ..Default::default()
            },
        ),
        (
            "UINT16",
            InferTensorContents {
                uint_contents: vec![1, 65535],
                ..Default::default()
            },
        ),
        (
            "UINT32",
            InferTensorContents {
                uint_contents: vec![2, u32::MAX],
                ..Default::default()
            },
        ),
        (
            "UINT64",
            InferTensorContents {
                uint64_contents: vec![3, u64::MAX],
                ..Default::default()
            },
        ),
        (
            "INT8",
            InferTensorContents {
                int_contents: vec![-128, 127],
                ..Default::default()
            },
        ),
        (
            "INT16",
            InferTensorContents {
                int_contents: vec![-32768, 32767],
                ..Default::default()
            },
        ),
        (
            "INT32",
            InferTensorContents {
                int_contents: vec![i32::MIN, i32::MAX],
                ..Default::default()
            },
        ),
        (
            "INT64",
            InferTensorContents {
                int64_contents: vec![i64::MIN, i64::MAX],
                ..Default::default()
            },
        ),
        (
            "FP32",
            InferTensorContents {
                fp32_contents: vec![0.1, -2.5],
                ..Default::default()
            },
        ),
        (
            "FP64",
            InferTensorContents {
                fp64_contents: vec![0.1, -1e300],
                ..Default::default()
            },
        ),
    ];
    let mut inputs: Vec<InferInputTensor> = typed
        .iter()
        .map(|(t, contents)| InferInputTensor {
            name: format!("IN_{t}"),
            datatype: t.to_string(),
            shape: vec![1, 2],
            contents: Some(contents.clone()),
            ..Default::default()
        })
        .collect();
    // FP16 has no typed field: the protocol says raw only, so send it in a separate raw request below.
    inputs.push(InferInputTensor {
        name: "IN_FP16".into(),
        datatype: "FP16".into(),
        shape: vec![1, 2],
        ..Default::default()
    });
    let req = ModelInferRequest {
        model_name: "identity_types".into(),
        inputs: inputs.clone(),
        ..Default::default()
    };
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("IN_FP16") && e.message().contains("no data"),
        "{}",
        e.message()
    );

    // All raw: every type's bytes come back unchanged.
    let widths = [1, 1, 2, 4, 8, 1, 2, 4, 8, 4, 8, 2];
    let raw_inputs: Vec<InferInputTensor> = inputs
        .iter()
        .map(|i| InferInputTensor {
            contents: None,
            ..i.clone()
        })
        .collect();
    let raw: Vec<Vec<u8>> = widths
        .iter()
        .enumerate()
        .map(|(k, w)| {
            (0..2 * w)
                .map(|i| {
                    if k == 0 {
                        (i % 2) as u8
                    } else {
                        (i * 29 + k) as u8
                    }
                })
                .collect()
        })
        .collect();
    let req = ModelInferRequest {
        model_name: "identity_types".into(),
        inputs: raw_inputs.clone(),
        raw_input_contents: raw.clone(),
        ..Default::default()
    };
    let resp = c.model_infer(req).await.unwrap().into_inner();
    for (o, out_raw) in resp.outputs.iter().zip(&resp.raw_output_contents) {
        let k = raw_inputs
            .iter()
            .position(|i| i.name == o.name.replace("OUT_", "IN_"))
            .unwrap();
        assert_eq!(o.datatype, raw_inputs[k].datatype);
        assert_eq!(out_raw, &raw[k], "{}", o.name);
    }
    // Leaving out an input (FP16 cannot travel typed) is reported by name.
    let req = ModelInferRequest {
        model_name: "identity_types".into(),
        inputs: inputs[..11].to_vec(),
        ..Default::default()
    };
    let e = c.model_infer(req).await.unwrap_err();
    assert!(
        e.message().contains("input 'IN_FP16' is missing"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_status_codes_and_streams_carry_errors() {
    let s = common::start("tests/models", &[]);
    let mut c = client(s.grpc).await;
    let mut cases: Vec<(ModelInferRequest, Code, &str)> = Vec::new();
    let mut r = mlp_request(1);
    r.inputs[0].datatype = "INT32".into();
    cases.push((r, Code::InvalidArgument, "datatype INT32, expected FP32"));
    let mut r = mlp_request(1);
    r.raw_input_contents[0].truncate(10);
    cases.push((r, Code::InvalidArgument, "needs 64 bytes"));
    let mut r = mlp_request(1);
    r.raw_input_contents.push(vec![1]);
    cases.push((r, Code::InvalidArgument, "raw_input_contents has 2 entries"));
    let mut r = mlp_request(1);
    r.inputs[0].shape = vec![i64::MAX, 16];
    cases.push((r, Code::InvalidArgument, "too many elements"));
    let mut r = mlp_request(1);
    r.inputs[0].shape = vec![-1, 16];
    cases.push((r, Code::InvalidArgument, "negative"));
    let mut r = mlp_request(1);
    r.inputs[0].name = "X".into();
    cases.push((r, Code::InvalidArgument, "no input 'X'"));
    let mut r = mlp_request(1);
    r.model_name = "nope".into();
    cases.push((r, Code::NotFound, "unknown model"));
    let mut r = mlp_request(1);
    r.model_version = "7".into();
    cases.push((r, Code::NotFound, "no version '7'"));
    let mut r = mlp_request(1);
    r.inputs[0].datatype = "F32".into();
    cases.push((r, Code::InvalidArgument, "unknown datatype"));
    let mut r = mlp_request(1);
    r.raw_input_contents.clear();
    r.inputs[0].contents = Some(InferTensorContents {
        fp32_contents: vec![1.0; 3],
        ..Default::default()
    });
    cases.push((r, Code::InvalidArgument, "needs 64 bytes"));
    let mut r = mlp_request(1);
    r.raw_input_contents.clear();
    r.inputs[0].contents = Some(InferTensorContents {
        int_contents: vec![1; 16],
        ..Default::default()
    });
    cases.push((r, Code::InvalidArgument, "needs 64 bytes"));
    for (req, code, want) in cases {
        let e = c.model_infer(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().contains(want),
            "{:?} does not mention {want:?}",
            e.message()
        );
        assert!(
            c.server_live(ServerLiveRequest {})
                .await
                .unwrap()
                .into_inner()
                .live
        );
    }

    // A stream answers in order; a bad request's error travels in the stream and the stream goes on.
    let mut bad = mlp_request(1);
    bad.model_name = "nope".into();
    let reqs = vec![mlp_request(1), bad, mlp_request(3)];
    let mut stream = c
        .model_stream_infer(tokio_stream_iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.error_message.is_empty());
    assert_eq!(first.infer_response.unwrap().outputs[0].shape, vec![1, 4]);
    let second = stream.message().await.unwrap().unwrap();
    assert!(
        second.error_message.contains("unknown model"),
        "{}",
        second.error_message
    );
    // The error names the request it is for.
    assert_eq!(second.infer_response.unwrap().id.len(), 32);
    let third = stream.message().await.unwrap().unwrap();
    let third = third.infer_response.unwrap();
    assert_eq!(third.outputs[0].shape, vec![3, 4]);
    // A stream has no trailers per answer: its timing is a parameter.
    let timing = match &third.parameters["server-timing"].parameter_choice {
        Some(infer_parameter::ParameterChoice::StringParam(t)) => t.clone(),
        other => panic!("{other:?}"),
    };
    common::server_timing(&timing);
    assert!(stream.message().await.unwrap().is_none());

    // A request's id: its `id`, else x-request-id metadata, else a new one;
    // echoed in the answer, its metadata, and an error's metadata.
    let with_header = |mut r: ModelInferRequest, id: &str| {
        r.id = String::new();
        let mut req = tonic::Request::new(r);
        req.metadata_mut()
            .insert("x-request-id", id.parse().unwrap());
        req
    };
    let resp = c
        .model_infer(with_header(mlp_request(1), "meta-1"))
        .await
        .unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "meta-1");
    assert_eq!(resp.into_inner().id, "meta-1");
    let mut own = mlp_request(1);
    own.id = "own-1".into();
    let resp = c.model_infer(own).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "own-1");
    assert_eq!(resp.into_inner().id, "own-1");
    let mut plain = mlp_request(1);
    plain.id = String::new();
    let id = c.model_infer(plain).await.unwrap().into_inner().id;
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let mut bad = mlp_request(1);
    bad.inputs[0].name = "X".into();
    let e = c.model_infer(with_header(bad, "meta-2")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.metadata().get("x-request-id").unwrap(), "meta-2");
}

fn tokio_stream_iter(
    reqs: Vec<ModelInferRequest>,
) -> impl futures_core_stream::Stream<Item = ModelInferRequest> {
    futures_core_stream::iter(reqs)
}

mod futures_core_stream {
    pub use tokio_stream::{iter, Stream};
}

/// The statuses tonic itself answers match the README and gRPC's guide to status
/// codes: a message over the size limit is RESOURCE_EXHAUSTED (tonic said
/// OUT_OF_RANGE), in a unary call and in a stream; a message that is not a valid
/// protobuf is INTERNAL, as every gRPC library answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_and_malformed_message_statuses() {
    let s = common::start("tests/models", &["--grpc-max-message-bytes", "4096"]);
    let mut c = client(s.grpc).await;
    let e = c.model_infer(mlp_request(100)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("too large"), "{}", e.message());
    let mut stream = c
        .model_stream_infer(tokio_stream_iter(vec![mlp_request(1), mlp_request(100)]))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.error_message.is_empty(), "{}", first.error_message);
    let e = stream.message().await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    // Not a protobuf: a field of wire type 7, which does not exist.
    let (code, message) =
        common::raw_grpc_call(s.grpc, "ModelInfer", &[0x0f, 0xff, 0xff], &[]).await;
    assert_eq!(code, Code::Internal, "{message}");
    // Within limits, the same connection's next call is answered.
    assert!(c.model_infer(mlp_request(1)).await.is_ok());
}
