//! The REST JSON inference body: any bytes decode to a request or a clear
//! error, never a panic, and a decoded tensor's bytes never exceed what the
//! body could describe.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(d) = kiln_http::codec::decode_request("m".into(), None, body, None) {
        for input in &d.request.inputs {
            // A JSON element takes at least one byte of text; BYTES add a 4-byte length.
            assert!(input.tensor.data().len() <= 8 * body.len() + 8);
        }
    }
});
