//! Element-wise conversion between protocol values (JSON numbers, gRPC typed
//! contents) and tensor bytes, with range checks that name what went wrong.

use crate::dtype::DataType;
use crate::tensor::{Tensor, TensorError};

/// One element as a protocol carries it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bytes(&'a [u8]),
}

/// Appends elements of one datatype to a tensor's bytes.
pub struct ElementWriter {
    dtype: DataType,
    buf: Vec<u8>,
    count: usize,
}

impl ElementWriter {
    pub fn new(dtype: DataType) -> Self {
        ElementWriter {
            dtype,
            buf: Vec::new(),
            count: 0,
        }
    }

    /// A writer with room for `bytes` bytes reserved. Callers bound `bytes` by
    /// what the request's own size can hold, never by a shape a client claims.
    pub fn with_capacity(dtype: DataType, bytes: usize) -> Self {
        ElementWriter {
            dtype,
            buf: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Appends a value; the error says why it does not fit the datatype.
    pub fn push(&mut self, v: Value<'_>) -> Result<(), String> {
        use DataType as D;
        let range =
            |what: &dyn std::fmt::Display| format!("{what} is out of range for {}", self.dtype);
        match (self.dtype, v) {
            (D::Bool, Value::Bool(b)) => self.buf.push(b as u8),
            (D::Bytes, Value::Bytes(b)) => {
                let len =
                    u32::try_from(b.len()).map_err(|_| "element longer than 4 GiB".to_string())?;
                self.buf.extend_from_slice(&len.to_le_bytes());
                self.buf.extend_from_slice(b);
            }
            (D::Fp16, v) => self
                .buf
                .extend_from_slice(&half::f16::from_f64(float(v, self.dtype)?).to_le_bytes()),
            (D::Bf16, v) => self
                .buf
                .extend_from_slice(&half::bf16::from_f64(float(v, self.dtype)?).to_le_bytes()),
            (D::Fp32, v) => self
                .buf
                .extend_from_slice(&(float(v, self.dtype)? as f32).to_le_bytes()),
            (D::Fp64, v) => self
                .buf
                .extend_from_slice(&float(v, self.dtype)?.to_le_bytes()),
            (d, Value::Int(i)) if d != D::Bool && d != D::Bytes => {
                let ok = match d {
                    D::Int8 => i8::try_from(i)
                        .map(|x| self.buf.extend_from_slice(&x.to_le_bytes()))
                        .is_ok(),
                    D::Int16 => i16::try_from(i)
                        .map(|x| self.buf.extend_from_slice(&x.to_le_bytes()))
                        .is_ok(),
                    D::Int32 => i32::try_from(i)
                        .map(|x| self.buf.extend_from_slice(&x.to_le_bytes()))
                        .is_ok(),
                    D::Int64 => {
                        self.buf.extend_from_slice(&i.to_le_bytes());
                        true
                    }
                    _ => match u64::try_from(i) {
                        Ok(u) => return self.push(Value::Uint(u)),
                        Err(_) => false,
                    },
                };
                if !ok {
                    return Err(range(&i));
                }
            }
            (d, Value::Uint(u)) if d != D::Bool && d != D::Bytes => {
                let ok = match d {
                    D::Uint8 => u8::try_from(u).map(|x| self.buf.push(x)).is_ok(),
                    D::Uint16 => u16::try_from(u)
                        .map(|x| self.buf.extend_from_slice(&x.to_le_bytes()))
                        .is_ok(),
                    D::Uint32 => u32::try_from(u)
                        .map(|x| self.buf.extend_from_slice(&x.to_le_bytes()))
                        .is_ok(),
                    D::Uint64 => {
                        self.buf.extend_from_slice(&u.to_le_bytes());
                        true
                    }
                    _ => match i64::try_from(u) {
                        Ok(i) => return self.push(Value::Int(i)),
                        Err(_) => false,
                    },
                };
                if !ok {
                    return Err(range(&u));
                }
            }
            (d, v) => return Err(format!("{} is not a {d} value", describe(v))),
        }
        self.count += 1;
        Ok(())
    }

    pub fn finish(self, shape: Vec<usize>) -> Result<Tensor, TensorError> {
        Tensor::from_bytes(self.dtype, shape, self.buf)
    }
}

fn float(v: Value<'_>, d: DataType) -> Result<f64, String> {
    match v {
        Value::Float(f) => Ok(f),
        Value::Int(i) => Ok(i as f64),
        Value::Uint(u) => Ok(u as f64),
        other => Err(format!("{} is not a {d} value", describe(other))),
    }
}

fn describe(v: Value<'_>) -> String {
    match v {
        Value::Bool(b) => format!("boolean {b}"),
        Value::Int(i) => format!("integer {i}"),
        Value::Uint(u) => format!("integer {u}"),
        Value::Float(f) => format!("number {f}"),
        Value::Bytes(_) => "a string".into(),
    }
}

/// Calls `f` on each element of a tensor, in row-major order.
pub fn for_each<'a, E>(
    t: &'a Tensor,
    mut f: impl FnMut(Value<'a>) -> Result<(), E>,
) -> Result<(), E> {
    use DataType as D;
    let d = t.data();
    macro_rules! each {
        ($t:ty, $n:expr, $wrap:expr) => {
            for c in d.chunks_exact($n) {
                let x = <$t>::from_le_bytes(c.try_into().expect("chunk size"));
                f($wrap(x))?;
            }
        };
    }
    match t.dtype() {
        D::Bool => {
            for &b in d {
                f(Value::Bool(b != 0))?;
            }
        }
        D::Uint8 => each!(u8, 1, |x| Value::Uint(x as u64)),
        D::Uint16 => each!(u16, 2, |x| Value::Uint(x as u64)),
        D::Uint32 => each!(u32, 4, |x| Value::Uint(x as u64)),
        D::Uint64 => each!(u64, 8, Value::Uint),
        D::Int8 => each!(i8, 1, |x| Value::Int(x as i64)),
        D::Int16 => each!(i16, 2, |x| Value::Int(x as i64)),
        D::Int32 => each!(i32, 4, |x| Value::Int(x as i64)),
        D::Int64 => each!(i64, 8, Value::Int),
        D::Fp16 => each!(half::f16, 2, |x: half::f16| Value::Float(x.to_f64())),
        D::Bf16 => each!(half::bf16, 2, |x: half::bf16| Value::Float(x.to_f64())),
        D::Fp32 => each!(f32, 4, |x| Value::Float(x as f64)),
        D::Fp64 => each!(f64, 8, Value::Float),
        D::Bytes => {
            // Checked at construction, so this cannot fail; stay total anyway.
            if let Ok(elements) = t.byte_elements() {
                for e in elements {
                    f(Value::Bytes(e))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(d: DataType, vals: &[Value<'_>]) -> Result<Tensor, String> {
        let mut w = ElementWriter::new(d);
        for &v in vals {
            w.push(v)?;
        }
        let n = w.count();
        w.finish(vec![n]).map_err(|e| e.to_string())
    }

    fn read(t: &Tensor) -> Vec<Value<'_>> {
        let mut out = Vec::new();
        for_each::<()>(t, |v| {
            out.push(v);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn ranges_are_checked() {
        assert!(write(DataType::Uint8, &[Value::Int(255)]).is_ok());
        assert!(write(DataType::Uint8, &[Value::Int(256)])
            .unwrap_err()
            .contains("out of range for UINT8"));
        assert!(write(DataType::Uint32, &[Value::Int(-1)])
            .unwrap_err()
            .contains("out of range"));
        assert!(write(DataType::Int8, &[Value::Int(-129)]).is_err());
        assert!(write(DataType::Int64, &[Value::Uint(u64::MAX)]).is_err());
        assert!(write(DataType::Int32, &[Value::Float(1.5)])
            .unwrap_err()
            .contains("not a INT32"));
        assert!(write(DataType::Bool, &[Value::Int(1)]).is_err());
        assert!(write(DataType::Fp32, &[Value::Bytes(b"x")]).is_err());
    }

    #[test]
    fn every_type_round_trips() {
        let cases: Vec<(DataType, Vec<Value<'_>>)> = vec![
            (DataType::Bool, vec![Value::Bool(true), Value::Bool(false)]),
            (DataType::Uint8, vec![Value::Uint(0), Value::Uint(255)]),
            (DataType::Uint16, vec![Value::Uint(65535)]),
            (DataType::Uint32, vec![Value::Uint(u32::MAX as u64)]),
            (DataType::Uint64, vec![Value::Uint(u64::MAX)]),
            (DataType::Int8, vec![Value::Int(-128), Value::Int(127)]),
            (DataType::Int16, vec![Value::Int(-32768)]),
            (DataType::Int32, vec![Value::Int(i32::MIN as i64)]),
            (DataType::Int64, vec![Value::Int(i64::MIN)]),
            (DataType::Fp16, vec![Value::Float(1.5), Value::Float(-0.25)]),
            (DataType::Bf16, vec![Value::Float(2.0)]),
            (DataType::Fp32, vec![Value::Float(3.25)]),
            (DataType::Fp64, vec![Value::Float(1e300)]),
            (
                DataType::Bytes,
                vec![Value::Bytes(b"hi"), Value::Bytes(b"")],
            ),
        ];
        for (d, vals) in cases {
            let t = write(d, &vals).unwrap();
            assert_eq!(read(&t), vals, "{d}");
        }
    }
}
