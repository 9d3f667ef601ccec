//! A gRPC ModelInferRequest as it comes off the wire: protobuf decoding, then
//! Kiln's conversion to the core's request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = kiln_grpc::pb::ModelInferRequest::decode(data) else {
        return;
    };
    let held = kiln_grpc::convert::held_bytes(&req);
    if let Ok(r) = kiln_grpc::convert::request(req, None) {
        let total: usize = r.inputs.iter().map(|i| i.tensor.data().len()).sum();
        assert!(total <= held.max(data.len()) * 2 + 8);
    }
});
