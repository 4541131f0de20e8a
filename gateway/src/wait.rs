//! How a relay pump waits for its source socket to turn readable: edge-triggered on
//! tokio's reactor, from its first wait (the poll ring only where the registration
//! failed).
//!
//! A wait on the poll ring registers nothing and holds nothing, but each one is a poll
//! armed and completed through io_uring task work, which reaches a sleeping worker by
//! interrupting its `epoll_wait` (`EINTR`) and then wakes it again through the ring's
//! fd, and reaches a running one with an inter-processor interrupt. On the development
//! VM that made a small message's round trip through the relay about twice nginx's and
//! cost more CPU per message, with four to six times nginx's reschedule interrupts. So
//! a pump registers its source socket once, edge-triggered, with tokio's reactor: no
//! re-arm per message and one direct wake, as nginx waits (then: nginx's interrupt
//! count, and a round trip and CPU per message within about 10 % of nginx's). It did so
//! only after its first eight reads, to spare a connect–upgrade–close exchange the
//! registration (two `epoll_ctl` per socket); but the interrupts of its first waits
//! cost more than that wherever interrupts are dear, as on a nested VM (the figures:
//! [`crate::readiness`]). The upstream's socket of a pair that will be relayed in
//! userspace is registered before its response head is waited for, and the relay's
//! upstream pump goes on with that registration (`conn::connect::Connected::waiter`).
//! A spliced pair holds no registration (its relay is gone).
//!
//! Must never outlive the socket it waits on: whoever holds a [`Waiter`] holds or is
//! lent its socket for longer than the waiter lives (a struct that holds both declares
//! the waiter first, so that it is dropped first).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::{Interest, Ready};
use tokio_uring::net::TcpStream;

use crate::io::RawSocket;
use crate::readiness::{self, Ring};

/// Readiness of a socket on tokio's reactor, to be forgotten once it is drained.
pub type Guard<'a> = Option<AsyncFdReadyGuard<'a, RawSocket>>;

/// One pump's way of waiting (see the module doc).
#[derive(Default)]
pub enum Waiter {
    #[default]
    Ring,
    Epoll(AsyncFd<RawSocket>),
}

impl Waiter {
    /// Moves to tokio's reactor (if the registration fails, keeps the ring).
    #[inline]
    pub fn settle(&mut self, socket: &TcpStream) {
        if matches!(self, Self::Ring) {
            self.register(socket);
        }
    }

    /// Registers `socket` with tokio's reactor (see [`Waiter::settle`]).
    #[cold]
    fn register(&mut self, socket: &TcpStream) {
        // SAFETY: whoever holds this waiter holds or is lent the socket for longer
        // than the waiter lives (see the module doc), so the fd stays open and the
        // same while registered.
        match unsafe { AsyncFd::register_with_interest(RawSocket::of(socket), Interest::READABLE) } {
            Ok(fd) => *self = Self::Epoll(fd),
            Err(e) => {
                let e = io::Error::from(e);
                tracing::debug!(error = %e, "relay: epoll registration failed; staying on the poll ring");
            }
        }
    }

    /// Waits until `socket` is readable. On tokio's reactor the guard must be told when
    /// the socket is drained ([`drained`]).
    pub async fn readable(&self, ring: &Ring, socket: &TcpStream) -> io::Result<Guard<'_>> {
        let mut pending = None;
        std::future::poll_fn(|cx| self.poll_readable(cx, (ring, &mut pending), socket)).await
    }

    /// Polls for `socket` to be readable, as [`Waiter::readable`] waits; a wait on the
    /// poll ring is kept in `pending` between polls (and cancelled when dropped).
    #[inline]
    pub fn poll_readable(
        &self,
        cx: &mut Context<'_>,
        (ring, pending): (&Ring, &mut Option<readiness::Ready>),
        socket: &TcpStream,
    ) -> Poll<io::Result<Guard<'_>>> {
        match self {
            Self::Ring => {
                let wait = pending.get_or_insert_with(|| ring.ready(socket, readiness::READABLE));
                let polled = std::task::ready!(Pin::new(wait).poll(cx));
                *pending = None;
                Poll::Ready(polled.map(|_| None))
            }
            // The reader's own waker slot, not `readable()`'s waiter list: no list
            // node to link and unlink per wait, and a pending poll of an idle pump
            // (polled whenever its relay is) is an atomic load and a waker compare.
            Self::Epoll(fd) => fd.poll_read_ready(cx).map(|polled| polled.map(Some)),
        }
    }
}

/// The socket has nothing more to read now: forget its readiness, so the next wait
/// lasts until new bytes come (edge-triggered: a stale readiness costs one `EAGAIN`, a
/// lost one would hang). A FIN already seen is kept (tokio never clears a closed state,
/// and only `READABLE` is asked to be cleared): no new edge follows it.
pub fn drained(guard: &mut Guard<'_>) {
    if let Some(g) = guard {
        g.clear_ready_matching(Ready::READABLE);
    }
}
