//! What each request carries, prepared once: the inputs (from a V2 JSON request
//! file, or generated from the model's metadata), and their encodings for gRPC
//! (raw contents), REST JSON and REST binary tensors.

use bytes::Bytes;
use kiln_grpc::pb::model_infer_request::InferInputTensor;
use kiln_grpc::pb::ModelInferRequest;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// One input tensor: its raw little-endian bytes (BYTES: 4-byte length prefix
/// per element) and the same values as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub raw: Vec<u8>,
    pub json: Vec<Value>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PayloadError {
    #[error("input '{0}' has a variable dimension: give its shape with --shape {0}:d1,d2,...")]
    Variable(String),
    #[error("datatype {1} of input '{0}' cannot be generated (give --input-data)")]
    Datatype(String, String),
    #[error("the input data file is not a V2 request: {0}")]
    File(String),
}

/// What the model's metadata says of an input: shape with -1 for variable dims.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// Random inputs for `specs`: `batch` for a leading -1, `shapes` for the rest.
pub fn generate(
    specs: &[InputSpec],
    batch: i64,
    shapes: &[(String, Vec<i64>)],
    seed: u64,
) -> Result<Vec<Input>, PayloadError> {
    let mut rng = SmallRng::seed_from_u64(seed);
    specs
        .iter()
        .map(|s| {
            let shape = match shapes.iter().find(|(n, _)| *n == s.name) {
                Some((_, given)) => given.clone(),
                None => s
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| match (i, d) {
                        (0, -1) => Ok(batch),
                        (_, -1) => Err(PayloadError::Variable(s.name.clone())),
                        (_, d) => Ok(d),
                    })
                    .collect::<Result<Vec<i64>, _>>()?,
            };
            let n: usize = shape.iter().map(|&d| d.max(0) as usize).product();
            let (raw, json) = values(&s.name, &s.datatype, n, &mut rng)?;
            Ok(Input {
                name: s.name.clone(),
                datatype: s.datatype.clone(),
                shape,
                raw,
                json,
            })
        })
        .collect()
}

fn values(
    name: &str,
    datatype: &str,
    n: usize,
    rng: &mut SmallRng,
) -> Result<(Vec<u8>, Vec<Value>), PayloadError> {
    let mut raw = Vec::new();
    let mut json = Vec::with_capacity(n);
    for _ in 0..n {
        match datatype {
            "FP32" => {
                let v: f32 = rng.random_range(-1.0..1.0);
                raw.extend(v.to_le_bytes());
                json.push(json!(v));
            }
            "FP64" => {
                let v: f64 = rng.random_range(-1.0..1.0);
                raw.extend(v.to_le_bytes());
                json.push(json!(v));
            }
            "INT64" => {
                let v: i64 = rng.random_range(0..100);
                raw.extend(v.to_le_bytes());
                json.push(json!(v));
            }
            "INT32" => {
                let v: i32 = rng.random_range(0..100);
                raw.extend(v.to_le_bytes());
                json.push(json!(v));
            }
            "UINT8" | "INT8" => {
                let v: u8 = rng.random_range(0..100);
                raw.push(v);
                json.push(json!(v));
            }
            "BOOL" => {
                let v: bool = rng.random();
                raw.push(v as u8);
                json.push(json!(v));
            }
            "BYTES" => {
                let text = format!("text {}", rng.random_range(0..1_000_000u32));
                raw.extend((text.len() as u32).to_le_bytes());
                raw.extend(text.as_bytes());
                json.push(json!(text));
            }
            other => return Err(PayloadError::Datatype(name.into(), other.into())),
        }
    }
    Ok((raw, json))
}

/// Inputs from a V2 JSON request (`{"inputs": [{"name", "datatype", "shape",
/// "data"}]}`), data flat or nested.
pub fn from_request(text: &str) -> Result<Vec<Input>, PayloadError> {
    let bad = |m: &str| PayloadError::File(m.to_string());
    let v: Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    let inputs = v["inputs"]
        .as_array()
        .ok_or_else(|| bad("no \"inputs\" array"))?;
    inputs
        .iter()
        .map(|i| {
            let name = i["name"]
                .as_str()
                .ok_or_else(|| bad("an input without a name"))?;
            let datatype = i["datatype"]
                .as_str()
                .ok_or_else(|| bad("an input without a datatype"))?;
            let shape: Vec<i64> = i["shape"]
                .as_array()
                .ok_or_else(|| bad("an input without a shape"))?
                .iter()
                .map(|d| {
                    d.as_i64()
                        .ok_or_else(|| bad("a shape that is not integers"))
                })
                .collect::<Result<_, _>>()?;
            let mut flat = Vec::new();
            flatten(&i["data"], &mut flat);
            let mut raw = Vec::new();
            for d in &flat {
                encode(datatype, d, &mut raw).ok_or_else(|| {
                    bad(&format!("input '{name}': {d} is not a {datatype} value"))
                })?;
            }
            Ok(Input {
                name: name.into(),
                datatype: datatype.into(),
                shape,
                raw,
                json: flat,
            })
        })
        .collect()
}

fn flatten(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other.clone()),
    }
}

fn encode(datatype: &str, v: &Value, raw: &mut Vec<u8>) -> Option<()> {
    match datatype {
        "FP32" => raw.extend((v.as_f64()? as f32).to_le_bytes()),
        "FP64" => raw.extend(v.as_f64()?.to_le_bytes()),
        "INT64" => raw.extend(v.as_i64()?.to_le_bytes()),
        "INT32" => raw.extend(i32::try_from(v.as_i64()?).ok()?.to_le_bytes()),
        "INT16" => raw.extend(i16::try_from(v.as_i64()?).ok()?.to_le_bytes()),
        "INT8" => raw.push(i8::try_from(v.as_i64()?).ok()? as u8),
        "UINT8" => raw.push(u8::try_from(v.as_u64()?).ok()?),
        "UINT32" => raw.extend(u32::try_from(v.as_u64()?).ok()?.to_le_bytes()),
        "UINT64" => raw.extend(v.as_u64()?.to_le_bytes()),
        "BOOL" => raw.push(v.as_bool()? as u8),
        "BYTES" => {
            let s = v.as_str()?;
            raw.extend((s.len() as u32).to_le_bytes());
            raw.extend(s.as_bytes());
        }
        _ => return None,
    }
    Some(())
}

/// The gRPC request (raw input contents, as perf_analyzer sends them).
pub fn grpc_request(model: &str, version: &str, inputs: &[Input]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        inputs: inputs
            .iter()
            .map(|i| InferInputTensor {
                name: i.name.clone(),
                datatype: i.datatype.clone(),
                shape: i.shape.clone(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: inputs.iter().map(|i| i.raw.clone()).collect(),
        ..Default::default()
    }
}

/// A REST body: JSON tensors, or (`binary`) Triton's binary tensor extension,
/// with the JSON header's length for `Inference-Header-Content-Length`.
pub fn http_body(inputs: &[Input], binary: bool) -> (Bytes, Option<usize>) {
    let tensors: Vec<Value> = inputs
        .iter()
        .map(|i| {
            let mut t = json!({"name": i.name, "datatype": i.datatype, "shape": i.shape});
            if binary {
                t["parameters"] = json!({"binary_data_size": i.raw.len()});
            } else {
                t["data"] = Value::Array(i.json.clone());
            }
            t
        })
        .collect();
    let mut header = json!({ "inputs": tensors });
    if binary {
        header["parameters"] = json!({"binary_data_output": true});
    }
    let mut body = serde_json::to_vec(&header).unwrap_or_default();
    if !binary {
        return (Bytes::from(body), None);
    }
    let header_len = body.len();
    for i in inputs {
        body.extend(&i.raw);
    }
    (Bytes::from(body), Some(header_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: &str, shape: &[i64]) -> InputSpec {
        InputSpec {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn generated_inputs_fill_the_batch_and_the_given_shapes() {
        let specs = [spec("x", "FP32", &[-1, 4]), spec("t", "BYTES", &[-1, -1])];
        let err = generate(&specs, 2, &[], 1).unwrap_err();
        assert_eq!(err, PayloadError::Variable("t".into()));
        let got = generate(&specs, 2, &[("t".into(), vec![2, 3])], 1).unwrap();
        assert_eq!(got[0].shape, [2, 4]);
        assert_eq!(got[0].raw.len(), 8 * 4);
        assert_eq!(got[0].json.len(), 8);
        assert_eq!(got[1].json.len(), 6);
        // Each BYTES element: its length, then its bytes.
        let first = got[1].json[0].as_str().unwrap();
        assert_eq!(got[1].raw[..4], (first.len() as u32).to_le_bytes());
        assert!(generate(&[spec("h", "FP16", &[1])], 1, &[], 1).is_err());
    }

    #[test]
    fn a_request_file_reads_nested_data_and_encodes_both_ways() {
        let text = r#"{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 2], "data": [[0.5, 2]]}]}"#;
        let inputs = from_request(text).unwrap();
        assert_eq!(
            inputs[0].raw,
            [0.5f32.to_le_bytes(), 2f32.to_le_bytes()].concat()
        );
        let g = grpc_request("m", "", &inputs);
        assert_eq!(g.inputs[0].shape, [1, 2]);
        assert_eq!(g.raw_input_contents[0].len(), 8);
        let (json_body, none) = http_body(&inputs, false);
        assert!(none.is_none());
        let v: Value = serde_json::from_slice(&json_body).unwrap();
        // The file's values as written.
        assert_eq!(v["inputs"][0]["data"], json!([0.5, 2]));
        let (bin, header) = http_body(&inputs, true);
        let header = header.unwrap();
        let h: Value = serde_json::from_slice(&bin[..header]).unwrap();
        assert_eq!(h["inputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(&bin[header..], &inputs[0].raw[..]);
        assert!(from_request(
            r#"{"inputs": [{"name": "X", "datatype": "INT8", "shape": [1], "data": [300]}]}"#
        )
        .is_err());
        assert!(from_request("{}").is_err());
    }
}
