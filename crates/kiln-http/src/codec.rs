//! The V2 REST inference body: JSON tensors and Triton's binary tensor extension.
//!
//! With the extension, the body is a JSON header of `Inference-Header-Content-Length`
//! bytes followed by raw tensors; each binary input says its size in the
//! `binary_data_size` parameter, in the order of `inputs`.

use kiln_core::elements::{self, ElementWriter, Value};
use kiln_core::error::quote;
use kiln_core::tensor::{dims_from_wire, element_count};
use kiln_core::{DataType, InferInput, InferRequest, InferResponse, KilnError, Tensor};
use kiln_protocol::params::{self, Param};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value as Json};

pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<Json>,
    #[serde(default)]
    parameters: Option<Map<String, Json>>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Json>>,
    #[serde(default)]
    data: Option<Json>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Json>>,
}

/// How the client wants its outputs: binary or JSON, per output name.
#[derive(Debug)]
pub struct BinaryChoice {
    default: bool,
    per_output: Vec<(String, bool)>,
}

impl BinaryChoice {
    fn binary(&self, name: &str) -> bool {
        self.per_output
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.default, |(_, b)| *b)
    }
}

#[derive(Debug)]
pub struct Decoded {
    pub request: InferRequest,
    pub binary: BinaryChoice,
}

fn bad(message: impl Into<String>) -> KilnError {
    KilnError::invalid(message)
}

/// A JSON parameter value in the protocol layer's terms.
pub(crate) fn param(v: &Json) -> Param {
    match v {
        Json::Null => Param::Null,
        Json::Bool(b) => Param::Bool(*b),
        Json::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Param::Uint(u),
            (None, Some(i)) => Param::Int(i),
            _ => Param::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Param::Str(s.clone()),
        other => Param::Other(other.to_string()),
    }
}

fn lookup<'a>(params: &'a Option<Map<String, Json>>) -> impl Fn(&str) -> Option<Param> + 'a {
    move |k| params.as_ref().and_then(|p| p.get(k)).map(param)
}

/// Decodes an inference body. `header_len` is the value of
/// `Inference-Header-Content-Length`, when sent.
pub fn decode_request(
    model: String,
    version: Option<String>,
    body: &[u8],
    header_len: Option<usize>,
) -> Result<Decoded, KilnError> {
    let (json, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(bad(format!(
                "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                body.len()
            )))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let req: RequestJson = serde_json::from_slice(json)
        .map_err(|e| bad(format!("malformed inference request JSON: {e}")))?;
    let id = match req.id {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    };
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let tensor = decode_input(&model, &input, &mut binary)?;
        inputs.push(InferInput {
            name: input.name,
            tensor,
        });
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data follow the tensors that declared binary_data_size",
            binary.len()
        )));
    }
    let request_params = lookup(&req.parameters);
    let params::InferParams {
        timeout,
        routing_key,
    } = params::infer_params(&request_params)?;
    let mut choice = BinaryChoice {
        default: params::bool_param(
            request_params("binary_data_output"),
            "binary_data_output",
            "request",
        )?
        .unwrap_or(false),
        per_output: Vec::new(),
    };
    let mut outputs = Vec::new();
    for o in req.outputs.unwrap_or_default() {
        params::check_output(&o.name, |k| {
            o.parameters.as_ref().is_some_and(|p| p.contains_key(k))
        })?;
        if let Some(b) = params::bool_param(
            lookup(&o.parameters)("binary_data"),
            "binary_data",
            &format!("output '{}'", o.name),
        )? {
            choice.per_output.push((o.name.clone(), b));
        }
        outputs.push(o.name);
    }
    Ok(Decoded {
        request: InferRequest {
            model,
            version,
            id,
            inputs,
            outputs,
            timeout,
            routing_key,
        },
        binary: choice,
    })
}

fn decode_input(model: &str, input: &InputJson, binary: &mut &[u8]) -> Result<Tensor, KilnError> {
    let err = |m: String| {
        bad(format!(
            "model '{}' input '{}': {m}",
            quote(model),
            quote(&input.name)
        ))
    };
    let dtype: DataType = input
        .datatype
        .parse()
        .map_err(|e: kiln_core::dtype::UnknownDataType| err(e.to_string()))?;
    let shape = dims_from_wire(&input.shape).map_err(|e| err(e.to_string()))?;
    let count = element_count(&shape).map_err(|e| err(e.to_string()))?;
    let size = match input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    err(format!(
                        "binary_data_size must be a non-negative integer, got {v}"
                    ))
                })?,
        ),
    };
    if let Some(size) = size {
        if input.data.is_some() {
            return Err(err("has both data and binary_data_size".into()));
        }
        if size > binary.len() {
            return Err(err(format!(
                "binary_data_size is {size} but only {} bytes of binary data remain in the body",
                binary.len()
            )));
        }
        let (mine, rest) = binary.split_at(size);
        *binary = rest;
        return Tensor::from_bytes(dtype, shape, mine.to_vec()).map_err(|e| err(e.to_string()));
    }
    let Some(data) = &input.data else {
        return Err(err(
            "has no data (give 'data', or binary data with the binary_data_size parameter)".into(),
        ));
    };
    let mut w = ElementWriter::new(dtype);
    flatten(data, &mut w, count).map_err(err)?;
    if w.count() != count {
        return Err(err(format!(
            "shape {:?} needs {count} elements but data has {}",
            input.shape,
            w.count()
        )));
    }
    w.finish(shape).map_err(|e| err(e.to_string()))
}

/// Walks flat or nested JSON arrays in row-major order; stops early once more
/// elements are seen than the shape allows.
fn flatten(v: &Json, w: &mut ElementWriter, limit: usize) -> Result<(), String> {
    match v {
        Json::Array(items) => {
            for item in items {
                flatten(item, w, limit)?;
            }
            Ok(())
        }
        _ if w.count() >= limit => Err(format!(
            "data has more than the {limit} elements the shape allows"
        )),
        Json::Bool(b) => w
            .push(Value::Bool(*b))
            .map_err(|m| format!("element {}: {m}", w.count())),
        Json::Number(n) => {
            let value = if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::Uint(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            };
            w.push(value)
                .map_err(|m| format!("element {}: {m}", w.count()))
        }
        Json::String(s) => w
            .push(Value::Bytes(s.as_bytes()))
            .map_err(|m| format!("element {}: {m}", w.count())),
        Json::Null => Err(format!("element {}: null is not a value", w.count())),
        Json::Object(_) => Err(format!("element {}: an object is not a value", w.count())),
    }
}

pub struct Encoded {
    pub body: Vec<u8>,
    /// Length of the JSON header when binary outputs follow it.
    pub json_len: Option<usize>,
}

struct OutputView<'a> {
    name: &'a str,
    tensor: &'a Tensor,
    binary: bool,
}

impl Serialize for OutputView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("name", self.name)?;
        m.serialize_entry("datatype", self.tensor.dtype().as_str())?;
        m.serialize_entry("shape", self.tensor.shape())?;
        if self.binary {
            m.serialize_entry(
                "parameters",
                &serde_json::json!({ "binary_data_size": self.tensor.data().len() }),
            )?;
        } else {
            m.serialize_entry("data", &DataView(self.tensor))?;
        }
        m.end()
    }
}

/// Serialises a tensor's elements as a flat JSON array without building values.
struct DataView<'a>(&'a Tensor);

impl Serialize for DataView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.element_count()))?;
        elements::for_each(self.0, |v| match v {
            Value::Bool(b) => seq.serialize_element(&b),
            Value::Int(i) => seq.serialize_element(&i),
            Value::Uint(u) => seq.serialize_element(&u),
            Value::Float(f) => {
                if self.0.dtype() == DataType::Fp32 {
                    // Print FP32 with its own shortest form (0.1, not 0.10000000149011612).
                    seq.serialize_element(&(f as f32))
                } else {
                    seq.serialize_element(&f)
                }
            }
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(text) => seq.serialize_element(text),
                Err(_) => Err(serde::ser::Error::custom(
                    "a BYTES element is not UTF-8; request this output as binary data",
                )),
            },
        })?;
        seq.end()
    }
}

#[derive(Serialize)]
struct ResponseView<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputView<'a>>,
}

pub fn encode_response(r: InferResponse, choice: &BinaryChoice) -> Result<Encoded, KilnError> {
    let views: Vec<OutputView<'_>> = r
        .outputs
        .iter()
        .map(|o| OutputView {
            name: &o.name,
            tensor: &o.tensor,
            binary: choice.binary(&o.name),
        })
        .collect();
    let any_binary = views.iter().any(|v| v.binary);
    let view = ResponseView {
        model_name: &r.model,
        model_version: r.version.to_string(),
        id: r.id.as_deref(),
        outputs: views,
    };
    let mut body = serde_json::to_vec(&view)
        .map_err(|e| KilnError::invalid(format!("cannot encode response: {e}")))?;
    if !any_binary {
        return Ok(Encoded {
            body,
            json_len: None,
        });
    }
    let json_len = body.len();
    for v in view.outputs.iter().filter(|v| v.binary) {
        body.extend_from_slice(v.tensor.data());
    }
    Ok(Encoded {
        body,
        json_len: Some(json_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &[u8], header: Option<usize>) -> Result<Decoded, String> {
        decode_request("m".into(), None, body, header).map_err(|e| e.message)
    }

    #[test]
    fn json_flat_and_nested() {
        let flat =
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4.5]}]}"#;
        let nested =
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}]}"#;
        for b in [&flat[..], &nested[..]] {
            let d = decode(b, None).unwrap();
            assert_eq!(
                d.request.inputs[0].tensor.to_vec::<f32>().unwrap(),
                vec![1.0, 2.0, 3.0, 4.5]
            );
        }
    }

    #[test]
    fn binary_inputs() {
        let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&7i32.to_le_bytes());
        body.extend_from_slice(&(-1i32).to_le_bytes());
        let d = decode(&body, Some(json.len())).unwrap();
        assert_eq!(
            d.request.inputs[0].tensor.to_vec::<i32>().unwrap(),
            vec![7, -1]
        );
        assert!(d.binary.binary("anything"));
        // perf_analyzer sends the header even for pure JSON bodies.
        let j = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1]}]}"#;
        assert!(decode(j, Some(j.len())).is_ok());
    }

    #[test]
    fn bad_bodies_are_clear_errors() {
        let cases: Vec<(Vec<u8>, Option<usize>, &str)> = vec![
            (b"{not json".to_vec(), None, "malformed"),
            (b"{}".to_vec(), None, "malformed"),
            (br#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#.to_vec(), None, "needs 3 elements"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]}"#.to_vec(), None, "more than the 1"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP9","data":[1]}]}"#.to_vec(), None, "unknown datatype"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[300]}]}"#.to_vec(), None, "out of range"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":["a"]}]}"#.to_vec(), None, "not a INT32"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[null]}]}"#.to_vec(), None, "null"),
            (br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"INT32","data":[1]}]}"#.to_vec(), None, "negative"),
            (br#"{"inputs":[{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"INT32","data":[1]}]}"#.to_vec(), None, "too many elements"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32"}]}"#.to_vec(), None, "has no data"),
            (br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]}"#.to_vec(), None, "only 0 bytes"),
            (b"{}".to_vec(), Some(100), "body has only 2 bytes"),
            (br#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":2}}]}"#.to_vec(), None, "classification"),
        ];
        for (body, header, want) in cases {
            let e = decode(&body, header).err().unwrap_or_default();
            assert!(e.contains(want), "{e:?} does not contain {want:?}");
        }
        // Truncated binary body: the header promises 8 bytes, 3 arrive.
        let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&[1, 2, 3]);
        assert!(decode(&body, Some(json.len()))
            .unwrap_err()
            .contains("only 3 bytes"));
        // Leftover bytes nobody claimed.
        let j = br#"{"inputs":[]}"#;
        let mut body = j.to_vec();
        body.push(0);
        assert!(decode(&body, Some(j.len()))
            .unwrap_err()
            .contains("1 bytes of binary data"));
    }

    #[test]
    fn encodes_json_and_binary_outputs() {
        let resp = || InferResponse {
            model: "m".into(),
            version: kiln_core::Version(1),
            id: Some("r1".into()),
            outputs: vec![
                kiln_core::InferOutput {
                    name: "a".into(),
                    tensor: Tensor::from_vec(vec![2], vec![0.1f32, 2.0]).unwrap(),
                },
                kiln_core::InferOutput {
                    name: "b".into(),
                    tensor: Tensor::from_vec(vec![1], vec![5i64]).unwrap(),
                },
            ],
        };
        let json_only = BinaryChoice {
            default: false,
            per_output: vec![],
        };
        let e = encode_response(resp(), &json_only).unwrap();
        assert!(e.json_len.is_none());
        let v: Json = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(v["outputs"][0]["data"], serde_json::json!([0.1, 2.0]));
        assert_eq!(v["id"], "r1");
        assert!(v["outputs"][0].get("parameters").is_none());
        let b_only = BinaryChoice {
            default: false,
            per_output: vec![("b".into(), true)],
        };
        let e = encode_response(resp(), &b_only).unwrap();
        let n = e.json_len.unwrap();
        let v: Json = serde_json::from_slice(&e.body[..n]).unwrap();
        assert_eq!(v["outputs"][1]["parameters"]["binary_data_size"], 8);
        assert_eq!(&e.body[n..], &5i64.to_le_bytes());
    }
}
