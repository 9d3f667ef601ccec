//! How a tensor's elements become rows of features.

use kiln_core::elements::{for_each, Value};
use kiln_core::{DataType, Tensor};
use serde::{Deserialize, Serialize};

/// How a tensor's elements were reduced to features, recorded in the profile
/// so that live tensors are reduced the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// `[batch]`: one feature, the element itself.
    Value,
    /// `[batch, F]`: feature `j` is column `j`.
    Column,
    /// `[batch, C, d2, ...]`: feature `c` is the mean of channel `c` over the
    /// remaining dimensions, one value per row (images: per-channel brightness).
    ChannelMean,
    /// Text (BYTES) `[batch]` or `[batch, k]`: each string's length in UTF-8
    /// bytes (the tokenizer is the model's, so token counts are not known here).
    ByteLength,
}

impl Reduction {
    /// The reduction for a tensor of `shape` (batch first), and its feature count.
    pub fn of(shape: &[usize]) -> Option<(Reduction, usize)> {
        match shape {
            [] => None,
            [_] => Some((Reduction::Value, 1)),
            [_, f] => Some((Reduction::Column, *f)),
            [_, c, ..] => Some((Reduction::ChannelMean, *c)),
        }
    }
}

/// The tensor as `rows x features` f64 values (row-major), with its reduction;
/// `None` for a tensor without a batch dimension. NaN and infinities are kept as
/// they are: they are what data-quality counts.
pub fn feature_rows(t: &Tensor) -> Option<(Reduction, usize, Vec<f64>)> {
    if t.dtype() == DataType::Bytes {
        let rows = *t.shape().first()?;
        let lengths: Vec<f64> = t
            .byte_elements()
            .ok()?
            .iter()
            .map(|e| e.len() as f64)
            .collect();
        let features = lengths.len().checked_div(rows).unwrap_or(1);
        return Some((Reduction::ByteLength, features, lengths));
    }
    let (reduction, features) = Reduction::of(t.shape())?;
    let rows = t.shape()[0];
    let mut values = Vec::with_capacity(t.element_count());
    let _ = for_each(t, |v| {
        values.push(match v {
            Value::Bool(b) => f64::from(u8::from(b)),
            Value::Int(i) => i as f64,
            Value::Uint(u) => u as f64,
            Value::Float(f) => f,
            Value::Bytes(_) => f64::NAN,
        });
        Ok::<(), ()>(())
    });
    if reduction != Reduction::ChannelMean {
        return Some((reduction, features, values));
    }
    // Mean of each (row, channel) over the rest; a NaN anywhere makes it NaN.
    let per = values.len().checked_div(rows * features).unwrap_or(0);
    let means = if per == 0 {
        vec![f64::NAN; rows * features]
    } else {
        values
            .chunks_exact(per)
            .map(|c| c.iter().sum::<f64>() / per as f64)
            .collect()
    };
    Some((reduction, features, means))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_become_rows_of_features() {
        let cols = Tensor::from_vec(vec![2, 3], vec![1f32, 2., 3., 4., 5., f32::NAN]).unwrap();
        let (r, f, v) = feature_rows(&cols).unwrap();
        assert_eq!((r, f), (Reduction::Column, 3));
        assert_eq!(&v[..5], &[1., 2., 3., 4., 5.]);
        assert!(v[5].is_nan());
        // [batch, C, H, W]: channel means per row.
        let img = Tensor::from_vec(vec![1, 2, 1, 2], vec![1i64, 3, 10, 20]).unwrap();
        assert_eq!(
            feature_rows(&img).unwrap(),
            (Reduction::ChannelMean, 2, vec![2., 15.])
        );
        let labels = Tensor::from_vec(vec![3], vec![1i64, 0, 7]).unwrap();
        assert_eq!(
            feature_rows(&labels).unwrap(),
            (Reduction::Value, 1, vec![1., 0., 7.])
        );
        let text =
            Tensor::from_byte_elements(vec![2], &[b"hi".as_slice(), "héllo".as_bytes()]).unwrap();
        assert_eq!(
            feature_rows(&text).unwrap(),
            (Reduction::ByteLength, 1, vec![2., 6.])
        );
        let empty = Tensor::from_vec(vec![0, 2, 3], Vec::<f32>::new()).unwrap();
        assert_eq!(feature_rows(&empty).unwrap().2, Vec::<f64>::new());
    }
}
