//! Connections as the front ends receive them: plaintext, or TLS once its
//! handshake is done, each with its [`Peer`] (address, verified client
//! certificate's subject) for the access control.
//!
//! Handshakes run in tasks of their own, each within a time limit, so that a
//! slow or silent client holds up neither the accept loop nor anyone else; a
//! client speaking plaintext HTTP to a TLS port is told so in a plain 400
//! answer and the connection closed, any other plaintext is closed at once.

use crate::listen::Conn;
use crate::tls::{self, Listener, Tls};
use futures_util::{Stream, StreamExt};
use kiln_access::Peer;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

enum Io {
    Plain(Conn),
    Tls(Box<TlsStream<Conn>>),
}

/// A connection ready to serve.
pub struct Accepted {
    io: Io,
    peer: Peer,
}

impl Accepted {
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

/// TLS's first byte: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// What a plaintext HTTP client on a TLS port is told.
const NEEDS_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 56\r\n\r\n{\"error\": \"this port speaks TLS only: use an https URL\"}";

/// `incoming`'s connections, through TLS when `tls` is set.
pub fn secure(
    incoming: impl Stream<Item = io::Result<Conn>> + Send + 'static,
    tls: Option<(Arc<Tls>, Listener)>,
    handshake_timeout: Duration,
    what: &'static str,
) -> Pin<Box<dyn Stream<Item = io::Result<Accepted>> + Send>> {
    let Some((tls, listener)) = tls else {
        return Box::pin(incoming.map(|c| {
            c.map(|conn| Accepted {
                peer: Peer {
                    addr: conn.peer_addr(),
                    subject: None,
                },
                io: Io::Plain(conn),
            })
        }));
    };
    // Handshakes finish in any order; the channel hands them over as they do.
    // The accept loop ends (closing the listener) once the receiver is dropped.
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Accepted>>(64);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let conn = tokio::select! {
                _ = tx.closed() => break,
                c = incoming.next() => match c {
                    Some(Ok(c)) => c,
                    Some(Err(_)) => continue,
                    None => break,
                },
            };
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, handshake(conn, &tls, listener)).await
                {
                    Ok(Ok(accepted)) => {
                        let _ = tx.send(Ok(accepted)).await;
                    }
                    Ok(Err(e)) => tracing::debug!("{what}: TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(
                        "{what}: TLS handshake not done in {handshake_timeout:?}; closed"
                    ),
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

async fn handshake(conn: Conn, tls: &Tls, listener: Listener) -> io::Result<Accepted> {
    let addr = conn.peer_addr();
    match conn.peek_first().await? {
        Some(TLS_HANDSHAKE) => {}
        None => {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a handshake",
            ))
        }
        Some(_) => {
            let mut conn = conn;
            if listener == Listener::Http {
                let _ = conn.write_all(NEEDS_TLS).await;
                let _ = conn.shutdown().await;
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "plaintext on a TLS port",
            ));
        }
    }
    let stream = tokio_rustls::TlsAcceptor::from(tls.config(listener))
        .accept(conn)
        .await?;
    let subject = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(tls::subject);
    if let Some(subject) = &subject {
        tracing::debug!("TLS client certificate: {subject}");
    }
    Ok(Accepted {
        io: Io::Tls(Box::new(stream)),
        peer: Peer {
            addr,
            subject: subject.map(Arc::from),
        },
    })
}

macro_rules! each_io {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut $self.io {
            Io::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Io::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_io!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_io!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_io!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_io!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_io!(self, io => io.poll_shutdown(cx))
    }
}

/// tonic puts this in every request's extensions, where the access control
/// finds it.
impl tonic::transport::server::Connected for Accepted {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}
