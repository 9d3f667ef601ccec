//! The service's protobuf codec: prost's, but an inference request's entry
//! counts are checked on the wire (`wire_limits`) before prost decodes it, so
//! that a message of many empty entries is refused instead of allocated.

use crate::pb::ModelInferRequest;
use kiln_core::KilnError;
use prost::Message;
use std::any::TypeId;
use std::marker::PhantomData;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// Named by the generated service and client (`codec_path` in build.rs).
#[derive(Debug, Clone)]
pub struct KilnCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for KilnCodec<T, U> {
    fn default() -> Self {
        KilnCodec(PhantomData)
    }
}

impl<T, U> Codec for KilnCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = KilnDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        KilnDecoder(PhantomData)
    }
}

#[derive(Debug)]
pub struct KilnDecoder<U>(PhantomData<U>);

impl<U: Message + Default + 'static> Decoder for KilnDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use prost::bytes::Buf;
        if TypeId::of::<U>() == TypeId::of::<ModelInferRequest>() {
            // tonic's decode buffer holds the whole message in one chunk; were
            // it ever split, the check would see a prefix and prost the rest.
            crate::wire_limits::check_infer_request(buf.chunk())
                .map_err(|e| crate::status(KilnError::invalid(e.to_string())))?;
        }
        // A message prost cannot read is INTERNAL, as tonic's own codec and
        // every gRPC library answer.
        U::decode(buf)
            .map(Some)
            .map_err(|e| crate::status(KilnError::internal(e.to_string())))
    }
}
