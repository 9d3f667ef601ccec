//! A gRPC ModelInferRequest as it comes off the wire: the entry-count check
//! Kiln's codec runs first, protobuf decoding, then Kiln's conversion to the
//! core's request. Whatever the count check lets through, prost must decode
//! within the same limits (the check cannot be fooled by a form prost reads).
#![no_main]
use kiln_protocol::{MAX_PARAMETERS, MAX_RANK, MAX_TENSORS};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if kiln_grpc::wire_limits::check_infer_request(data).is_err() {
        return;
    }
    let Ok(req) = kiln_grpc::pb::ModelInferRequest::decode(data) else {
        return;
    };
    assert!(req.inputs.len() <= MAX_TENSORS);
    assert!(req.outputs.len() <= MAX_TENSORS);
    assert!(req.raw_input_contents.len() <= MAX_TENSORS);
    assert!(req.parameters.len() <= MAX_PARAMETERS);
    for i in &req.inputs {
        assert!(i.shape.len() <= MAX_RANK);
        assert!(i.parameters.len() <= MAX_PARAMETERS);
    }
    for o in &req.outputs {
        assert!(o.parameters.len() <= MAX_PARAMETERS);
    }
    let held = kiln_grpc::convert::held_bytes(&req);
    if let Ok(r) = kiln_grpc::convert::request(req, None) {
        let total: usize = r.inputs.iter().map(|i| i.tensor.data().len()).sum();
        assert!(total <= held.max(data.len()) * 2 + 8);
    }
});
