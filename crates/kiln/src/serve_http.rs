//! Serves an axum app over hyper's connection builder rather than `axum::serve`,
//! for the limits `axum::serve` does not offer: at most so many connections
//! (`listen`), and a time limit on a request's headers, counted from when the
//! connection opens or its previous answer was sent, so that it also closes a
//! keep-alive connection left idle. Each request carries its connection's
//! [`kiln_access::Peer`] as an extension, for the access control.

use crate::accept::Accepted;
use futures_util::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::watch;
use tower::ServiceExt;

pub async fn serve(
    incoming: Pin<Box<dyn Stream<Item = std::io::Result<Accepted>> + Send>>,
    app: axum::Router,
    header_read_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) -> anyhow::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    // Boxed, not pinned on the stack: dropping it must close the listener.
    let mut incoming = incoming;
    loop {
        let conn = tokio::select! {
            Some(Ok(conn)) = incoming.next() => conn,
            _ = stop.wait_for(|s| *s) => break,
        };
        let peer = conn.peer().clone();
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer.clone());
                req
            },
        ));
        let served = builder
            .serve_connection_with_upgrades(TokioIo::new(conn), service)
            .into_owned();
        let served = graceful.watch(served);
        tokio::spawn(async move {
            // A client that left, or timed out sending its headers: its business.
            if let Err(e) = served.await {
                tracing::debug!("{what} connection ended: {e}");
            }
        });
    }
    // No more connections; those open finish their requests, then close.
    drop(incoming);
    graceful.shutdown().await;
    Ok(())
}
