//! Protocol messages to core types and back.

use crate::pb::{
    self, model_infer_request::InferInputTensor, InferTensorContents, ModelInferRequest,
    ModelInferResponse,
};
use kiln_core::elements::{ElementWriter, Value};
use kiln_core::error::quote;
use kiln_core::tensor::dims_from_wire;
use kiln_core::{DataType, InferInput, InferRequest, InferResponse, KilnError, Tensor};
use kiln_protocol::params::{self, Param};
use std::time::Duration;

pub fn config_type(d: DataType) -> pb::DataType {
    match d {
        DataType::Bool => pb::DataType::TypeBool,
        DataType::Uint8 => pb::DataType::TypeUint8,
        DataType::Uint16 => pb::DataType::TypeUint16,
        DataType::Uint32 => pb::DataType::TypeUint32,
        DataType::Uint64 => pb::DataType::TypeUint64,
        DataType::Int8 => pb::DataType::TypeInt8,
        DataType::Int16 => pb::DataType::TypeInt16,
        DataType::Int32 => pb::DataType::TypeInt32,
        DataType::Int64 => pb::DataType::TypeInt64,
        DataType::Fp16 => pb::DataType::TypeFp16,
        DataType::Fp32 => pb::DataType::TypeFp32,
        DataType::Fp64 => pb::DataType::TypeFp64,
        DataType::Bf16 => pb::DataType::TypeBf16,
        DataType::Bytes => pb::DataType::TypeString,
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// An inference parameter in the protocol layer's terms.
fn param(p: &pb::InferParameter) -> Param {
    use pb::infer_parameter::ParameterChoice as P;
    match &p.parameter_choice {
        None => Param::Null,
        Some(P::BoolParam(b)) => Param::Bool(*b),
        Some(P::Int64Param(n)) => Param::Int(*n),
        Some(P::Uint64Param(n)) => Param::Uint(*n),
        Some(P::DoubleParam(x)) => Param::Double(*x),
        Some(P::StringParam(s)) => Param::Str(s.clone()),
    }
}

/// The tensor bytes a request message holds (raw and typed contents), counted
/// without walking the elements but for BYTES.
pub fn held_bytes(r: &ModelInferRequest) -> usize {
    let raw: usize = r.raw_input_contents.iter().map(Vec::len).sum();
    let typed: usize = r
        .inputs
        .iter()
        .filter_map(|t| t.contents.as_ref())
        .map(contents_bytes)
        .sum();
    raw + typed
}

fn contents_bytes(c: &InferTensorContents) -> usize {
    c.bool_contents.len()
        + 4 * (c.int_contents.len() + c.uint_contents.len() + c.fp32_contents.len())
        + 8 * (c.int64_contents.len() + c.uint64_contents.len() + c.fp64_contents.len())
        + c.bytes_contents.held_bytes()
}

/// Decodes a ModelInferRequest into the core's request. `deadline` is what is left
/// of the call's gRPC deadline, if it has one.
pub fn request(
    r: ModelInferRequest,
    deadline: Option<Duration>,
) -> Result<InferRequest, KilnError> {
    let params::InferParams {
        timeout,
        routing_key,
    } = params::infer_params(|k| r.parameters.get(k).map(param))?;
    let timeout = timeout.into_iter().chain(deadline).min();
    let model = r.model_name;
    if model.is_empty() {
        return Err(KilnError::invalid("model_name is empty"));
    }
    let raw = r.raw_input_contents;
    if !raw.is_empty() && raw.len() != r.inputs.len() {
        return Err(KilnError::invalid(format!(
            "raw_input_contents has {} entries for {} inputs; give one per input, in order",
            raw.len(),
            r.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for mut t in r.inputs {
        let name = std::mem::take(&mut t.name);
        let tensor = input_tensor(&model, &name, t, raw.next())?;
        inputs.push(InferInput { name, tensor });
    }
    let mut outputs = Vec::with_capacity(r.outputs.len());
    for o in r.outputs {
        params::check_output(&o.name, |k| o.parameters.contains_key(k))?;
        outputs.push(o.name);
    }
    Ok(InferRequest {
        model,
        version: Some(r.model_version).filter(|v| !v.is_empty()),
        id: Some(r.id).filter(|v| !v.is_empty()),
        inputs,
        outputs,
        timeout,
        routing_key,
        trace: None,
    })
}

fn input_tensor(
    model: &str,
    name: &str,
    t: InferInputTensor,
    raw: Option<Vec<u8>>,
) -> Result<Tensor, KilnError> {
    let err = |m: String| {
        KilnError::invalid(format!(
            "model '{}' input '{}': {m}",
            quote(model),
            quote(name)
        ))
    };
    let dtype: DataType = t
        .datatype
        .parse()
        .map_err(|e: kiln_core::dtype::UnknownDataType| err(e.to_string()))?;
    let shape = dims_from_wire(&t.shape).map_err(|e| err(e.to_string()))?;
    kiln_core::tensor::element_count(&shape).map_err(|e| err(e.to_string()))?;
    if let Some(bytes) = raw {
        if t.contents.is_some() {
            return Err(err("has both contents and raw_input_contents".into()));
        }
        return Tensor::from_bytes(dtype, shape, bytes).map_err(|e| err(e.to_string()));
    }
    let Some(c) = t.contents else {
        return Err(err(
            "has no data (set contents or raw_input_contents)".into()
        ));
    };
    if dtype == DataType::Bytes {
        // Already in the tensor's layout: it becomes the tensor as it is.
        return Tensor::from_bytes(dtype, shape, c.bytes_contents.into_data())
            .map_err(|e| err(e.to_string()));
    }
    // Typed contents become at most their own size once in the tensor's layout
    // (narrower types, INT8 from int_contents, only shrink).
    let mut w = ElementWriter::with_capacity(dtype, contents_bytes(&c));
    let push_all = |w: &mut ElementWriter,
                    vals: &mut dyn Iterator<Item = Value<'_>>|
     -> Result<(), KilnError> {
        for (i, v) in vals.enumerate() {
            w.push(v).map_err(|m| err(format!("element {i}: {m}")))?;
        }
        Ok(())
    };
    let InferTensorContents {
        bool_contents,
        int_contents,
        int64_contents,
        uint_contents,
        uint64_contents,
        fp32_contents,
        fp64_contents,
        bytes_contents: _,
    } = &c;
    match dtype {
        DataType::Bool => push_all(&mut w, &mut bool_contents.iter().map(|&b| Value::Bool(b)))?,
        DataType::Int8 | DataType::Int16 | DataType::Int32 => push_all(
            &mut w,
            &mut int_contents.iter().map(|&i| Value::Int(i as i64)),
        )?,
        DataType::Int64 => push_all(&mut w, &mut int64_contents.iter().map(|&i| Value::Int(i)))?,
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => push_all(
            &mut w,
            &mut uint_contents.iter().map(|&u| Value::Uint(u as u64)),
        )?,
        DataType::Uint64 => push_all(&mut w, &mut uint64_contents.iter().map(|&u| Value::Uint(u)))?,
        // Copied as bits: widening to f64 and back would quiet a signalling NaN.
        DataType::Fp32 => {
            let bytes = fp32_contents.iter().flat_map(|f| f.to_le_bytes()).collect();
            return Tensor::from_bytes(dtype, shape, bytes).map_err(|e| err(e.to_string()));
        }
        DataType::Fp64 => push_all(&mut w, &mut fp64_contents.iter().map(|&f| Value::Float(f)))?,
        // (BYTES has become its tensor above.)
        DataType::Bytes | DataType::Fp16 | DataType::Bf16 => {
            return Err(err(format!(
                "{dtype} data must be sent in raw_input_contents"
            )))
        }
    }
    w.finish(shape).map_err(|e| err(e.to_string()))
}

/// Encodes the core's response; outputs travel as raw contents, in order.
pub fn response(r: InferResponse) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(r.outputs.len());
    let mut raw = Vec::with_capacity(r.outputs.len());
    for o in r.outputs {
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: o.name,
            datatype: o.tensor.dtype().as_str().to_string(),
            shape: o.tensor.wire_shape(),
            parameters: Default::default(),
            contents: None,
        });
        raw.push(o.tensor.into_data());
    }
    ModelInferResponse {
        model_name: r.model,
        model_version: r.version.to_string(),
        id: r.id.unwrap_or_default(),
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header() {
        assert_eq!(grpc_timeout("20m"), Some(Duration::from_millis(20)));
        assert_eq!(grpc_timeout("1500u"), Some(Duration::from_micros(1500)));
        assert_eq!(grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "12x", "-1m", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }
}
