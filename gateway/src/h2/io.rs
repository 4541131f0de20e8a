//! A TLS client connection as the `h2` crate wants it: tokio's `AsyncRead` and
//! `AsyncWrite` over [`TlsStream`], readiness from tokio's reactor ([`AsyncFd`] on the
//! socket) rather than the worker's poll ring, since `h2` polls instead of awaiting.
//!
//! Reads decrypt straight into `h2`'s buffer; writes encrypt into rustls's queue and
//! leave it for the socket when it has room. Must never block, nor report progress it
//! did not make (a write of 0 bytes is "wait", never success).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::io::RawSocket;
use crate::tls::TlsStream;

/// A TLS stream with tokio I/O traits. Owns the stream: dropping it deregisters the
/// socket from the reactor, then closes it.
pub struct H2Io {
    // Declared first: dropped (deregistered) before the socket closes.
    fd: AsyncFd<RawSocket>,
    tls: Box<TlsStream>,
}

impl H2Io {
    /// Registers the stream's socket with the reactor of the current runtime.
    pub fn new(tls: Box<TlsStream>) -> io::Result<Self> {
        let interest = tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE;
        // SAFETY: the socket is `tls`'s, which this struct owns and drops after `fd`
        // (field order), so it stays open and the same for as long as it is registered.
        let fd =
            unsafe { AsyncFd::register_with_interest(RawSocket::of(tls.tcp()), interest) }.map_err(io::Error::from)?;
        Ok(Self { fd, tls })
    }

    /// Writes queued records until none is left (`Ready`) or the socket is full.
    fn poll_send_queued(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            self.tls.send_queued_now()?;
            if !self.tls.wants_write() {
                return Poll::Ready(Ok(()));
            }
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            self.tls.send_queued_now()?;
            if self.tls.wants_write() {
                guard.clear_ready();
            }
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.tls.read_plain(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Nothing on the socket either: wait for it, and only then forget the
            // readiness (edge-triggered: a stale one is harmless, a lost one hangs).
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            match this.tls.read_records() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
                Ok(_) => {}
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let n = this.tls.queue_plain(data)?;
            // Hand what is queued to the socket now; a full socket is fine once taken.
            let sent = this.poll_send_queued(cx);
            if n > 0 || data.is_empty() {
                if let Poll::Ready(Err(e)) = sent {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(n));
            }
            // rustls's queue is full: room comes only as the socket drains it.
            ready!(sent)?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send_queued(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_queued(cx))?;
        this.tls.close_write();
        Poll::Ready(Ok(()))
    }
}
