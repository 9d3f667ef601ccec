//! Who sent a request: its `Authorization` header and its connection's peer
//! (address, verified client certificate), identified by the access control.

use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use kiln_access::{Caller, Credentials, Peer};
use std::convert::Infallible;

/// The caller of a request. Identifying never fails; each handler asks
/// [`AppState::permit`] what its endpoint needs of the caller.
pub struct Who(pub Caller);

impl FromRequestParts<AppState> for Who {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Infallible> {
        let peer = parts.extensions.get::<Peer>();
        let creds = Credentials {
            authorization: parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            subject: peer.and_then(|p| p.subject.as_deref()),
            addr: peer.and_then(|p| p.addr).map(|a| a.ip()),
        };
        Ok(Who(s.opts.access.identify(creds)))
    }
}
