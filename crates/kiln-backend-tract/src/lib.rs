//! tract backend: pure Rust, no shared library, the zero-setup default.
//!
//! The model is optimised once with its batch dimension left symbolic; the one
//! plan serves every batch size and every compute thread without a lock (each run
//! spawns its own state).

use kiln_core::backend::{Backend, BackendError, BackendFactory, LoadRequest};
use kiln_core::{DataType, ModelSignature, Tensor, TensorSpec};
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

const NAME: &str = "tract";

/// Loads ONNX models with tract.
#[derive(Default)]
pub struct TractFactory;

impl BackendFactory for TractFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn platform(&self) -> &'static str {
        "tract_onnx"
    }

    fn availability(&self) -> Result<(), String> {
        Ok(())
    }

    fn load(&self, req: &LoadRequest<'_>) -> Result<Box<dyn Backend>, BackendError> {
        let err = |e: String| BackendError::Load {
            backend: NAME,
            path: req.path.to_path_buf(),
            message: e,
        };
        let mut model = tract_onnx::onnx()
            .model_for_path(req.path)
            .map_err(|e| err(format!("{e:#}")))?;
        name_unknown_dims(&mut model).map_err(|e| err(format!("{e:#}")))?;
        let model = model.into_optimized().map_err(|e| err(format!("{e:#}")))?;
        let mut inputs = Vec::new();
        for (i, outlet) in model
            .input_outlets()
            .map_err(|e| err(e.to_string()))?
            .iter()
            .enumerate()
        {
            let fact = model.input_fact(i).map_err(|e| err(e.to_string()))?;
            inputs.push(
                spec(model.node(outlet.node).name.clone(), fact)
                    .map_err(|e| err(format!("input: {e}")))?,
            );
        }
        let mut outputs = Vec::new();
        for (i, outlet) in model
            .output_outlets()
            .map_err(|e| err(e.to_string()))?
            .iter()
            .enumerate()
        {
            let fact = model.output_fact(i).map_err(|e| err(e.to_string()))?;
            let name = model
                .outlet_label(*outlet)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(outlet.node).name.clone());
            outputs.push(spec(name, fact).map_err(|e| err(format!("output: {e}")))?);
        }
        let plan = model.into_runnable().map_err(|e| err(format!("{e:#}")))?;
        Ok(Box::new(TractBackend {
            plan,
            signature: ModelSignature { inputs, outputs },
        }))
    }
}

/// Gives each unnamed variable input dimension (e.g. skl2onnx's `None` batch
/// dimension) a symbol of its own, so tract can type the graph without fixing it.
fn name_unknown_dims(model: &mut InferenceModel) -> TractResult<()> {
    for i in 0..model.inputs.len() {
        let fact = model.input_fact(i)?.clone();
        let Some(dt) = fact.datum_type.concretize() else {
            continue;
        };
        if fact.shape.is_open() || fact.shape.dims().all(|d| d.concretize().is_some()) {
            continue;
        }
        let dims: TVec<TDim> = fact
            .shape
            .dims()
            .map(|d| {
                d.concretize()
                    .unwrap_or_else(|| model.new_sym_with_prefix("unk").into())
            })
            .collect();
        model.set_input_fact(i, InferenceFact::dt_shape(dt, dims))?;
    }
    Ok(())
}

fn spec(name: String, fact: &TypedFact) -> Result<TensorSpec, String> {
    let dtype = data_type(fact.datum_type).ok_or_else(|| {
        format!(
            "'{name}' has type {:?}, which the tract backend does not serve",
            fact.datum_type
        )
    })?;
    let shape = fact
        .shape
        .dims()
        .iter()
        .map(|d| d.as_i64().unwrap_or(-1))
        .collect();
    Ok(TensorSpec { name, dtype, shape })
}

fn data_type(d: DatumType) -> Option<DataType> {
    Some(match d {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::I8 => DataType::Int8,
        DatumType::I16 => DataType::Int16,
        DatumType::I32 => DataType::Int32,
        // tract may compute integer outputs symbolically; they leave as INT64.
        DatumType::I64 | DatumType::TDim => DataType::Int64,
        DatumType::F16 => DataType::Fp16,
        DatumType::F32 => DataType::Fp32,
        DatumType::F64 => DataType::Fp64,
        _ => return None,
    })
}

fn datum_type(d: DataType) -> Option<DatumType> {
    Some(match d {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp16 => DatumType::F16,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Bf16 | DataType::Bytes => return None,
    })
}

struct TractBackend {
    plan: Arc<TypedRunnableModel>,
    signature: ModelSignature,
}

impl Backend for TractBackend {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let mut values: TVec<TValue> = TVec::with_capacity(inputs.len());
        for t in &inputs {
            let dt = datum_type(t.dtype()).ok_or_else(|| {
                BackendError::Run(format!("tract does not take {} tensors", t.dtype()))
            })?;
            // SAFETY: the bytes were checked against dtype and shape when the Kiln tensor was
            // built, and BOOL bytes are normalised to 0/1, so every element is a valid value.
            let tensor =
                unsafe { tract_onnx::prelude::Tensor::from_raw_dt(dt, t.shape(), t.data()) }
                    .map_err(|e| BackendError::Run(e.to_string()))?;
            values.push(tensor.into_tvalue());
        }
        let outputs = self
            .plan
            .run(values)
            .map_err(|e| BackendError::Run(format!("{e:#}")))?;
        outputs
            .into_iter()
            .zip(&self.signature.outputs)
            .map(|(v, spec)| {
                let v = if v.datum_type() == DatumType::TDim {
                    v.cast_to_dt(DatumType::I64)
                        .map_err(|e| BackendError::Run(e.to_string()))?
                        .into_owned()
                        .into_tvalue()
                } else {
                    v
                };
                let dtype = data_type(v.datum_type()).ok_or_else(|| {
                    BackendError::Run(format!(
                        "output '{}' has type {:?}",
                        spec.name,
                        v.datum_type()
                    ))
                })?;
                Tensor::from_bytes(dtype, v.shape().to_vec(), v.as_bytes().to_vec())
                    .map_err(|e| BackendError::Run(e.to_string()))
            })
            .collect()
    }
}
