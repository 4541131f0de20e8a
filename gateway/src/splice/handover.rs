//! Handover: turns a client socket and an upstream socket that just completed
//! the WebSocket handshake into a spliced pair, losing, duplicating and
//! reordering nothing.
//!
//! The order is the one measured in DESIGN.md: userspace first forwards every
//! client byte it has read and drains the client's receive queue to EAGAIN (a
//! socket must never enter the sockhash after a partial read); the upstream's
//! 101 stays queued (it was only peeked). Then the per-connection state and
//! the peer links are published, both sockets enter the sockhash, and
//! `SO_RCVLOWAT` makes the kernel run the verdict over bytes queued before
//! insertion. An skb that arrives while only one socket is in the sockhash is
//! passed to userspace, and the verdict keeps passing that direction until
//! supervision has forwarded it, so nothing overtakes it.
//!
//! Must never write to either socket after the state is published except
//! through the forwarding accounting of `backpressure`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use tokio_uring::net::TcpStream;

use super::SplicedPair;
use super::backpressure::write_all;
use super::shared::{DirField, Link, TO_CLIENT, TO_UPSTREAM};
use super::splicer::{Inner, Local};
use crate::close::Side;
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

/// A pair that is in the kernel: its slot and both cookies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inserted {
    pub slot: u32,
    pub client_cookie: u64,
    pub upstream_cookie: u64,
}

/// See [`WorkerPairs::splice`](super::WorkerPairs::splice).
pub(super) async fn splice(
    local: &Rc<Local>,
    client: TcpStream,
    upstream: TcpStream,
    client_early: Vec<u8>,
) -> Result<SplicedPair, HandoverError> {
    let (splicer, ring) = (&local.splicer, &local.ring);
    let counters = &splicer.inner.counters;
    let mut early = client_early.len() as u64;
    if let Err(source) = write_all(ring, upstream.as_raw_fd(), &client_early).await {
        counters.handover_failed.fetch_add(1, Ordering::Relaxed);
        return Err(HandoverError::Failed { side: Side::Upstream, source });
    }
    drop(client_early);
    match drain_client(ring, client.as_raw_fd(), upstream.as_raw_fd(), splicer.inner.budget).await {
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
    match insert_pair(&splicer.inner, client.as_raw_fd(), upstream.as_raw_fd()) {
        Ok(ins) => {
            counters.spliced.fetch_add(1, Ordering::Relaxed);
            counters.active.fetch_add(1, Ordering::Relaxed);
            Ok(SplicedPair::new(local.clone(), client, upstream, ins, early))
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

/// Bytes ever handed to `fd` to send: its peer's acknowledged bytes plus what is still
/// unacknowledged, read as a consistent pair (the two reads are repeated until no
/// acknowledgement came between them: one landing there would make the sum too small,
/// and the splice would then believe redirected bytes delivered before they are).
/// Nothing writes to `fd` meanwhile. Also checks the socket is still established.
fn written_so_far(fd: RawFd) -> Result<u64, InsertError> {
    let mut acked = crate::io::tcp_progress(&fd).map_err(InsertError::Failed)?;
    for _ in 0..16 {
        if acked.state != crate::io::TCP_ESTABLISHED {
            return Err(InsertError::NotSpliceable("a side is no longer established"));
        }
        let unacked = crate::io::unacked(&fd).map_err(InsertError::Failed)? as u64;
        let again = crate::io::tcp_progress(&fd).map_err(InsertError::Failed)?;
        if again.bytes_acked == acked.bytes_acked {
            return Ok(acked.bytes_acked + unacked);
        }
        acked = again;
    }
    Err(InsertError::NotSpliceable("acknowledgements kept arriving"))
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

/// Reads the client until EAGAIN, forwarding everything to the upstream. Usually
/// the queue is empty and one `recv` says so; the small buffer keeps that case free
/// of a large allocation.
async fn drain_client(ring: &Ring, client: RawFd, upstream: RawFd, limit: u64) -> Result<Drained, (Side, io::Error)> {
    let mut total = 0u64;
    let mut buf = [0u8; DRAIN_CHUNK];
    loop {
        match crate::io::recv(&client, &mut buf, 0) {
            Ok(0) => return Ok(Drained::Closed(total)),
            Ok(n) => {
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

pub(super) enum InsertError {
    NotSpliceable(&'static str),
    Failed(io::Error),
}

/// Publishes the state and links of a pair, inserts both sockets and kicks
/// them. Both receive queues must be untouched or drained to EAGAIN.
pub(super) fn insert_pair(inner: &Inner, client: RawFd, upstream: RawFd) -> Result<Inserted, InsertError> {
    // What each socket has been given to send so far (client, upstream), before the
    // program counts anything; also checks both are still established.
    let written = [written_so_far(client)?, written_so_far(upstream)?];
    let client_cookie = crate::io::cookie(&client).map_err(InsertError::Failed)?;
    let upstream_cookie = crate::io::cookie(&upstream).map_err(InsertError::Failed)?;
    let slot = inner.alloc_slot().ok_or(InsertError::NotSpliceable("splice capacity reached"))?;
    let ins = Inserted { slot, client_cookie, upstream_cookie };
    let result = publish_and_insert(inner, client, upstream, ins, written);
    if let Err(e) = result {
        let _ = crate::io::bpf::map_delete(inner.links_fd, &client_cookie);
        let _ = crate::io::bpf::map_delete(inner.links_fd, &upstream_cookie);
        inner.free_slot(slot);
        return Err(e);
    }
    Ok(ins)
}

/// `written`: [`written_so_far`] of the client and of the upstream.
fn publish_and_insert(
    inner: &Inner,
    client: RawFd,
    upstream: RawFd,
    ins: Inserted,
    written: [u64; 2],
) -> Result<(), InsertError> {
    // Everything written to a socket before this point was written by the handshake
    // or the userspace relay; the program counts only what follows.
    for (dir, written) in [(TO_UPSTREAM, written[1]), (TO_CLIENT, written[0])] {
        inner.dir_word(ins.slot, dir, DirField::AckedBase).store(written, Ordering::Release);
    }
    let to_upstream = Link { peer_cookie: ins.upstream_cookie, slot: ins.slot, dir: TO_UPSTREAM as u32 };
    let to_client = Link { peer_cookie: ins.client_cookie, slot: ins.slot, dir: TO_CLIENT as u32 };
    crate::io::bpf::map_update(inner.links_fd, &ins.client_cookie, &to_upstream, 0).map_err(InsertError::Failed)?;
    crate::io::bpf::map_update(inner.links_fd, &ins.upstream_cookie, &to_client, 0).map_err(InsertError::Failed)?;
    let client_fd = client.cast_unsigned();
    if let Err(e) =
        crate::io::bpf::map_update(inner.sock_hash_fd, &ins.client_cookie, &client_fd, crate::io::bpf::BPF_NOEXIST)
    {
        return Err(if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            InsertError::NotSpliceable("a side is no longer established")
        } else {
            InsertError::Failed(e)
        });
    }
    let upstream_fd = upstream.cast_unsigned();
    if let Err(e) =
        crate::io::bpf::map_update(inner.sock_hash_fd, &ins.upstream_cookie, &upstream_fd, crate::io::bpf::BPF_NOEXIST)
    {
        // The client is in already; taking it out again may discard bytes the
        // kernel passed to it meanwhile, so the pair is failed, not relayed.
        let _ = crate::io::bpf::map_delete(inner.sock_hash_fd, &ins.client_cookie);
        return Err(InsertError::Failed(e));
    }
    crate::io::set_rcvlowat(&client, 1).map_err(InsertError::Failed)?;
    crate::io::set_rcvlowat(&upstream, 1).map_err(InsertError::Failed)?;
    Ok(())
}

/// Removes the links of a pair and frees its slot, best after its sockets are closed.
/// Freed slots are reused last (first in, first out), long after any verdict that
/// looked the pair up before its links went.
pub(super) fn release(inner: &Inner, ins: Inserted) {
    let _ = crate::io::bpf::map_delete(inner.links_fd, &ins.client_cookie);
    let _ = crate::io::bpf::map_delete(inner.links_fd, &ins.upstream_cookie);
    inner.free_slot(ins.slot);
}
