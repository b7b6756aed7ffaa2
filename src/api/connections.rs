//! What clients' connections may hold: at most [`ConnectionLimits::max_open`] open at once
//! (one more is closed as soon as it is accepted, so its file descriptor goes back at once),
//! and [`ConnectionLimits::header_read_timeout`] to send a request's headers (a client that
//! trickles them, or sends none, is disconnected). Without them, half-sent requests stayed
//! open for ever, and under a low file-descriptor limit a few dozen of them made every
//! other request fail.

use axum_server::accept::Accept;
use std::future::{Ready, ready};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits on clients' connections (`serve --max-client-connections`,
/// `--header-read-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed when accepted.
    pub max_open: usize,
    /// Time a client has to send a request's headers (the first request's from when the
    /// connection is accepted).
    pub header_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// 1,024 connections (`serve` raises its open-files limit to the hard limit, and lowers
    /// the cap to fit beside its database pool when that is too low), 10 s for headers.
    fn default() -> Self {
        Self {
            max_open: 1024,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Runs `inner` for connections within the cap; closes the others at once.
#[derive(Debug, Clone)]
pub(super) struct CappedAcceptor<A> {
    inner: A,
    permits: Arc<Semaphore>,
}

impl<A> CappedAcceptor<A> {
    pub(super) fn new(inner: A, max_open: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max_open.max(1))),
        }
    }
}

impl<A, I, S> Accept<I, S> for CappedAcceptor<A>
where
    A: Accept<Capped<I>, S>,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future =
        futures_util::future::Either<A::Future, Ready<io::Result<(A::Stream, A::Service)>>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => futures_util::future::Either::Left(self.inner.accept(
                Capped {
                    stream,
                    _permit: permit,
                },
                service,
            )),
            Err(_) => {
                tracing::debug!("too many open client connections: closed a new one");
                futures_util::future::Either::Right(ready(Err(io::Error::other(
                    "too many open client connections",
                ))))
            }
        }
    }
}

/// A client's stream, holding its place under the cap until it is dropped.
#[derive(Debug)]
pub(super) struct Capped<I> {
    stream: I,
    _permit: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Capped<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Capped<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
