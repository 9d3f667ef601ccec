//! Accepting connections for both front ends: at most `max` open at once per
//! listener (one over it waits in the kernel's backlog until another closes),
//! TCP_NODELAY on each (small answers must not wait on Nagle's algorithm and
//! delayed ACKs), and a back-off when accepting fails for want of descriptors or
//! memory, which would otherwise fail again at once and spin a core. A
//! connection may also be given a read-idle timeout: closed once nothing has
//! arrived on it for that long.

use futures_util::Stream;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// How long the accept loop waits after a failure that is not one connection's.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Limits of one listener's connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// Close a connection nothing has arrived on for this long.
    pub read_idle: Option<Duration>,
}

/// An accepted connection; its slot is given back when it is dropped.
pub struct Conn {
    stream: TcpStream,
    idle: Option<ReadIdle>,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// The first byte the client sent, left unread (`None`: it closed first).
    pub async fn peek_first(&self) -> io::Result<Option<u8>> {
        let mut b = [0u8; 1];
        Ok((self.stream.peek(&mut b).await? == 1).then_some(b[0]))
    }
}

/// A connection's read-idle timeout. A read only notes the time; the timer is
/// moved on when it fires early, so that a busy connection costs a clock read
/// per read, not a timer-wheel update.
struct ReadIdle {
    limit: Duration,
    last_read: Instant,
    timer: Pin<Box<Sleep>>,
}

impl ReadIdle {
    fn new(limit: Duration) -> Self {
        ReadIdle {
            limit,
            last_read: Instant::now(),
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// Whether the connection has been idle for its limit (registering a wake-up
    /// for when it will have been, if not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let due = self.last_read + self.limit;
            if due <= Instant::now() {
                return true;
            }
            self.timer.as_mut().reset(due);
        }
        false
    }
}

/// Accepts connections from `listener` under `limits`, for ever.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
    what: &'static str,
) -> impl Stream<Item = io::Result<Conn>> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    futures_util::stream::unfold(
        (listener, slots, false),
        move |(listener, slots, mut full)| async move {
            let conn = accept(&listener, &slots, &mut full, limits, what).await;
            Some((Ok(conn), (listener, slots, full)))
        },
    )
}

/// Accepts one connection once a slot is free; `full` remembers that the
/// listener was found full, so that it is logged once, not per connection.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    full: &mut bool,
    limits: ConnLimits,
    what: &str,
) -> Conn {
    let slot = match slots.clone().try_acquire_owned() {
        Ok(slot) => {
            *full = false;
            slot
        }
        Err(_) => {
            if !*full {
                tracing::warn!(
                    "{what}: {} connections open, the most allowed (--max-connections); new ones wait",
                    limits.max_connections
                );
                *full = true;
            }
            slots
                .clone()
                .acquire_owned()
                .await
                .expect("the connection semaphore is never closed")
        }
    };
    let mut failing = false;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let idle = limits.read_idle.map(ReadIdle::new);
                return Conn {
                    stream,
                    idle,
                    _slot: slot,
                };
            }
            // One connection's trouble (reset before it was accepted): next.
            Err(e) if is_connection_error(&e) => {}
            // Out of descriptors or memory: wait for some to be freed.
            Err(e) => {
                if !failing {
                    tracing::error!("{what}: cannot accept connections ({e}); retrying every {ACCEPT_BACKOFF:?}");
                    failing = true;
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if let (Some(idle), true) = (&mut this.idle, buf.filled().len() > before) {
                    idle.last_read = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some(idle) = &mut this.idle {
                    if idle.expired(cx) {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("nothing arrived for {:?}", idle.limit),
                        )));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
