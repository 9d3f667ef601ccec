//! The inference response body: JSON outputs, or Triton's binary tensor
//! extension (a JSON header followed by the raw outputs the client asked for
//! as binary).

use super::request::BinaryChoice;
use kiln_core::elements::{self, Value};
use kiln_core::{DataType, InferResponse, KilnError, Tensor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

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
    use serde_json::Value as Json;

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
            timing: Default::default(),
            batch_size: 1,
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
