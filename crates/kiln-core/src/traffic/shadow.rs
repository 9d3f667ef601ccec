//! Shadow copies: a share of requests that succeeded on their primary version
//! also runs on the shadow version; its answer is compared and discarded.

use crate::dtype::DataType;
use crate::infer::{validate, InferInput};
use crate::metrics::{self as m, Outcome};
use crate::registry::ModelVersion;
use crate::scheduler::Computed;
use crate::tensor::Tensor;
use std::sync::Arc;
use std::time::Instant;

/// Runs a shadow copy of a request that succeeded on its primary version, and
/// records how long it took, how it ended and how its outputs differ. Its answer
/// is discarded; the shadow's own queue bounds how much of this can pile up. The
/// comparison walks every element, so it runs off the async runtime's workers.
pub(crate) async fn run(
    sh: Arc<ModelVersion>,
    inputs: Vec<InferInput>,
    primary: Vec<(String, Tensor)>,
) {
    let started = Instant::now();
    let outcome = match validate(
        &sh.label,
        &sh.signature.inputs,
        &sh.signature.outputs,
        sh.max_batch_size,
        inputs,
        &[],
    ) {
        Err(_) => Outcome::Invalid,
        Ok(valid) => match sh
            .scheduler
            .submit(valid.inputs, valid.batch_size, None, None)
        {
            Err(_) => Outcome::Rejected,
            Ok(rx) => match rx.await {
                Ok(Computed {
                    outputs: Ok(outs), ..
                }) => {
                    let named: Vec<(String, Tensor)> = sh
                        .signature
                        .outputs
                        .iter()
                        .map(|s| s.name.clone())
                        .zip(outs)
                        .collect();
                    let compared = tokio::task::spawn_blocking(move || compare(&primary, &named));
                    match compared.await {
                        Ok(difference) => {
                            record(&sh, difference);
                            Outcome::Success
                        }
                        Err(_) => Outcome::Error,
                    }
                }
                _ => Outcome::Error,
            },
        },
    };
    let labels = [
        ("model", sh.name.clone()),
        ("version", sh.version.to_string()),
    ];
    metrics::histogram!(m::SHADOW_DURATION, &labels).record(started.elapsed().as_secs_f64());
    metrics::counter!(m::SHADOW_REQUESTS, "model" => sh.name.clone(), "version" => sh.version.to_string(), "outcome" => outcome.as_str()).increment(1);
}

fn record(sh: &ModelVersion, difference: Difference) {
    let labels = [
        ("model", sh.name.clone()),
        ("version", sh.version.to_string()),
    ];
    match difference {
        Difference::MaxAbs(d) => metrics::histogram!(m::SHADOW_OUTPUT_DIFF, &labels).record(d),
        Difference::Mismatch(why) => {
            tracing::debug!(model = %sh.name, version = sh.version.0, "shadow output mismatch: {why}");
            metrics::counter!(m::SHADOW_MISMATCHES, &labels).increment(1)
        }
    }
}

/// How a shadow's output compares with the primary's.
#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    /// Largest absolute difference over every element of every compared output.
    MaxAbs(f64),
    /// An output is missing, or its shape or datatype differs, or non-numeric data differs.
    Mismatch(String),
}

/// Compares outputs by name.
pub fn compare(primary: &[(String, Tensor)], shadow: &[(String, Tensor)]) -> Difference {
    let mut max = 0.0f64;
    for (name, p) in primary {
        let Some((_, s)) = shadow.iter().find(|(n, _)| n == name) else {
            return Difference::Mismatch(format!("the shadow has no output '{name}'"));
        };
        if p.shape() != s.shape() || p.dtype() != s.dtype() {
            return Difference::Mismatch(format!(
                "output '{name}': {} {:?} against the shadow's {} {:?}",
                p.dtype(),
                p.shape(),
                s.dtype(),
                s.shape()
            ));
        }
        match (as_f64(p), as_f64(s)) {
            (Some(a), Some(b)) => {
                for (x, y) in a.iter().zip(&b) {
                    let d = (x - y).abs();
                    if d.is_nan() {
                        if !(x.is_nan() && y.is_nan()) {
                            return Difference::Mismatch(format!("output '{name}': NaN differs"));
                        }
                    } else if d > max {
                        max = d;
                    }
                }
            }
            _ => {
                if p.data() != s.data() {
                    return Difference::Mismatch(format!("output '{name}' differs"));
                }
            }
        }
    }
    Difference::MaxAbs(max)
}

fn as_f64(t: &Tensor) -> Option<Vec<f64>> {
    fn conv<T: crate::tensor::Element, F: Fn(T) -> f64>(t: &Tensor, f: F) -> Option<Vec<f64>> {
        t.to_vec::<T>().ok().map(|v| v.into_iter().map(f).collect())
    }
    match t.dtype() {
        DataType::Fp32 => conv::<f32, _>(t, f64::from),
        DataType::Fp64 => conv::<f64, _>(t, |x| x),
        DataType::Fp16 => conv::<half::f16, _>(t, |x| x.to_f64()),
        DataType::Bf16 => conv::<half::bf16, _>(t, |x| x.to_f64()),
        DataType::Int8 => conv::<i8, _>(t, f64::from),
        DataType::Int16 => conv::<i16, _>(t, f64::from),
        DataType::Int32 => conv::<i32, _>(t, f64::from),
        DataType::Int64 => conv::<i64, _>(t, |x| x as f64),
        DataType::Uint8 => conv::<u8, _>(t, f64::from),
        DataType::Uint16 => conv::<u16, _>(t, f64::from),
        DataType::Uint32 => conv::<u32, _>(t, f64::from),
        DataType::Uint64 => conv::<u64, _>(t, |x| x as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_outputs() {
        let t = |v: Vec<f32>| Tensor::from_vec(vec![v.len()], v).unwrap();
        let p = vec![("y".to_string(), t(vec![1.0, 2.0, 3.0]))];
        let s = vec![("y".to_string(), t(vec![1.0, 2.5, 3.0]))];
        assert_eq!(compare(&p, &s), Difference::MaxAbs(0.5));
        assert_eq!(compare(&p, &p), Difference::MaxAbs(0.0));
        assert!(matches!(
            compare(&p, &[("z".into(), t(vec![1.0]))]),
            Difference::Mismatch(_)
        ));
        let s2 = vec![("y".to_string(), t(vec![1.0, 2.0]))];
        assert!(matches!(compare(&p, &s2), Difference::Mismatch(_)));
    }
}
