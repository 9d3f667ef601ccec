//! Charges a call's incoming messages to the byte budget as they arrive, as
//! REST charges a body: each message's declared length (from its 5-byte gRPC
//! prefix) is charged when the prefix is read and held until the next message
//! begins or the call's body is dropped. tonic buffers a whole message before
//! decoding it, so without this a client that declares 60 MiB and trickles it
//! would hold that uncharged. Past the budget the call fails UNAVAILABLE
//! (RESOURCE_EXHAUSTED when one message alone is larger than the budget).
//! A message over the size limit is not charged: tonic refuses it from its
//! prefix, before buffering any of it.

use http_body::{Body, Frame, SizeHint};
use kiln_core::budget::{ByteBudget, Charge};
use kiln_core::KilnError;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tonic::codegen::http::Request;
use tonic::codegen::{Service, StdError};
use tonic::server::NamedService;

/// A gRPC service whose calls' request bodies are [`ChargedBody`]s.
#[derive(Clone)]
pub struct ChargeMessages<S> {
    pub inner: S,
    pub budget: ByteBudget,
    pub max_message_bytes: usize,
}

impl<S: NamedService> NamedService for ChargeMessages<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<Request<B>> for ChargeMessages<S>
where
    S: Service<Request<ChargedBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (budget, max) = (self.budget.clone(), self.max_message_bytes);
        self.inner
            .call(req.map(|body| ChargedBody::new(body, budget, max)))
    }
}

/// Length of gRPC's message prefix: a compression flag and a big-endian u32.
const PREFIX: usize = 5;

/// Follows the message prefixes in a call's byte stream.
#[derive(Debug, Default)]
struct Framing {
    prefix: [u8; PREFIX],
    prefix_read: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl Framing {
    /// Reads a chunk; returns the declared lengths of the messages it begins.
    fn read(&mut self, mut data: &[u8], mut begun: impl FnMut(usize)) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (PREFIX - self.prefix_read).min(data.len());
            self.prefix[self.prefix_read..self.prefix_read + n].copy_from_slice(&data[..n]);
            self.prefix_read += n;
            data = &data[n..];
            if self.prefix_read == PREFIX {
                self.prefix_read = 0;
                let [_, a, b, c, d] = self.prefix;
                self.remaining = u32::from_be_bytes([a, b, c, d]) as usize;
                begun(self.remaining);
            }
        }
    }
}

/// A request body whose messages are charged to the budget.
pub struct ChargedBody<B> {
    inner: B,
    budget: ByteBudget,
    max_message_bytes: usize,
    framing: Framing,
    charge: Option<Charge>,
}

impl<B> ChargedBody<B> {
    pub fn new(inner: B, budget: ByteBudget, max_message_bytes: usize) -> Self {
        ChargedBody {
            inner,
            budget,
            max_message_bytes,
            framing: Framing::default(),
            charge: None,
        }
    }

    /// Charges the messages a chunk begins (the latest one replaces the last).
    fn observe(&mut self, data: &[u8]) -> Result<(), KilnError> {
        let mut result = Ok(());
        let (budget, max, charge) = (&self.budget, self.max_message_bytes, &mut self.charge);
        self.framing.read(data, |len| {
            let len = if len > max { 0 } else { len };
            if result.is_ok() {
                result = match charge {
                    Some(c) => c.set(len),
                    None => budget.charge(len).map(|c| *charge = Some(c)),
                };
            }
        });
        result
    }
}

impl<B> Body for ChargedBody<B>
where
    B: Body<Data = prost::bytes::Bytes> + Unpin,
    B::Error: Into<StdError>,
{
    type Data = prost::bytes::Bytes;
    type Error = StdError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            if let Err(e) = this.observe(data) {
                // tonic finds the status in the error and answers with it.
                return Poll::Ready(Some(Err(Box::new(crate::status(e)))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.resize(PREFIX + len as usize, 7);
        m
    }

    #[test]
    fn prefixes_are_found_across_any_chunking() {
        let mut stream = message(3);
        stream.extend(message(0));
        stream.extend(message(300));
        for chunk in 1..=stream.len() {
            let mut f = Framing::default();
            let mut begun = Vec::new();
            for c in stream.chunks(chunk) {
                f.read(c, |l| begun.push(l));
            }
            assert_eq!(begun, vec![3, 0, 300], "chunks of {chunk}");
        }
    }

    #[test]
    fn the_latest_message_is_charged_until_the_body_is_dropped() {
        let budget = ByteBudget::new(1000);
        let mut b = ChargedBody::new((), budget.clone(), 900);
        b.observe(&message(400)[..10]).unwrap();
        assert_eq!(budget.used(), 400);
        // The next message replaces the charge.
        b.observe(&message(400)[10..]).unwrap();
        b.observe(&message(100)).unwrap();
        assert_eq!(budget.used(), 100);
        // Over the size limit: tonic refuses it, nothing is charged.
        b.observe(&message(950)[..PREFIX]).unwrap();
        assert_eq!(budget.used(), 0);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_spent_budget_refuses_the_message() {
        let budget = ByteBudget::new(1000);
        let _held = budget.charge(700).unwrap();
        let mut b = ChargedBody::new((), budget.clone(), usize::MAX);
        let e = b.observe(&message(400)[..PREFIX]).unwrap_err();
        assert_eq!(e.kind, kiln_core::ErrorKind::Unavailable);
        let mut b = ChargedBody::new((), budget.clone(), usize::MAX);
        let e = b.observe(&message(1001)[..PREFIX]).unwrap_err();
        assert_eq!(e.kind, kiln_core::ErrorKind::ResourceExhausted);
        assert_eq!(budget.used(), 700);
    }
}
