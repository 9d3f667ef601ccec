//! A JSON tensor's `data`, decoded straight into the tensor's bytes.
//!
//! The elements are visited as serde reads them: no `serde_json::Value` tree is
//! built, so decoding needs the tensor's own bytes and nothing per element. Flat
//! and nested arrays are both accepted, in row-major order; reading stops at the
//! first element past what the shape allows.

use kiln_core::dtype::DataType;
use kiln_core::elements::{ElementWriter, Value};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use std::fmt;

/// Decodes `text`, the JSON of one input's `data`, into `count` elements of
/// `dtype`. The error names the element that did not fit.
pub fn decode(
    text: &str,
    dtype: DataType,
    count: usize,
) -> Result<ElementWriter, serde_json::Error> {
    let mut w = ElementWriter::with_capacity(dtype, reserve(text.len(), dtype, count));
    let mut de = serde_json::Deserializer::from_str(text);
    Elements {
        w: &mut w,
        limit: count,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(w)
}

/// Bytes to reserve: what `count` elements take, but no more than `text` could
/// hold (each element but the last needs at least a digit and a comma), so that
/// a shape claiming billions of elements reserves nothing it was not sent.
fn reserve(text_len: usize, dtype: DataType, count: usize) -> usize {
    let most = text_len / 2 + 1;
    match dtype.size() {
        Some(size) => count.min(most).saturating_mul(size),
        // BYTES: a 4-byte length per element, and no more content than the text.
        None => text_len.saturating_add(count.min(most).saturating_mul(4)),
    }
}

struct Elements<'w> {
    w: &'w mut ElementWriter,
    limit: usize,
}

impl Elements<'_> {
    fn push<E: de::Error>(self, v: Value<'_>) -> Result<(), E> {
        let at = self.w.count();
        if at >= self.limit {
            return Err(E::custom(format!(
                "data has more than the {} elements the shape allows",
                self.limit
            )));
        }
        self.w
            .push(v)
            .map_err(|m| E::custom(format!("element {at}: {m}")))
    }

    fn refuse<E: de::Error>(self, what: &str) -> Result<(), E> {
        Err(E::custom(format!(
            "element {}: {what} is not a value",
            self.w.count()
        )))
    }
}

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor elements (values or arrays of them)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let limit = self.limit;
        while seq
            .next_element_seed(Elements {
                w: &mut *self.w,
                limit,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.push(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<(), E> {
        self.push(Value::Int(i))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<(), E> {
        self.push(Value::Uint(u))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<(), E> {
        self.push(Value::Float(f))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.push(Value::Bytes(s.as_bytes()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.refuse("null")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.refuse("an object")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp32(text: &str, count: usize) -> Result<Vec<f32>, String> {
        let w = decode(text, DataType::Fp32, count).map_err(|e| e.to_string())?;
        let n = w.count();
        let t = w.finish(vec![n]).map_err(|e| e.to_string())?;
        t.to_vec::<f32>().map_err(|e| e.to_string())
    }

    #[test]
    fn flat_nested_and_mixed_depths() {
        assert_eq!(fp32("[1,2.5,-3]", 3).unwrap(), vec![1.0, 2.5, -3.0]);
        assert_eq!(fp32("[[1,2],[3,4]]", 4).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(fp32("[[1],2,[[3]]]", 3).unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(fp32(" [ ] ", 0).unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn fp64_text_decodes_to_the_nearest_double() {
        // Found by tests/codec_roundtrip.rs: serde_json's default float parser
        // is off by one unit in the last place for some shortest-form texts
        // (this one among them); its `float_roundtrip` feature is exact.
        let x = f64::from_le_bytes([119, 124, 23, 78, 7, 25, 125, 14]);
        let text = format!("[{}]", serde_json::to_string(&x).unwrap());
        let w = decode(&text, DataType::Fp64, 1).unwrap();
        let t = w.finish(vec![1]).unwrap();
        assert_eq!(
            t.to_vec::<f64>().unwrap()[0].to_bits(),
            x.to_bits(),
            "{text}"
        );
    }

    #[test]
    fn stops_at_the_first_element_past_the_shape() {
        let e = fp32("[1,2,3,{}]", 2).unwrap_err();
        assert!(e.contains("more than the 2 elements"), "{e}");
    }

    #[test]
    fn names_the_element_that_does_not_fit() {
        for (text, dtype, want) in [
            ("[1,null]", DataType::Fp32, "element 1: null is not a value"),
            ("[{\"a\":1}]", DataType::Fp32, "element 0: an object"),
            ("[1,300]", DataType::Uint8, "element 1: 300 is out of range"),
            (
                "[\"a\"]",
                DataType::Int32,
                "element 0: a string is not a INT32",
            ),
            ("[1.5]", DataType::Int64, "not a INT64"),
            ("[1] x", DataType::Int64, "trailing characters"),
        ] {
            let e = decode(text, dtype, 8).err().map(|e| e.to_string());
            let e = e.unwrap_or_default();
            assert!(e.contains(want), "{text}: {e:?} does not contain {want:?}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let text = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode(&text, DataType::Fp32, 1).is_err());
    }

    #[test]
    fn reserves_no_more_than_the_text_can_hold() {
        // A shape of 2^40 FP64 elements with a 5-byte body reserves 3 elements.
        assert_eq!(reserve(5, DataType::Fp64, 1 << 40), 3 * 8);
        assert_eq!(reserve(1000, DataType::Fp32, 10), 40);
        assert_eq!(reserve(10, DataType::Bytes, 1 << 40), 10 + 6 * 4);
    }
}
