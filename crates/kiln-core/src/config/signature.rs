//! A model's interface once what the model file declares and what the config
//! says are reconciled: the batch size and every tensor's full shape.

use crate::config::error::ConfigError;
use crate::config::model::{ModelConfig, DEFAULT_MAX_BATCH_SIZE};
use crate::model::{ModelSignature, TensorSpec};
use std::path::Path;

/// A model's interface once the config and the model file are reconciled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSignature {
    /// 0: no batching; shapes are exactly `inputs[].shape`.
    pub max_batch_size: u32,
    /// Full shapes; when `max_batch_size > 0` the first dimension is the batch (-1).
    pub signature: ModelSignature,
}

/// Reconciles what the model file declares with what `config.toml` says.
pub fn resolve_signature(
    model: &ModelSignature,
    cfg: &ModelConfig,
    path: &Path,
) -> Result<ResolvedSignature, ConfigError> {
    let invalid = |field: String, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        field,
        message,
    };
    let dynamic = model.has_dynamic_batch();
    let max_batch_size = match cfg.max_batch_size {
        Some(n) if n > 0 && !dynamic => {
            return Err(invalid(
                "max_batch_size".into(),
                format!("{n} given, but the model's inputs and outputs do not all have a variable first dimension, so it cannot batch; set 0"),
            ))
        }
        Some(n) => n,
        None if dynamic => DEFAULT_MAX_BATCH_SIZE,
        None => 0,
    };
    if let Some(&bad) = cfg
        .preferred_batch_sizes
        .iter()
        .find(|&&n| n > max_batch_size)
    {
        return Err(invalid(
            "preferred_batch_sizes".into(),
            format!("{bad} is larger than max_batch_size ({max_batch_size})"),
        ));
    }
    let mut signature = model.clone();
    for (field, given, specs) in [
        ("input", &cfg.input, &mut signature.inputs),
        ("output", &cfg.output, &mut signature.outputs),
    ] {
        for (i, t) in given.iter().enumerate() {
            let Some(spec) = specs.iter_mut().find(|s| s.name == t.name) else {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                return Err(invalid(
                    format!("{field}[{i}].name"),
                    format!("the model has no {field} '{}' (it has {names:?})", t.name),
                ));
            };
            if let Some(dt) = t.datatype {
                if dt != spec.dtype {
                    return Err(invalid(
                        format!("{field}[{i}].datatype"),
                        format!(
                            "{dt} given, but the model's {field} '{}' is {}",
                            t.name, spec.dtype
                        ),
                    ));
                }
            }
            if let Some(dims) = &t.dims {
                let full: Vec<i64> = if max_batch_size > 0 {
                    std::iter::once(-1).chain(dims.iter().copied()).collect()
                } else {
                    dims.clone()
                };
                let compatible = full.len() == spec.shape.len()
                    && full
                        .iter()
                        .zip(&spec.shape)
                        .all(|(&c, &m)| m == -1 || c == m);
                if !compatible {
                    return Err(invalid(
                        format!("{field}[{i}].dims"),
                        format!(
                            "{dims:?} does not fit the model's shape {:?} for '{}'{}",
                            spec.shape,
                            t.name,
                            if max_batch_size > 0 {
                                " (dims exclude the batch dimension)"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                spec.shape = full;
            }
        }
    }
    Ok(ResolvedSignature {
        max_batch_size,
        signature,
    })
}

/// Whether an input is only a batch of scalars (e.g. texts, `[batch]`). Triton's
/// config cannot say `dims: []`, so such an input is reported as `dims: [1]` with
/// `reshape: { shape: [] }` (Triton's own convention) and accepted as `[batch, 1]`
/// as well as `[batch]`; perf_analyzer and tritonclient send the former.
pub fn scalar_per_row(spec: &TensorSpec, max_batch_size: u32) -> bool {
    max_batch_size > 0 && spec.shape.len() == 1
}
