//! Inference requests and responses as the core sees them, and their validation
//! against a model's signature.

use crate::error::{quote, KilnError};
use crate::model::{TensorSpec, Version};
use crate::tensor::Tensor;

/// One named input tensor of a request.
#[derive(Debug, Clone)]
pub struct InferInput {
    pub name: String,
    pub tensor: Tensor,
}

/// A request as decoded by a front end, before it is checked against the model.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub model: String,
    /// `None` or empty: the version the model's policy picks.
    pub version: Option<String>,
    pub id: Option<String>,
    pub inputs: Vec<InferInput>,
    /// Outputs the client asked for, by name; empty means every output.
    pub outputs: Vec<String>,
    /// The client's own time limit (Triton's `timeout` parameter or a gRPC
    /// deadline); the model's `timeout_us` applies when it is shorter or absent.
    pub timeout: Option<std::time::Duration>,
    /// Makes the canary draw sticky: the same key always gets the same version
    /// (while the policy stays the same).
    pub routing_key: Option<String>,
    /// The request's span when it is traced: the core adds its queue and
    /// compute spans under it (see [`crate::trace`]).
    pub trace: Option<tracing::Span>,
}

impl InferRequest {
    /// Bytes its input tensors hold (what the byte budget charges while it waits).
    pub fn tensor_bytes(&self) -> usize {
        self.inputs.iter().map(|i| i.tensor.data().len()).sum()
    }
}

#[derive(Debug, Clone)]
pub struct InferOutput {
    pub name: String,
    pub tensor: Tensor,
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model: String,
    pub version: Version,
    pub id: Option<String>,
    pub outputs: Vec<InferOutput>,
    pub timing: Timing,
    /// Rows in the execution the request rode in.
    pub batch_size: usize,
}

/// Where a request's time went in the core, told to its client (REST's
/// `Server-Timing`, gRPC's trailing metadata) so that it need not scrape metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// From enqueue until its batch started computing.
    pub queue: std::time::Duration,
    /// Its batch's compute (shared with the batch's other requests).
    pub compute: std::time::Duration,
    /// From the core receiving it to its answer (decoding and encoding aside).
    pub total: std::time::Duration,
}

/// A request checked against the model: inputs in the backend's order and the
/// indices of the outputs to return.
#[derive(Debug)]
pub struct ValidatedRequest {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<usize>,
    pub batch_size: usize,
}

/// Checks a request's inputs and requested outputs against a model's signature.
pub fn validate(
    label: &str,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
    max_batch_size: u32,
    mut given: Vec<InferInput>,
    requested: &[String],
) -> Result<ValidatedRequest, KilnError> {
    for (i, g) in given.iter().enumerate() {
        if !inputs.iter().any(|s| s.name == g.name) {
            let names: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(KilnError::invalid(format!(
                "model {label} has no input '{}' (its inputs are {names:?})",
                quote(&g.name)
            )));
        }
        if given[..i].iter().any(|p| p.name == g.name) {
            return Err(KilnError::invalid(format!(
                "model {label}: input '{}' is given twice",
                quote(&g.name)
            )));
        }
    }
    let mut ordered = Vec::with_capacity(inputs.len());
    let mut batch: Option<(usize, &str)> = None;
    for spec in inputs {
        let Some(pos) = given.iter().position(|g| g.name == spec.name) else {
            return Err(KilnError::invalid(format!(
                "model {label}: input '{}' is missing (expected {} with shape {:?})",
                spec.name, spec.dtype, spec.shape
            )));
        };
        let mut g = given.swap_remove(pos);
        if crate::config::scalar_per_row(spec, max_batch_size)
            && g.tensor.shape().len() == 2
            && g.tensor.shape()[1] == 1
        {
            // `[batch, 1]` for a `[batch]` input: Triton's `reshape: { shape: [] }`.
            let b = g.tensor.shape()[0];
            g.tensor = g
                .tensor
                .reshape(vec![b])
                .map_err(|e| KilnError::invalid(e.to_string()))?;
        }
        let t = &g.tensor;
        if t.dtype() != spec.dtype {
            return Err(KilnError::invalid(format!(
                "model {label}: input '{}' has datatype {}, expected {}",
                spec.name,
                t.dtype(),
                spec.dtype
            )));
        }
        let shape = t.shape();
        let fits = shape.len() == spec.shape.len()
            && shape
                .iter()
                .zip(&spec.shape)
                .all(|(&d, &s)| s < 0 || d as i64 == s);
        if !fits {
            return Err(KilnError::invalid(format!(
                "model {label}: input '{}' has shape {shape:?}, expected {:?}{}",
                spec.name,
                spec.shape,
                if max_batch_size > 0 {
                    " (-1 is any size; the first dimension is the batch)"
                } else {
                    " (-1 is any size)"
                }
            )));
        }
        if max_batch_size > 0 {
            let b = shape[0];
            if b == 0 || b > max_batch_size as usize {
                return Err(KilnError::invalid(format!(
                    "model {label}: input '{}' has batch size {b}, expected 1 to {max_batch_size}",
                    spec.name
                )));
            }
            match batch {
                Some((first, other)) if first != b => {
                    return Err(KilnError::invalid(format!(
                        "model {label}: inputs '{other}' and '{}' have different batch sizes ({first} and {b})",
                        spec.name
                    )))
                }
                _ => batch = Some((b, &spec.name)),
            }
        }
        ordered.push(g.tensor);
    }
    let outputs_idx = if requested.is_empty() {
        (0..outputs.len()).collect()
    } else {
        let mut idx = Vec::with_capacity(requested.len());
        for name in requested {
            let Some(i) = outputs.iter().position(|o| &o.name == name) else {
                let names: Vec<&str> = outputs.iter().map(|s| s.name.as_str()).collect();
                return Err(KilnError::invalid(format!(
                    "model {label} has no output '{}' (its outputs are {names:?})",
                    quote(name)
                )));
            };
            if idx.contains(&i) {
                return Err(KilnError::invalid(format!(
                    "model {label}: output '{name}' is requested twice"
                )));
            }
            idx.push(i);
        }
        idx
    };
    Ok(ValidatedRequest {
        inputs: ordered,
        outputs: outputs_idx,
        batch_size: batch.map_or(1, |(b, _)| b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DataType;
    use crate::error::ErrorKind;

    fn spec(name: &str, shape: Vec<i64>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: DataType::Fp32,
            shape,
        }
    }

    fn input(name: &str, shape: Vec<usize>) -> InferInput {
        let n = shape.iter().product();
        InferInput {
            name: name.into(),
            tensor: Tensor::from_vec(shape, vec![0f32; n]).unwrap(),
        }
    }

    fn check(given: Vec<InferInput>, requested: &[&str]) -> Result<ValidatedRequest, KilnError> {
        let ins = [spec("a", vec![-1, 4]), spec("b", vec![-1, 2])];
        let outs = [spec("y", vec![-1, 1]), spec("z", vec![-1, 1])];
        let requested: Vec<String> = requested.iter().map(|s| s.to_string()).collect();
        validate("m:1", &ins, &outs, 8, given, &requested)
    }

    #[test]
    fn reorders_inputs_and_selects_outputs() {
        let v = check(vec![input("b", vec![3, 2]), input("a", vec![3, 4])], &["z"]).unwrap();
        assert_eq!(v.inputs[0].shape(), &[3, 4]);
        assert_eq!(v.outputs, vec![1]);
        assert_eq!(v.batch_size, 3);
        assert_eq!(
            check(vec![input("a", vec![1, 4]), input("b", vec![1, 2])], &[])
                .unwrap()
                .outputs,
            vec![0, 1]
        );
    }

    #[test]
    fn rejects_bad_requests_with_named_errors() {
        let cases: Vec<(Vec<InferInput>, Vec<&str>, &str)> = vec![
            (vec![input("a", vec![1, 4])], vec![], "input 'b' is missing"),
            (
                vec![
                    input("a", vec![1, 4]),
                    input("b", vec![1, 2]),
                    input("c", vec![1]),
                ],
                vec![],
                "no input 'c'",
            ),
            (
                vec![input("a", vec![1, 4]), input("a", vec![1, 4])],
                vec![],
                "given twice",
            ),
            (
                vec![input("a", vec![1, 5]), input("b", vec![1, 2])],
                vec![],
                "input 'a' has shape [1, 5]",
            ),
            (
                vec![input("a", vec![4]), input("b", vec![1, 2])],
                vec![],
                "input 'a' has shape [4]",
            ),
            (
                vec![input("a", vec![9, 4]), input("b", vec![9, 2])],
                vec![],
                "batch size 9",
            ),
            (
                vec![input("a", vec![0, 4]), input("b", vec![0, 2])],
                vec![],
                "batch size 0",
            ),
            (
                vec![input("a", vec![2, 4]), input("b", vec![3, 2])],
                vec![],
                "different batch sizes",
            ),
            (
                vec![input("a", vec![1, 4]), input("b", vec![1, 2])],
                vec!["w"],
                "no output 'w'",
            ),
        ];
        for (given, req, want) in cases {
            let e = check(given, &req).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument);
            assert!(
                e.message.contains(want),
                "{} does not contain {want}",
                e.message
            );
            assert!(e.message.contains("m:1"));
        }
        let wrong_type = InferInput {
            name: "a".into(),
            tensor: Tensor::from_vec(vec![1, 4], vec![0i64; 4]).unwrap(),
        };
        let e = check(vec![wrong_type, input("b", vec![1, 2])], &[]).unwrap_err();
        assert!(
            e.message.contains("datatype INT64, expected FP32"),
            "{}",
            e.message
        );
    }
}
