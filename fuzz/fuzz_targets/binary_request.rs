//! Triton's binary tensor extension: the first two bytes choose the JSON
//! header's length (`Inference-Header-Content-Length`), the rest is the body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let header = u16::from_le_bytes([data[0], data[1]]) as usize;
    let body = &data[2..];
    if let Ok(d) = kiln_http::codec::decode_request("m".into(), None, body, Some(header)) {
        let total: usize = d.request.inputs.iter().map(|i| i.tensor.data().len()).sum();
        assert!(total <= 8 * body.len() + 8);
        for input in &d.request.inputs {
            let _ = input.tensor.byte_elements();
        }
    }
});
