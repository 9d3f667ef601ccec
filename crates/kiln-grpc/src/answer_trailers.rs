//! What a gRPC answer's status and trailing metadata say, fixed up on the way
//! out (one wrapper, so that an answer's body is re-framed once):
//!
//! - the answer's [`Timing`](kiln_core::Timing), which a method leaves in the
//!   response's extensions as [`TrailingTiming`], becomes `server-timing`
//!   trailing metadata (REST's `Server-Timing` header);
//! - tonic answers OUT_OF_RANGE when a message is over the size limit, in either
//!   direction; gRPC's guide to status codes gives RESOURCE_EXHAUSTED for exactly
//!   that ("sent message larger than configured limit"), and it is what clients of
//!   other gRPC servers see. Kiln's own errors never use OUT_OF_RANGE, so this
//!   wrapper rewrites that code wherever a status travels: in the response's
//!   headers (a trailers-only answer, as when a request is too large) and in its
//!   trailers (a response too large, or a stream's message).

use http_body_util::BodyExt;
use std::task::{Context, Poll};
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// A unary answer's `server-timing` trailer value.
#[derive(Clone)]
pub struct TrailingTiming(pub HeaderValue);

/// A gRPC service whose size-limit statuses read RESOURCE_EXHAUSTED and whose
/// answers carry their timing.
#[derive(Clone)]
pub struct AnswerTrailers<S>(pub S);

impl<S: NamedService> NamedService for AnswerTrailers<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for AnswerTrailers<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let answer = self.0.call(req);
        Box::pin(async move {
            let (mut parts, body) = answer.await?.into_parts();
            rewrite(&mut parts.headers);
            let timing = parts.extensions.remove::<TrailingTiming>();
            let body = body.map_frame(move |mut frame| {
                if let Some(trailers) = frame.trailers_mut() {
                    rewrite(trailers);
                    if let Some(t) = &timing {
                        trailers.insert(kiln_protocol::SERVER_TIMING, t.0.clone());
                    }
                }
                frame
            });
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(body),
            ))
        })
    }
}

fn rewrite(headers: &mut HeaderMap) {
    if headers
        .get("grpc-status")
        .is_some_and(|v| v == OUT_OF_RANGE)
    {
        headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_out_of_range_is_rewritten() {
        for (code, want) in [("11", "8"), ("3", "3"), ("0", "0"), ("8", "8")] {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_static(code));
            rewrite(&mut h);
            assert_eq!(h["grpc-status"], want);
        }
        let mut none = HeaderMap::new();
        rewrite(&mut none);
        assert!(none.is_empty());
    }
}
