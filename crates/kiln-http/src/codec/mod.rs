//! The V2 REST inference bodies: JSON tensors and Triton's binary tensor extension.

mod elements;
mod request;
mod response;

pub use request::{decode_request, param, Decoded, HEADER_LENGTH};
pub use response::encode_response;
