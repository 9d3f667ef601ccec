//! Server reflection (v1, and v1alpha for older tools), so that `grpcurl list`
//! and `grpcurl describe` work against Kiln: the V2 service and the health
//! service, as compiled from their `.proto` files.

use crate::authenticate::Authenticate;
use kiln_access::Access;
use std::sync::Arc;
use tonic_reflection::server::{v1, v1alpha, Builder, Error};

/// The V2 service's descriptors, compiled by build.rs.
const INFERENCE_DESCRIPTOR: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));

fn builder() -> Builder<'static> {
    Builder::configure()
        .register_encoded_file_descriptor_set(INFERENCE_DESCRIPTOR)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Both reflection services, behind Kiln's authentication (a server with keys
/// tells its services only to callers with one).
#[allow(clippy::type_complexity)]
pub fn services(
    access: &Arc<Access>,
) -> Result<
    (
        Authenticate<v1::ServerReflectionServer<impl v1::ServerReflection>>,
        Authenticate<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>>,
    ),
    Error,
> {
    Ok((
        Authenticate {
            inner: builder().build_v1()?,
            access: access.clone(),
        },
        Authenticate {
            inner: builder().build_v1alpha()?,
            access: access.clone(),
        },
    ))
}
