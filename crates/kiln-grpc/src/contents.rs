//! `inference.InferTensorContents`, a tensor's typed form in a gRPC message,
//! written by hand instead of generated so that decoding it takes memory in
//! proportion to its wire size:
//! - `bytes_contents` is held flat, in the layout of Kiln's BYTES tensors (each
//!   element a little-endian u32 length and its bytes), and becomes the tensor
//!   without a copy. prost's `Vec<Vec<u8>>` took 24 bytes and an allocation per
//!   element: a 3-byte element on the wire held some 56 bytes.
//! - a packed numeric array is reserved at its exact element count before
//!   prost's pushes fill it, instead of growing by doubling to up to twice that.
//!
//! The wire format is protobuf's, packed and unpacked alike; encoding is
//! prost's own.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

#[derive(Clone, PartialEq, Default, Debug)]
pub struct InferTensorContents {
    pub bool_contents: Vec<bool>,
    pub int_contents: Vec<i32>,
    pub int64_contents: Vec<i64>,
    pub uint_contents: Vec<u32>,
    pub uint64_contents: Vec<u64>,
    pub fp32_contents: Vec<f32>,
    pub fp64_contents: Vec<f64>,
    pub bytes_contents: ByteElements,
}

/// BYTES elements back to back, each a little-endian u32 length and its bytes:
/// the data of a BYTES tensor.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct ByteElements {
    data: Vec<u8>,
    count: usize,
}

impl ByteElements {
    /// Appends one element. Elements are at most a gRPC message long (under
    /// 4 GiB: its length is a u32), so their length always fits the prefix.
    pub fn push(&mut self, element: &[u8]) {
        let len = u32::try_from(element.len()).unwrap_or(u32::MAX);
        self.data.put_u32_le(len);
        self.data.extend_from_slice(&element[..len as usize]);
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The elements, in order (the data is always whole: only `push` and
    /// `merge` write it).
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        kiln_core::tensor::split_byte_elements(&self.data)
            .unwrap_or_default()
            .into_iter()
    }

    /// Bytes held (the tensor's size once it becomes one).
    pub fn held_bytes(&self) -> usize {
        self.data.len()
    }

    /// The BYTES tensor data.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// Reads one length-delimited element from the wire. prost checks its
    /// length; from tonic's buffer it arrives as a slice of it, not a copy.
    fn merge(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let mut element = prost::bytes::Bytes::new();
        encoding::bytes::merge(wire_type, &mut element, buf, ctx)?;
        self.push(&element);
        Ok(())
    }
}

impl<E: AsRef<[u8]>> FromIterator<E> for ByteElements {
    fn from_iter<I: IntoIterator<Item = E>>(iter: I) -> Self {
        let mut out = ByteElements::default();
        for e in iter {
            out.push(e.as_ref());
        }
        out
    }
}

/// Reserves a packed field's exact element count before prost pushes them one
/// by one. `width` is the element's size for fixed-width types; varints are
/// counted by their last bytes (high bit clear). Only when the field lies in
/// one chunk (tonic's decode buffer is contiguous); otherwise prost grows it.
fn reserve_packed<T>(
    wire_type: WireType,
    values: &mut Vec<T>,
    buf: &impl Buf,
    width: Option<usize>,
) {
    if wire_type != WireType::LengthDelimited {
        return;
    }
    let mut peek = buf.chunk();
    let Ok(len) = encoding::decode_varint(&mut peek) else {
        return;
    };
    let Some(body) = usize::try_from(len).ok().and_then(|l| peek.get(..l)) else {
        return;
    };
    let count = match width {
        Some(w) => body.len() / w,
        None => body.iter().filter(|&&b| b < 0x80).count(),
    };
    values.reserve_exact(count);
}

impl prost::Message for InferTensorContents {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encoding::bool::encode_packed(1, &self.bool_contents, buf);
        encoding::int32::encode_packed(2, &self.int_contents, buf);
        encoding::int64::encode_packed(3, &self.int64_contents, buf);
        encoding::uint32::encode_packed(4, &self.uint_contents, buf);
        encoding::uint64::encode_packed(5, &self.uint64_contents, buf);
        encoding::float::encode_packed(6, &self.fp32_contents, buf);
        encoding::double::encode_packed(7, &self.fp64_contents, buf);
        for e in self.bytes_contents.iter() {
            encoding::encode_key(8, WireType::LengthDelimited, buf);
            encoding::encode_varint(e.len() as u64, buf);
            buf.put_slice(e);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        macro_rules! numeric {
            ($field:ident, $kind:ident, $width:expr) => {{
                reserve_packed(wire_type, &mut self.$field, buf, $width);
                encoding::$kind::merge_repeated(wire_type, &mut self.$field, buf, ctx)
            }};
        }
        match tag {
            1 => numeric!(bool_contents, bool, None),
            2 => numeric!(int_contents, int32, None),
            3 => numeric!(int64_contents, int64, None),
            4 => numeric!(uint_contents, uint32, None),
            5 => numeric!(uint64_contents, uint64, None),
            6 => numeric!(fp32_contents, float, Some(4)),
            7 => numeric!(fp64_contents, double, Some(8)),
            8 => self.bytes_contents.merge(wire_type, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let bytes: usize = self
            .bytes_contents
            .iter()
            .map(|e| encoding::key_len(8) + encoding::encoded_len_varint(e.len() as u64) + e.len())
            .sum();
        encoding::bool::encoded_len_packed(1, &self.bool_contents)
            + encoding::int32::encoded_len_packed(2, &self.int_contents)
            + encoding::int64::encoded_len_packed(3, &self.int64_contents)
            + encoding::uint32::encoded_len_packed(4, &self.uint_contents)
            + encoding::uint64::encoded_len_packed(5, &self.uint64_contents)
            + encoding::float::encoded_len_packed(6, &self.fp32_contents)
            + encoding::double::encoded_len_packed(7, &self.fp64_contents)
            + bytes
    }

    fn clear(&mut self) {
        *self = InferTensorContents::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn sample() -> InferTensorContents {
        InferTensorContents {
            bool_contents: vec![true, false, true],
            int_contents: vec![-1, 0, i32::MAX],
            int64_contents: vec![i64::MIN, 7],
            uint_contents: vec![u32::MAX, 1],
            uint64_contents: vec![u64::MAX],
            fp32_contents: vec![0.5, -2.25],
            fp64_contents: vec![1e300],
            bytes_contents: [&b"ab"[..], b"", b"\xff\x00"].into_iter().collect(),
        }
    }

    #[test]
    fn round_trips_and_reads_what_prost_would_write() {
        let c = sample();
        let wire = c.encode_to_vec();
        assert_eq!(wire.len(), c.encoded_len());
        assert_eq!(InferTensorContents::decode(&wire[..]).unwrap(), c);
        let e: Vec<&[u8]> = c.bytes_contents.iter().collect();
        assert_eq!(e, vec![&b"ab"[..], b"", b"\xff\x00"]);
        assert_eq!(c.bytes_contents.held_bytes(), 3 * 4 + 4);
    }

    #[test]
    fn unpacked_fields_and_repeats_merge_as_protobuf_says() {
        // int64_contents unpacked (two varint fields), then a packed run;
        // fp32 unpacked; an unknown field skipped.
        let mut wire = Vec::new();
        for v in [5u64, 6] {
            encoding::encode_key(3, WireType::Varint, &mut wire);
            encoding::encode_varint(v, &mut wire);
        }
        encoding::int64::encode_packed(3, &[7, 8], &mut wire);
        encoding::encode_key(6, WireType::ThirtyTwoBit, &mut wire);
        wire.extend_from_slice(&1.5f32.to_le_bytes());
        encoding::encode_key(99, WireType::Varint, &mut wire);
        encoding::encode_varint(1, &mut wire);
        let c = InferTensorContents::decode(&wire[..]).unwrap();
        assert_eq!(c.int64_contents, vec![5, 6, 7, 8]);
        assert_eq!(c.fp32_contents, vec![1.5]);
    }

    #[test]
    fn packed_arrays_are_sized_exactly() {
        let c = InferTensorContents {
            int64_contents: vec![0; 1000],
            fp64_contents: vec![0.0; 1000],
            ..Default::default()
        };
        let d = InferTensorContents::decode(&c.encode_to_vec()[..]).unwrap();
        assert_eq!(d.int64_contents.capacity(), 1000);
        assert_eq!(d.fp64_contents.capacity(), 1000);
    }

    #[test]
    fn truncated_and_lying_lengths_are_errors() {
        let wire = sample().encode_to_vec();
        for cut in 1..wire.len() {
            // Every prefix either decodes (it ended on a field boundary) or is
            // an error; none panics.
            let _ = InferTensorContents::decode(&wire[..cut]);
        }
        // A bytes element claiming 2^40 bytes.
        let mut lying = Vec::new();
        encoding::encode_key(8, WireType::LengthDelimited, &mut lying);
        encoding::encode_varint(1 << 40, &mut lying);
        lying.extend_from_slice(b"abc");
        assert!(InferTensorContents::decode(&lying[..]).is_err());
        // bytes_contents sent as a varint.
        let mut wrong = Vec::new();
        encoding::encode_key(8, WireType::Varint, &mut wrong);
        encoding::encode_varint(1, &mut wrong);
        assert!(InferTensorContents::decode(&wrong[..]).is_err());
    }
}
