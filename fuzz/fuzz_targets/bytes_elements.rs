//! BYTES elements in their wire layout (a 4-byte little-endian length before
//! each): split into elements, or refused, never read past the end; whatever
//! splits re-encodes to the same bytes.
#![no_main]
use kiln_core::{DataType, Tensor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let count = data[0] as usize % 8;
    let Ok(t) = Tensor::from_bytes(DataType::Bytes, vec![count], data[1..].to_vec()) else {
        return;
    };
    if let Ok(elements) = t.byte_elements() {
        assert_eq!(elements.len(), count);
        let again = Tensor::from_byte_elements(vec![count], &elements).expect("re-encode");
        assert_eq!(again.data(), t.data());
    }
});
