//! Property tests: a tensor of every datatype, any shape and any values, sent
//! and answered over both protocols' codecs, comes back bit for bit.
//!
//! - REST JSON: a body written by a client (from the typed values, not by Kiln's
//!   encoder) decodes to the tensor; Kiln's JSON output, read back as a
//!   request, is the tensor again. JSON numbers are finite and JSON strings
//!   UTF-8, so those tensors keep to that; the binary extension carries any bits.
//! - gRPC: typed contents (as Triton's clients send them, FP16/BF16 aside) and
//!   raw_input_contents, through protobuf's wire form and Kiln's decoder;
//!   the response's raw output contents.

use kiln_core::elements::{for_each, Value};
use kiln_core::{DataType, InferOutput, InferResponse, Tensor, Version};
use kiln_grpc::pb::model_infer_request::InferInputTensor;
use kiln_grpc::pb::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use kiln_http::codec::{decode_request, encode_response};
use proptest::prelude::*;
use prost::Message;
use serde_json::{json, Value as Json};

/// A tensor of `dtype`; `json_safe` keeps floats finite and strings UTF-8.
fn tensor(dtype: DataType, json_safe: bool) -> impl Strategy<Value = Tensor> {
    let shape = prop::collection::vec(0usize..4, 1..4);
    shape.prop_flat_map(move |shape| {
        let count: usize = shape.iter().product();
        let shape2 = shape.clone();
        match dtype.size() {
            Some(size) => prop::collection::vec(any::<u8>(), count * size)
                .prop_map(move |mut raw| {
                    if json_safe {
                        finite(dtype, &mut raw);
                    }
                    Tensor::from_bytes(dtype, shape.clone(), raw).expect("sized to the shape")
                })
                .boxed(),
            None => {
                let element = if json_safe {
                    prop::collection::vec(any::<char>(), 0..6)
                        .prop_map(|c| c.into_iter().collect::<String>().into_bytes())
                        .boxed()
                } else {
                    prop::collection::vec(any::<u8>(), 0..6).boxed()
                };
                prop::collection::vec(element, count)
                    .prop_map(move |els| {
                        Tensor::from_byte_elements(shape2.clone(), &els).expect("one per element")
                    })
                    .boxed()
            }
        }
    })
}

/// Replaces NaN and infinities (which JSON cannot write) by zero, in place.
fn finite(dtype: DataType, raw: &mut [u8]) {
    match dtype {
        DataType::Fp16 | DataType::Bf16 => {
            for c in raw.chunks_exact_mut(2) {
                let bits = u16::from_le_bytes([c[0], c[1]]);
                let x = if dtype == DataType::Fp16 {
                    half::f16::from_bits(bits).to_f64()
                } else {
                    half::bf16::from_bits(bits).to_f64()
                };
                if !x.is_finite() {
                    c.fill(0);
                }
            }
        }
        DataType::Fp32 => {
            for c in raw.chunks_exact_mut(4) {
                if !f32::from_le_bytes(c.try_into().unwrap()).is_finite() {
                    c.fill(0);
                }
            }
        }
        DataType::Fp64 => {
            for c in raw.chunks_exact_mut(8) {
                if !f64::from_le_bytes(c.try_into().unwrap()).is_finite() {
                    c.fill(0);
                }
            }
        }
        _ => {}
    }
}

fn any_tensor(json_safe: bool) -> impl Strategy<Value = Tensor> {
    prop::sample::select(DataType::ALL.to_vec()).prop_flat_map(move |d| tensor(d, json_safe))
}

/// The tensor's elements as a client writes them in JSON.
fn client_json(t: &Tensor) -> Vec<Json> {
    let mut out = Vec::new();
    for_each(t, |v| {
        out.push(match v {
            Value::Bool(b) => json!(b),
            Value::Int(i) => json!(i),
            Value::Uint(u) => json!(u),
            Value::Float(f) => json!(f),
            Value::Bytes(b) => json!(std::str::from_utf8(b).expect("UTF-8 for JSON")),
        });
        Ok::<_, ()>(())
    })
    .unwrap();
    out
}

fn rest_decode(body: &[u8], header_len: Option<usize>) -> Tensor {
    let mut d = decode_request("m".into(), None, body, header_len).expect("decodes");
    d.request.inputs.remove(0).tensor
}

fn response(t: &Tensor) -> InferResponse {
    InferResponse {
        model: "m".into(),
        version: Version(1),
        id: None,
        outputs: vec![InferOutput {
            name: "y".into(),
            tensor: t.clone(),
        }],
        timing: Default::default(),
        batch_size: 1,
    }
}

/// The typed contents a Triton client sends for the tensor; `None` for FP16
/// and BF16, which travel only as raw contents.
fn typed_contents(t: &Tensor) -> Option<InferTensorContents> {
    if matches!(t.dtype(), DataType::Fp16 | DataType::Bf16) {
        return None;
    }
    let mut c = InferTensorContents::default();
    if t.dtype() == DataType::Fp32 {
        // As bits: widening to f64 and back would quiet a signalling NaN.
        c.fp32_contents = t.to_vec::<f32>().unwrap();
        return Some(c);
    }
    let mut ok = true;
    for_each(t, |v| {
        match (t.dtype(), v) {
            (DataType::Bool, Value::Bool(b)) => c.bool_contents.push(b),
            (DataType::Int64, Value::Int(i)) => c.int64_contents.push(i),
            (_, Value::Int(i)) => c.int_contents.push(i as i32),
            (DataType::Uint64, Value::Uint(u)) => c.uint64_contents.push(u),
            (_, Value::Uint(u)) => c.uint_contents.push(u as u32),
            (DataType::Fp64, Value::Float(f)) => c.fp64_contents.push(f),
            (_, Value::Bytes(b)) => c.bytes_contents.push(b),
            _ => ok = false,
        }
        Ok::<_, ()>(())
    })
    .unwrap();
    ok.then_some(c)
}

fn grpc_decode(contents: Option<InferTensorContents>, raw: Vec<Vec<u8>>, t: &Tensor) -> Tensor {
    let wire = ModelInferRequest {
        model_name: "m".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: t.dtype().as_str().into(),
            shape: t.wire_shape(),
            contents,
            ..Default::default()
        }],
        raw_input_contents: raw,
        ..Default::default()
    }
    .encode_to_vec();
    let decoded = ModelInferRequest::decode(&wire[..]).expect("protobuf");
    let mut r = kiln_grpc::convert::request(decoded, None).expect("converts");
    r.inputs.remove(0).tensor
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rest_json_round_trips(t in any_tensor(true)) {
        let body = json!({"inputs": [{
            "name": "x", "datatype": t.dtype().as_str(), "shape": t.shape(),
            "data": client_json(&t),
        }]});
        prop_assert_eq!(&rest_decode(body.to_string().as_bytes(), None), &t);

        // Kiln's JSON output, read back as an input.
        let choice = decode_request("m".into(), None, body.to_string().as_bytes(), None)
            .unwrap()
            .binary;
        let out = encode_response(response(&t), &choice).expect("encodes");
        prop_assert!(out.json_len.is_none());
        let mut v: Json = serde_json::from_slice(&out.body).unwrap();
        let output = v["outputs"][0].take();
        let back = json!({"inputs": [output]});
        prop_assert_eq!(&rest_decode(back.to_string().as_bytes(), None), &t);
    }

    #[test]
    fn rest_binary_round_trips(t in any_tensor(false)) {
        let header = json!({
            "inputs": [{
                "name": "x", "datatype": t.dtype().as_str(), "shape": t.shape(),
                "parameters": {"binary_data_size": t.data().len()},
            }],
            "parameters": {"binary_data_output": true},
        })
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(t.data());
        prop_assert_eq!(&rest_decode(&body, Some(header.len())), &t);

        let choice = decode_request("m".into(), None, &body, Some(header.len()))
            .unwrap()
            .binary;
        let out = encode_response(response(&t), &choice).expect("encodes");
        let json_len = out.json_len.expect("binary output");
        let v: Json = serde_json::from_slice(&out.body[..json_len]).unwrap();
        prop_assert_eq!(
            v["outputs"][0]["parameters"]["binary_data_size"].as_u64(),
            Some(t.data().len() as u64)
        );
        prop_assert_eq!(&out.body[json_len..], t.data());
    }

    #[test]
    fn grpc_round_trips(t in any_tensor(false)) {
        if let Some(c) = typed_contents(&t) {
            prop_assert_eq!(&grpc_decode(Some(c), vec![], &t), &t);
        }
        prop_assert_eq!(&grpc_decode(None, vec![t.data().to_vec()], &t), &t);

        let wire = kiln_grpc::convert::response(response(&t)).encode_to_vec();
        let r = ModelInferResponse::decode(&wire[..]).unwrap();
        prop_assert_eq!(&r.outputs[0].datatype, t.dtype().as_str());
        prop_assert_eq!(&r.outputs[0].shape, &t.wire_shape());
        prop_assert_eq!(&r.raw_output_contents[0], t.data());
    }
}
