//! Counts a `ModelInferRequest`'s repeated entries on the wire before prost
//! decodes it. prost allocates a struct per entry, and an entry can be two bytes
//! on the wire: an empty `inputs` entry becomes some 300 bytes of struct, so a
//! 64 MiB message of them would take gigabytes before Kiln saw it. The limits
//! are the protocol layer's, the same as REST's JSON decoder applies.
//!
//! A message this reader cannot follow is left to prost, which refuses it.

use kiln_protocol::{MAX_PARAMETERS, MAX_RANK, MAX_TENSORS};

/// Why a message was refused: the field and its limit.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany {
    pub field: &'static str,
    pub limit: usize,
}

impl std::fmt::Display for TooMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} has more than {} entries", self.field, self.limit)
    }
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const GROUP_START: u8 = 3;
const GROUP_END: u8 = 4;
const FIXED32: u8 = 5;

/// A field's number, wire type and, for length-delimited fields, its bytes.
struct Field<'a> {
    number: u64,
    wire: u8,
    body: &'a [u8],
}

/// The fields of one message, in order; `None` ends early on a malformed one.
struct Fields<'a> {
    rest: &'a [u8],
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, tail) = buf.split_first()?;
        *buf = tail;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

impl<'a> Fields<'a> {
    /// Skips a group's fields up to its end marker, groups nested to `depth`.
    fn skip_group(&mut self, number: u64, depth: u32) -> Option<()> {
        if depth == 0 {
            return None;
        }
        loop {
            let f = self.next_field(depth - 1)?;
            if f.wire == GROUP_END {
                return (f.number == number).then_some(());
            }
        }
    }

    fn next_field(&mut self, depth: u32) -> Option<Field<'a>> {
        let key = varint(&mut self.rest)?;
        let (number, wire) = (key >> 3, (key & 7) as u8);
        let mut body: &[u8] = &[];
        match wire {
            VARINT => {
                varint(&mut self.rest)?;
            }
            FIXED64 | FIXED32 => {
                let n = if wire == FIXED64 { 8 } else { 4 };
                self.rest = self.rest.get(n..)?;
            }
            LEN => {
                let len = usize::try_from(varint(&mut self.rest)?).ok()?;
                let (b, tail) = self.rest.split_at_checked(len)?;
                body = b;
                self.rest = tail;
            }
            GROUP_START => self.skip_group(number, depth)?,
            GROUP_END => {}
            _ => return None,
        }
        Some(Field { number, wire, body })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        // prost's own recursion limit is 100; groups deeper than that are
        // refused by it anyway.
        let f = self.next_field(100);
        if f.is_none() {
            self.rest = &[];
        }
        f
    }
}

fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { rest: buf }
}

/// One counter per limited field.
struct Count {
    field: &'static str,
    limit: usize,
    seen: usize,
}

impl Count {
    fn new(field: &'static str, limit: usize) -> Self {
        Count {
            field,
            limit,
            seen: 0,
        }
    }

    fn add(&mut self, n: usize) -> Result<(), TooMany> {
        self.seen = self.seen.saturating_add(n);
        if self.seen > self.limit {
            return Err(TooMany {
                field: self.field,
                limit: self.limit,
            });
        }
        Ok(())
    }
}

/// Checks a `ModelInferRequest`'s entry counts: parameters (4), inputs (5),
/// outputs (6) and raw_input_contents (7); in each input its shape (3) and
/// parameters (4); in each output its parameters (2).
pub fn check_infer_request(message: &[u8]) -> Result<(), TooMany> {
    let mut params = Count::new("parameters", MAX_PARAMETERS);
    let mut inputs = Count::new("inputs", MAX_TENSORS);
    let mut outputs = Count::new("outputs", MAX_TENSORS);
    let mut raw = Count::new("raw_input_contents", MAX_TENSORS);
    for f in fields(message) {
        match (f.number, f.wire) {
            (4, LEN) => params.add(1)?,
            (5, LEN) => {
                inputs.add(1)?;
                check_input(f.body)?;
            }
            (6, LEN) => {
                outputs.add(1)?;
                let mut p = Count::new("an output's parameters", MAX_PARAMETERS);
                for g in fields(f.body) {
                    if (g.number, g.wire) == (2, LEN) {
                        p.add(1)?;
                    }
                }
            }
            (7, LEN) => raw.add(1)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_input(input: &[u8]) -> Result<(), TooMany> {
    let mut shape = Count::new("an input's shape", MAX_RANK);
    let mut params = Count::new("an input's parameters", MAX_PARAMETERS);
    for f in fields(input) {
        match (f.number, f.wire) {
            // Packed: one element per varint's last byte.
            (3, LEN) => shape.add(f.body.iter().filter(|&&b| b < 0x80).count())?,
            (3, VARINT) => shape.add(1)?,
            (4, LEN) => params.add(1)?,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    use crate::pb::{InferParameter, ModelInferRequest};
    use prost::Message;

    fn request(inputs: usize, outputs: usize, raw: usize, rank: usize) -> Vec<u8> {
        ModelInferRequest {
            model_name: "m".into(),
            inputs: (0..inputs)
                .map(|_| InferInputTensor {
                    shape: vec![1; rank],
                    ..Default::default()
                })
                .collect(),
            outputs: (0..outputs)
                .map(|_| InferRequestedOutputTensor::default())
                .collect(),
            raw_input_contents: vec![vec![]; raw],
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn counts_each_repeated_field_against_its_limit() {
        assert_eq!(check_infer_request(&request(1024, 1024, 1024, 64)), Ok(()));
        let field = |m: &[u8]| check_infer_request(m).unwrap_err().field;
        assert_eq!(field(&request(1025, 0, 0, 1)), "inputs");
        assert_eq!(field(&request(0, 1025, 0, 1)), "outputs");
        assert_eq!(field(&request(0, 0, 1025, 1)), "raw_input_contents");
        assert_eq!(field(&request(1, 0, 0, 65)), "an input's shape");
        let params = |n: usize| {
            (0..n)
                .map(|i| (format!("p{i}"), InferParameter::default()))
                .collect()
        };
        let m = ModelInferRequest {
            parameters: params(257),
            ..Default::default()
        };
        assert_eq!(field(&m.encode_to_vec()), "parameters");
        let m = ModelInferRequest {
            inputs: vec![InferInputTensor {
                parameters: params(257),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(field(&m.encode_to_vec()), "an input's parameters");
        let m = ModelInferRequest {
            outputs: vec![InferRequestedOutputTensor {
                parameters: params(257),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(field(&m.encode_to_vec()), "an output's parameters");
    }

    #[test]
    fn unpacked_shapes_and_groups_are_followed() {
        // An input whose shape is sent unpacked, 65 varint fields.
        let mut input = Vec::new();
        for _ in 0..65 {
            input.extend_from_slice(&[3 << 3, 1]);
        }
        let mut m = vec![5 << 3 | 2];
        prost::encoding::encode_varint(input.len() as u64, &mut m);
        m.extend_from_slice(&input);
        assert_eq!(
            check_infer_request(&m).unwrap_err().field,
            "an input's shape"
        );
        // A group (field 9) holding a nested group, then 1,025 inputs: the
        // reader steps over the groups and still counts the inputs.
        let mut m = vec![9 << 3 | 3, 10 << 3 | 3, 10 << 3 | 4, 9 << 3 | 4];
        for _ in 0..1025 {
            m.extend_from_slice(&[5 << 3 | 2, 0]);
        }
        assert_eq!(check_infer_request(&m).unwrap_err().field, "inputs");
    }

    #[test]
    fn malformed_messages_are_left_to_prost() {
        let good = request(3, 1, 0, 2);
        for cut in 0..good.len() {
            assert_eq!(check_infer_request(&good[..cut]), Ok(()));
        }
        assert_eq!(check_infer_request(&[0xff; 16]), Ok(()));
        assert_eq!(check_infer_request(&[7 << 3 | 7]), Ok(()));
    }
}
