//! Identifies each call's caller from its `authorization` metadata and its
//! connection's [`Peer`], before tonic reads and decodes its message: a call
//! without a known key (where the server requires keys) is answered
//! UNAUTHENTICATED at once, so that strangers cost no decoding. The caller goes
//! on in the request's extensions; each method checks its scope and model with
//! [`Access::permit`] once it knows the model.

use futures_util::future::Either;
use kiln_access::{Access, Caller, Credentials, Peer, Scope};
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::server::NamedService;

/// A gRPC service whose calls carry their [`Caller`].
#[derive(Clone)]
pub struct Authenticate<S> {
    pub inner: S,
    pub access: Arc<Access>,
}

impl<S: NamedService> NamedService for Authenticate<S> {
    const NAME: &'static str = S::NAME;
}

/// What a method needs before its message is read: health checks (V2's and
/// grpc.health.v1's) may need nothing; every other method needs a known key.
fn scope_of(path: &str) -> Scope {
    match path.rsplit('/').next() {
        Some("ServerLive" | "ServerReady" | "Check" | "Watch") => Scope::Health,
        _ => Scope::Infer,
    }
}

impl<S, B> Service<http::Request<B>> for Authenticate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let peer = req.extensions().get::<Peer>();
        let caller = self.access.identify(Credentials {
            authorization: req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            subject: peer.and_then(|p| p.subject.as_deref()),
            addr: peer.and_then(|p| p.addr).map(|a| a.ip()),
        });
        if let Err(e) = self
            .access
            .authenticated(&caller, scope_of(req.uri().path()))
        {
            return Either::Right(ready(Ok(crate::status(e).into_http())));
        }
        req.extensions_mut().insert(caller);
        Either::Left(self.inner.call(req))
    }
}

/// The caller [`Authenticate`] found (failing closed without it).
pub fn caller(extensions: &http::Extensions) -> Caller {
    extensions
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::unidentified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_checks_may_go_without_a_key() {
        let p = |m: &str| scope_of(&format!("/inference.GRPCInferenceService/{m}"));
        assert_eq!(p("ServerLive"), Scope::Health);
        assert_eq!(p("ServerReady"), Scope::Health);
        for m in ["ModelReady", "ModelInfer", "RepositoryModelLoad", "Nope"] {
            assert_eq!(p(m), Scope::Infer);
        }
        assert_eq!(scope_of("/grpc.health.v1.Health/Check"), Scope::Health);
        assert_eq!(scope_of("/grpc.health.v1.Health/Watch"), Scope::Health);
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert_eq!(scope_of(reflection), Scope::Infer);
    }
}
