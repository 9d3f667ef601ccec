//! Tensors as they travel through Kiln: a datatype, a shape and row-major bytes.
//!
//! Fixed-size elements are stored little-endian, back to back. BYTES elements are
//! stored in the protocol's own wire form (a 4-byte little-endian length, then the
//! bytes), so raw payloads pass from front end to backend without re-encoding.

use crate::dtype::DataType;

/// Why bytes and a shape do not make a tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    #[error("shape {shape:?} has too many elements")]
    ShapeOverflow { shape: Vec<i64> },
    #[error("shape {shape:?} has a negative dimension")]
    NegativeDim { shape: Vec<i64> },
    #[error("{dtype} tensor of shape {shape:?} needs {expected} bytes of data, got {actual}")]
    ByteLength {
        dtype: DataType,
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error("BYTES tensor data is truncated: element {index} declares {declared} bytes but only {available} remain")]
    BytesTruncated {
        index: usize,
        declared: usize,
        available: usize,
    },
    #[error("BYTES tensor of shape {shape:?} needs {expected} elements, got {actual}")]
    BytesCount {
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error("cannot batch tensors: {0}")]
    Batch(String),
    #[error("{0}")]
    Shape(String),
    #[error("tensor is {actual}, not {expected}")]
    WrongType {
        expected: DataType,
        actual: DataType,
    },
}

/// Element types with a fixed size that can be viewed as plain bytes.
pub trait Element: bytemuck::Pod {
    const DTYPE: DataType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {
        $(impl Element for $t { const DTYPE: DataType = DataType::$d; })*
    };
}
element!(
    u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64,
    i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64,
    half::f16 => Fp16, f32 => Fp32, f64 => Fp64, half::bf16 => Bf16,
);

/// Converts a wire shape (signed) into dimensions, rejecting negatives.
pub fn dims_from_wire(shape: &[i64]) -> Result<Vec<usize>, TensorError> {
    shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| TensorError::NegativeDim {
                shape: shape.to_vec(),
            })
        })
        .collect()
}

/// Number of elements in a shape, or an error when it does not fit in memory's address space.
pub fn element_count(shape: &[usize]) -> Result<usize, TensorError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| TensorError::ShapeOverflow {
            shape: shape.iter().map(|&d| d as i64).collect(),
        })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    dtype: DataType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Tensor {
    /// Builds a tensor from raw row-major bytes, checking that they match the shape.
    /// BOOL bytes are normalised to 0/1.
    pub fn from_bytes(
        dtype: DataType,
        shape: Vec<usize>,
        mut data: Vec<u8>,
    ) -> Result<Self, TensorError> {
        let count = element_count(&shape)?;
        match dtype.size() {
            Some(size) => {
                let expected =
                    count
                        .checked_mul(size)
                        .ok_or_else(|| TensorError::ShapeOverflow {
                            shape: shape.iter().map(|&d| d as i64).collect(),
                        })?;
                if data.len() != expected {
                    return Err(TensorError::ByteLength {
                        dtype,
                        shape,
                        expected,
                        actual: data.len(),
                    });
                }
                if dtype == DataType::Bool {
                    for b in &mut data {
                        *b = (*b != 0) as u8;
                    }
                }
            }
            None => {
                let actual = count_byte_elements(&data)?;
                if actual != count {
                    return Err(TensorError::BytesCount {
                        shape,
                        expected: count,
                        actual,
                    });
                }
            }
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// Builds a tensor from typed values.
    pub fn from_vec<T: Element>(shape: Vec<usize>, values: Vec<T>) -> Result<Self, TensorError> {
        Self::from_bytes(T::DTYPE, shape, bytemuck::cast_slice(&values).to_vec())
    }

    /// Builds a BOOL tensor.
    pub fn from_bools(shape: Vec<usize>, values: &[bool]) -> Result<Self, TensorError> {
        Self::from_bytes(
            DataType::Bool,
            shape,
            values.iter().map(|&b| b as u8).collect(),
        )
    }

    /// Builds a BYTES tensor from its elements.
    pub fn from_byte_elements<B: AsRef<[u8]>>(
        shape: Vec<usize>,
        elements: &[B],
    ) -> Result<Self, TensorError> {
        let total: usize = elements.iter().map(|e| 4 + e.as_ref().len()).sum();
        let mut data = Vec::with_capacity(total);
        for e in elements {
            let e = e.as_ref();
            let len = u32::try_from(e.len()).map_err(|_| TensorError::ShapeOverflow {
                shape: vec![e.len() as i64],
            })?;
            data.extend_from_slice(&len.to_le_bytes());
            data.extend_from_slice(e);
        }
        Self::from_bytes(DataType::Bytes, shape, data)
    }

    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The shape as the protocol writes it.
    pub fn wire_shape(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d as i64).collect()
    }

    pub fn element_count(&self) -> usize {
        // Checked at construction.
        self.shape.iter().product()
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Self, TensorError> {
        let count = element_count(&shape)?;
        if count != self.element_count() {
            return Err(TensorError::Shape(format!(
                "cannot view {} elements as {shape:?}",
                self.element_count()
            )));
        }
        self.shape = shape;
        Ok(self)
    }

    /// Raw row-major bytes (BYTES in length-prefixed form).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// Copies the elements out as typed values.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        if self.dtype != T::DTYPE {
            return Err(TensorError::WrongType {
                expected: T::DTYPE,
                actual: self.dtype,
            });
        }
        Ok(bytemuck::pod_collect_to_vec(&self.data))
    }

    /// The elements of a BYTES tensor.
    pub fn byte_elements(&self) -> Result<Vec<&[u8]>, TensorError> {
        if self.dtype != DataType::Bytes {
            return Err(TensorError::WrongType {
                expected: DataType::Bytes,
                actual: self.dtype,
            });
        }
        split_byte_elements(&self.data)
    }
}

/// Joining requests into one batch and splitting a batch's results back.
impl Tensor {
    /// Rows of the first dimension (0 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Joins tensors along the first dimension. They must share the datatype and
    /// every dimension after the first.
    pub fn concat_batch(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
        let Some(first) = parts.first() else {
            return Err(TensorError::Batch("nothing to join".into()));
        };
        if first.shape.is_empty() {
            return Err(TensorError::Batch("a scalar has no batch dimension".into()));
        }
        let mut rows = 0usize;
        let mut bytes = 0usize;
        for p in parts {
            if p.dtype != first.dtype || p.shape.get(1..) != first.shape.get(1..) {
                return Err(TensorError::Batch(format!(
                    "{} {:?} does not fit {} {:?}",
                    p.dtype, p.shape, first.dtype, first.shape
                )));
            }
            rows += p.rows();
            bytes += p.data.len();
        }
        let mut data = Vec::with_capacity(bytes);
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Ok(Tensor {
            dtype: first.dtype,
            shape,
            data,
        })
    }

    /// Splits along the first dimension into consecutive pieces of `rows[i]` rows;
    /// `rows` must add up to the first dimension.
    pub fn split_batch(&self, rows: &[usize]) -> Result<Vec<Tensor>, TensorError> {
        let total: usize = rows.iter().sum();
        if self.shape.is_empty() || self.shape[0] != total {
            return Err(TensorError::Batch(format!(
                "shape {:?} does not have {total} rows along its first dimension",
                self.shape
            )));
        }
        let per_row: usize = self.shape[1..].iter().product();
        let mut out = Vec::with_capacity(rows.len());
        let mut offset = 0usize;
        for (i, &n) in rows.iter().enumerate() {
            let len = match self.dtype.size() {
                Some(size) => n * per_row * size,
                None => {
                    // Walk the length-prefixed elements of these rows.
                    let mut rest = &self.data[offset..];
                    let start = rest.len();
                    for k in 0..n * per_row {
                        rest = next_byte_element(rest, k)?.1;
                    }
                    start - rest.len()
                }
            };
            let mut shape = self.shape.clone();
            shape[0] = n;
            let data = self
                .data
                .get(offset..offset + len)
                .ok_or_else(|| TensorError::Batch(format!("piece {i} runs past the data")))?
                .to_vec();
            offset += len;
            out.push(Tensor {
                dtype: self.dtype,
                shape,
                data,
            });
        }
        Ok(out)
    }
}

fn count_byte_elements(data: &[u8]) -> Result<usize, TensorError> {
    let mut n = 0;
    let mut rest = data;
    while !rest.is_empty() {
        let (_, tail) = next_byte_element(rest, n)?;
        rest = tail;
        n += 1;
    }
    Ok(n)
}

/// The elements of BYTES tensor data: each a little-endian u32 length and its bytes.
pub fn split_byte_elements(data: &[u8]) -> Result<Vec<&[u8]>, TensorError> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (element, tail) = next_byte_element(rest, out.len())?;
        out.push(element);
        rest = tail;
    }
    Ok(out)
}

fn next_byte_element(data: &[u8], index: usize) -> Result<(&[u8], &[u8]), TensorError> {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return Err(TensorError::BytesTruncated {
            index,
            declared: 4,
            available: data.len(),
        });
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len > rest.len() {
        return Err(TensorError::BytesTruncated {
            index,
            declared: len,
            available: rest.len(),
        });
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_size_round_trip() {
        let t = Tensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(t.dtype(), DataType::Fp32);
        assert_eq!(t.data().len(), 24);
        assert_eq!(t.to_vec::<f32>().unwrap()[5], 6.0);
        assert!(t.to_vec::<i32>().is_err());
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let e = Tensor::from_bytes(DataType::Fp32, vec![2, 2], vec![0; 15]).unwrap_err();
        assert!(matches!(
            e,
            TensorError::ByteLength {
                expected: 16,
                actual: 15,
                ..
            }
        ));
    }

    #[test]
    fn overflowing_shape_is_an_error() {
        let e = Tensor::from_bytes(DataType::Fp32, vec![usize::MAX / 2, 3], vec![]).unwrap_err();
        assert!(matches!(e, TensorError::ShapeOverflow { .. }));
        // Element count fits, byte count does not.
        let e = Tensor::from_bytes(DataType::Fp64, vec![usize::MAX / 4], vec![]).unwrap_err();
        assert!(matches!(e, TensorError::ShapeOverflow { .. }));
        assert!(dims_from_wire(&[1, -2]).is_err());
    }

    #[test]
    fn bools_are_normalised() {
        let t = Tensor::from_bytes(DataType::Bool, vec![3], vec![0, 7, 1]).unwrap();
        assert_eq!(t.data(), &[0, 1, 1]);
    }

    #[test]
    fn byte_elements() {
        let t = Tensor::from_byte_elements(vec![3], &[&b"ab"[..], b"", b"xyz"]).unwrap();
        assert_eq!(t.data().len(), 4 * 3 + 5);
        let e = t.byte_elements().unwrap();
        assert_eq!(e, vec![&b"ab"[..], b"", b"xyz"]);
        // Wrong count.
        let e = Tensor::from_bytes(DataType::Bytes, vec![2], t.data().to_vec()).unwrap_err();
        assert!(matches!(
            e,
            TensorError::BytesCount {
                expected: 2,
                actual: 3,
                ..
            }
        ));
        // Truncated length prefix and truncated body.
        assert!(Tensor::from_bytes(DataType::Bytes, vec![1], vec![1, 0]).is_err());
        assert!(Tensor::from_bytes(DataType::Bytes, vec![1], vec![9, 0, 0, 0, 1]).is_err());
        // A huge declared length does not allocate.
        assert!(Tensor::from_bytes(DataType::Bytes, vec![1], vec![255, 255, 255, 255]).is_err());
    }

    #[test]
    fn half_types() {
        let t = Tensor::from_vec(
            vec![2],
            vec![half::f16::from_f32(1.5), half::f16::from_f32(-2.0)],
        )
        .unwrap();
        assert_eq!(t.dtype(), DataType::Fp16);
        let t = Tensor::from_vec(vec![1], vec![half::bf16::from_f32(3.0)]).unwrap();
        assert_eq!(t.to_vec::<half::bf16>().unwrap()[0].to_f32(), 3.0);
    }

    #[test]
    fn concat_and_split_batches() {
        let a = Tensor::from_vec(vec![1, 2], vec![1i32, 2]).unwrap();
        let b = Tensor::from_vec(vec![2, 2], vec![3i32, 4, 5, 6]).unwrap();
        let joined = Tensor::concat_batch(&[&a, &b]).unwrap();
        assert_eq!(joined.shape(), &[3, 2]);
        assert_eq!(joined.to_vec::<i32>().unwrap(), vec![1, 2, 3, 4, 5, 6]);
        let back = joined.split_batch(&[1, 2]).unwrap();
        assert_eq!(back, vec![a.clone(), b.clone()]);
        assert!(joined.split_batch(&[1, 1]).is_err());
        let c = Tensor::from_vec(vec![1, 3], vec![0i32; 3]).unwrap();
        assert!(Tensor::concat_batch(&[&a, &c]).is_err());
        let d = Tensor::from_vec(vec![1, 2], vec![0f32; 2]).unwrap();
        assert!(Tensor::concat_batch(&[&a, &d]).is_err());
        let scalar = Tensor::from_vec(vec![], vec![1i32]).unwrap();
        assert!(Tensor::concat_batch(&[&scalar]).is_err());
        assert!(scalar.split_batch(&[1]).is_err());
    }

    #[test]
    fn bytes_batches_split_on_element_boundaries() {
        let a = Tensor::from_byte_elements(vec![1, 2], &[&b"a"[..], b"bcd"]).unwrap();
        let b = Tensor::from_byte_elements(vec![2, 2], &[&b""[..], b"ef", b"g", b"hij"]).unwrap();
        let joined = Tensor::concat_batch(&[&a, &b]).unwrap();
        assert_eq!(joined.byte_elements().unwrap().len(), 6);
        assert_eq!(joined.split_batch(&[1, 2]).unwrap(), vec![a, b]);
    }
}
