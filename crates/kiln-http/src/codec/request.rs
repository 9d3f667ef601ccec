//! The inference request body. With Triton's binary extension, the body is a
//! JSON header of `Inference-Header-Content-Length` bytes followed by raw
//! tensors; each binary input says its size in the `binary_data_size`
//! parameter, in the order of `inputs`.
//!
//! Memory: the header is read with every variable-length part borrowed from
//! the body (tensor data and parameter values as raw JSON text) and every list
//! bounded, so decoding holds the body, the tensors it yields and a few hundred
//! bytes per input; each `data` is then decoded straight into its tensor's
//! bytes (see `elements`).

use super::elements;
use kiln_core::error::quote;
use kiln_core::tensor::{dims_from_wire, element_count};
use kiln_core::{DataType, InferInput, InferRequest, KilnError, Tensor};
use kiln_protocol::params::{self, Param};
use kiln_protocol::{MAX_PARAMETERS, MAX_RANK, MAX_TENSORS};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value as Json;
use std::fmt;
use std::marker::PhantomData;

pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(serde::Deserialize)]
struct RequestJson<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    parameters: Params<'a>,
    #[serde(borrow)]
    inputs: Bounded<InputJson<'a>, MAX_TENSORS>,
    #[serde(default, borrow)]
    outputs: Bounded<OutputJson<'a>, MAX_TENSORS>,
}

#[derive(serde::Deserialize)]
struct InputJson<'a> {
    name: String,
    shape: Bounded<i64, MAX_RANK>,
    datatype: String,
    #[serde(default, borrow)]
    parameters: Params<'a>,
    /// Kept as text until the datatype and shape are known (JSON does not fix
    /// the order of an object's fields).
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct OutputJson<'a> {
    name: String,
    #[serde(default, borrow)]
    parameters: Params<'a>,
}

/// A JSON list of at most `N` items; a longer one is an error, found before
/// more than `N` items are held.
struct Bounded<T, const N: usize>(Vec<T>);

impl<T, const N: usize> Default for Bounded<T, N> {
    fn default() -> Self {
        Bounded(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Items<T, N> {
            type Value = Bounded<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {N} items")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Bounded::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if items.len() == N {
                        return Err(de::Error::custom(format!("more than {N} items in a list")));
                    }
                    items.push(item);
                }
                Ok(Bounded(items))
            }
        }
        d.deserialize_any(Items(PhantomData))
    }
}

/// A `parameters` object: names and their values as raw JSON text, read into
/// [`Param`]s only when looked up.
#[derive(Default)]
struct Params<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Params<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Entries<'a> {
            type Value = Params<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an object of at most {MAX_PARAMETERS} parameters")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Params::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'a RawValue>()? {
                    if entries.len() == MAX_PARAMETERS {
                        return Err(de::Error::custom(format!(
                            "more than {MAX_PARAMETERS} parameters"
                        )));
                    }
                    entries.push(entry);
                }
                Ok(Params(entries))
            }
        }
        d.deserialize_any(Entries(PhantomData))
    }
}

impl Params<'_> {
    fn raw(&self, key: &str) -> Option<&RawValue> {
        // A repeated name: the last one counts, as for any JSON object.
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    fn get(&self, key: &str) -> Option<Param> {
        self.raw(key).map(raw_param)
    }
}

/// A raw JSON parameter value in the protocol layer's terms.
fn raw_param(raw: &RawValue) -> Param {
    let text = raw.get();
    match text.as_bytes().first() {
        // An array or object is never a valid parameter value: keep its text
        // for the error message instead of building it.
        Some(b'[' | b'{') => Param::Other(text.to_string()),
        _ => serde_json::from_str::<Json>(text)
            .map_or_else(|_| Param::Other(text.into()), |v| param(&v)),
    }
}

/// A JSON parameter value in the protocol layer's terms.
pub fn param(v: &Json) -> Param {
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

/// How the client wants its outputs: binary or JSON, per output name.
#[derive(Debug)]
pub struct BinaryChoice {
    pub(super) default: bool,
    pub(super) per_output: Vec<(String, bool)>,
}

impl BinaryChoice {
    pub(super) fn binary(&self, name: &str) -> bool {
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
    let req: RequestJson<'_> = serde_json::from_slice(json)
        .map_err(|e| bad(format!("malformed inference request JSON: {e}")))?;
    let id = match req.id.map(RawValue::get) {
        None | Some("null") => None,
        Some(text) => {
            Some(serde_json::from_str::<String>(text).unwrap_or_else(|_| text.to_string()))
        }
    };
    let mut inputs = Vec::with_capacity(req.inputs.0.len());
    for input in req.inputs.0 {
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
    let params::InferParams {
        timeout,
        routing_key,
    } = params::infer_params(|k| req.parameters.get(k))?;
    let mut choice = BinaryChoice {
        default: params::bool_param(
            req.parameters.get("binary_data_output"),
            "binary_data_output",
            "request",
        )?
        .unwrap_or(false),
        per_output: Vec::new(),
    };
    let mut outputs = Vec::new();
    for o in req.outputs.0 {
        params::check_output(&o.name, |k| o.parameters.has(k))?;
        if let Some(b) = params::bool_param(
            o.parameters.get("binary_data"),
            "binary_data",
            &format!("output '{}'", quote(&o.name)),
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
            trace: None,
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
    let shape = dims_from_wire(&input.shape.0).map_err(|e| err(e.to_string()))?;
    let count = element_count(&shape).map_err(|e| err(e.to_string()))?;
    let size = match input.parameters.get("binary_data_size") {
        None => None,
        Some(Param::Uint(n)) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(other) => {
            return Err(err(format!(
                "binary_data_size must be a non-negative integer, got {other}"
            )))
        }
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
    let Some(data) = input.data else {
        return Err(err(
            "has no data (give 'data', or binary data with the binary_data_size parameter)".into(),
        ));
    };
    let w = elements::decode(data.get(), dtype, count).map_err(|e| err(e.to_string()))?;
    if w.count() != count {
        return Err(err(format!(
            "shape {:?} needs {count} elements but data has {}",
            input.shape.0,
            w.count()
        )));
    }
    w.finish(shape).map_err(|e| err(e.to_string()))
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
}
