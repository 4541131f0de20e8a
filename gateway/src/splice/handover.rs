//! Handover: turns a client socket and an upstream socket that just completed
//! the WebSocket handshake into a spliced pair, losing, duplicating and
//! reordering nothing.
//!
//! The order is the one measured in DESIGN.md: userspace first forwards every
//! client byte it has read and drains the client's receive queue to EAGAIN (a
//! socket must never enter the sockhash after a partial read); the upstream's
//! queue is untouched or was read to a short read (its 101 went to the client
//! before, see `conn::relay_choice::Queued`). Then the per-connection state and
//! the peer links are published, both sockets enter the sockhash, and
//! `SO_RCVLOWAT` makes the kernel run the verdict over bytes queued before
//! insertion. An skb that arrives while only one socket is in the sockhash is
//! passed to userspace, and the verdict keeps passing that direction until
//! supervision has forwarded it, so nothing overtakes it.
//!
//! The WebSocket frame state of each direction (where the frames stand at the first
//! byte the program will see: after the client bytes forwarded here, after the
//! upstream's 101 head and what came with it) seeds the program's frame tracker.
//!
//! Returns the pair in the kernel ([`Pair`]) to its owner (`worker`). Must never
//! write to either socket after the state is published except through the
//! forwarding accounting of `backpressure`, and never park or supervise a pair.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

use tokio_uring::net::TcpStream;

use super::backpressure::write_all;
use super::kernel::{Inner, InsertError, Pair, insert_pair};
use crate::close::Side;
use crate::drain::FrameTracker;
use crate::readiness::Ring;

/// Read size while draining the client before insertion (on the handover's stack).
const DRAIN_CHUNK: usize = 4 * 1024;

/// Why a pair was not spliced.
#[derive(thiserror::Error)]
pub enum HandoverError {
    /// Nothing went to the kernel; the sockets are intact and every client byte
    /// read so far was forwarded to the upstream. Relay them in userspace.
    #[error("pair left to the userspace relay: {reason}")]
    NotSpliced {
        client: TcpStream,
        upstream: TcpStream,
        reason: &'static str,
        /// Client bytes forwarded to the upstream during the attempt.
        forwarded: u64,
    },
    /// A side failed during the handover; the sockets were closed.
    #[error("{side} failed during the splice handover: {source}")]
    Failed { side: Side, source: io::Error },
}

impl std::fmt::Debug for HandoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotSpliced { reason, forwarded, .. } => f
                .debug_struct("NotSpliced")
                .field("reason", reason)
                .field("forwarded", forwarded)
                .finish_non_exhaustive(),
            Self::Failed { side, source } => {
                f.debug_struct("Failed").field("side", side).field("source", source).finish()
            }
        }
    }
}

/// Hands a pair to the kernel; see [`WorkerPairs::splice`](super::WorkerPairs::splice).
pub(super) async fn splice(
    inner: &Inner,
    ring: &Ring,
    client: TcpStream,
    upstream: TcpStream,
    client_early: Vec<u8>,
    mut frames: [FrameTracker; 2],
) -> Result<Pair, HandoverError> {
    let counters = &inner.counters;
    frames[0].feed(&client_early);
    let mut early = client_early.len() as u64;
    if let Err(source) = write_all(ring, upstream.as_raw_fd(), &client_early).await {
        counters.handover_failed.fetch_add(1, Ordering::Relaxed);
        return Err(HandoverError::Failed { side: Side::Upstream, source });
    }
    drop(client_early);
    match drain_client(ring, client.as_raw_fd(), upstream.as_raw_fd(), inner.budget, &mut frames[0]).await {
        Ok(Drained::Empty(n)) => early += n,
        Ok(Drained::Closed(n)) => {
            counters.handover_failed.fetch_add(1, Ordering::Relaxed);
            let (reason, forwarded) = ("client already half-closed", early + n);
            return Err(HandoverError::NotSpliced { client, upstream, reason, forwarded });
        }
        Ok(Drained::Busy(n)) => {
            counters.handover_failed.fetch_add(1, Ordering::Relaxed);
            let (reason, forwarded) = ("client kept sending during the handover", early + n);
            return Err(HandoverError::NotSpliced { client, upstream, reason, forwarded });
        }
        Err((side, source)) => {
            counters.handover_failed.fetch_add(1, Ordering::Relaxed);
            return Err(HandoverError::Failed { side, source });
        }
    }
    // The pair is kept as plain fds from here on (a tokio-uring stream costs an
    // allocation each); its sockets are the same, so the sockhash sees no change.
    let (Ok(client), Ok(upstream)) = (crate::io::dup(&client), crate::io::dup(&upstream)) else {
        counters.handover_failed.fetch_add(1, Ordering::Relaxed);
        let (reason, forwarded) = ("out of file descriptors", early);
        return Err(HandoverError::NotSpliced { client, upstream, reason, forwarded });
    };
    match insert_pair(inner, client.as_raw_fd(), upstream.as_raw_fd(), frames) {
        Ok(ins) => {
            counters.spliced.fetch_add(1, Ordering::Relaxed);
            counters.active.fetch_add(1, Ordering::Relaxed);
            Ok(Pair { client, upstream, ins, early })
        }
        Err(InsertError::NotSpliceable(reason)) => {
            counters.handover_failed.fetch_add(1, Ordering::Relaxed);
            let stream = |fd: OwnedFd| TcpStream::from_std(std::net::TcpStream::from(fd));
            let (client, upstream) = (stream(client), stream(upstream));
            Err(HandoverError::NotSpliced { client, upstream, reason, forwarded: early })
        }
        Err(InsertError::Failed(source)) => {
            counters.handover_failed.fetch_add(1, Ordering::Relaxed);
            Err(HandoverError::Failed { side: Side::Internal, source })
        }
    }
}

/// How draining the client before insertion ended.
enum Drained {
    /// Receive queue empty (EAGAIN) after forwarding this many bytes.
    Empty(u64),
    /// The client sent FIN (after this many bytes): its socket can no longer enter the sockhash.
    Closed(u64),
    /// More than `limit` bytes and still no EAGAIN: a socket may only enter
    /// the sockhash with an untouched or empty queue, so the pair stays in
    /// userspace rather than relaying one direction here unaccounted.
    Busy(u64),
}

/// Reads the client until EAGAIN, forwarding everything to the upstream and following
/// its frames in `frames`. Usually the queue is empty and one `recv` says so; the
/// small buffer keeps that case free of a large allocation.
async fn drain_client(
    ring: &Ring,
    client: RawFd,
    upstream: RawFd,
    limit: u64,
    frames: &mut FrameTracker,
) -> Result<Drained, (Side, io::Error)> {
    let mut total = 0u64;
    let mut buf = [0u8; DRAIN_CHUNK];
    loop {
        match crate::io::recv(&client, &mut buf, 0) {
            Ok(0) => return Ok(Drained::Closed(total)),
            Ok(n) => {
                frames.feed(&buf[..n]);
                write_all(ring, upstream, &buf[..n]).await.map_err(|e| (Side::Upstream, e))?;
                total += n as u64;
                if total > limit {
                    return Ok(Drained::Busy(total));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Drained::Empty(total)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((Side::Client, e)),
        }
    }
}
