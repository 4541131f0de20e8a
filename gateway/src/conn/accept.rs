//! Phase 0, accept: runs on each worker for each of its SO_REUSEPORT listeners (and
//! each socket the service manager passed) from start-up until the drain. Takes a
//! connection from the kernel, counts it ([`ActiveConn`]), hands it the configuration
//! generation in force and spawns its life ([`super::serve`]) as a task of this
//! worker; on a TLS listener that life starts with the handshake (never here), with
//! that generation's certificates.
//!
//! Returns when the drain begins or a reload removes the listener, after shutting its
//! read side (which stops the kernel queueing connections on it; never a shared
//! socket's); when another process shut the listener; and at once when a binary
//! upgrade hands the listeners to a new process (whose socket it is then). Must never
//! read from a connection or wait on one: a slow client must not hold up the next
//! accept.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use std::net::SocketAddr;

use socket2::Socket;
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio_uring::net::TcpStream;

use super::Worker;
use super::teardown::ActiveConn;
use crate::config::Scheme;
use crate::io::RawSocket;
use crate::readiness;
use crate::reload::listeners::ListenerKey;
use crate::shutdown::Phase;

/// Accepts connections on the listener `key` until the drain, or until a reload
/// removes the listener (`removed` fires or its sender is dropped). The listener waits
/// for readiness on tokio's reactor, registered once for its life (on the poll ring if
/// that registration fails), and then accepts without blocking, up to
/// [`ACCEPT_BATCH`] at a time (as nginx does): an accept on io_uring completes through
/// task work, which interrupts the running worker with an IPI for each connection. In
/// a binary upgrade the new process accepts on the same socket: this loop then stops
/// at once, leaves what the kernel queued to the new process, and never shuts the
/// socket, which is the new process's now.
///
/// A `shared` socket is the service manager's (socket activation), one for every
/// worker: it waits on the worker's poll ring, every worker is woken at each
/// connection and takes one at a time (another may take it first), and its read side
/// is never shut (that would stop it for all of them and lose its queue across a
/// restart).
pub async fn accept_loop(
    listener: Socket,
    (key, scheme, shared): (ListenerKey, Scheme, bool),
    worker: Rc<Worker>,
    removed: tokio::sync::oneshot::Receiver<()>,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, fd = listener.as_raw_fd(), "cannot accept on a listener; closing it");
        if !shared {
            stop_listening(&listener, &worker);
        }
        return;
    }
    let ready = if shared { None } else { register(&listener) };
    // Asked at every wake: through the worker's hub, a comparison. A binary upgrade
    // (`Handing`, with connections passing) ends the loop at once; so does the drain.
    let mut phases = worker.events.phases();
    let mut until = Phase::Handing;
    let mut removed = std::pin::pin!(removed);
    // Since when accepts fail (no fds left): said once, and again once they work.
    let mut failing: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            phase = phases.reached(until) => {
                if phase == Phase::Handing && worker.upgrade.passing() {
                    tracing::debug!(fd = listener.as_raw_fd(), "listener handed to the new process");
                    return;
                }
                if phase >= Phase::Draining {
                    break;
                }
                // An upgrade that passes nothing: only the drain ends the loop.
                until = Phase::Draining;
            }
            _ = &mut removed => break,
            guard = readable(ready.as_ref(), &listener, &worker) => {
                let Ok(guard) = guard else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // A shared socket's connections go one per wake: every worker is woken.
                let most = if shared { 1 } else { ACCEPT_BATCH };
                let batch = accept_batch(&listener, (key, scheme), most, &worker);
                match (&batch, failing) {
                    (Batch::Failed(e), None) => {
                        tracing::warn!(error = %e, "accept failed; retrying every 10 ms, the connections stay queued");
                        failing = Some(std::time::Instant::now());
                    }
                    (Batch::Emptied | Batch::Full, Some(since)) => {
                        tracing::warn!(after_ms = since.elapsed().as_millis(), "accepting again");
                        failing = None;
                    }
                    // Still failing (said already), working as before, or ending.
                    _ => {}
                }
                match batch {
                    Batch::Emptied => {
                        if let Some(mut guard) = guard {
                            guard.clear_ready();
                        }
                    }
                    // More wait: the connections just started run first.
                    Batch::Full => tokio::task::yield_now().await,
                    // The connection stays queued for the next try.
                    Batch::Failed(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    Batch::Shut(e) => {
                        // Another process shut it (a binary upgrade's new configuration
                        // lacks it) or it is gone: nothing more can come.
                        tracing::debug!(error = %e, fd = listener.as_raw_fd(), "listener shut; accepting no more");
                        return;
                    }
                }
            }
        }
    }
    drop(ready);
    if !shared {
        stop_listening(&listener, &worker);
    }
    tracing::debug!(fd = listener.as_raw_fd(), shared, "listener closed (draining, or removed by a reload)");
}

/// Registers `listener` with tokio's reactor for readability (`None`, said, when that
/// fails: the loop then waits on the poll ring).
fn register(listener: &Socket) -> Option<AsyncFd<RawSocket>> {
    // SAFETY: the caller drops the registration before its listener, while the fd is
    // open and the same.
    match unsafe { AsyncFd::register_with_interest(RawSocket::of(listener), Interest::READABLE) } {
        Ok(ready) => Some(ready),
        Err(e) => {
            let e = std::io::Error::from(e);
            tracing::warn!(error = %e, "listener: epoll registration failed; waiting on the poll ring");
            None
        }
    }
}

/// Stops the kernel queueing connections on this worker's `listener`, unless the
/// listeners went to a new process in a binary upgrade (the socket is its now, and
/// shutting it would reset its queue there).
fn stop_listening(listener: &Socket, worker: &Worker) {
    if !worker.upgrade.listeners_moved() {
        crate::io::shutdown_quietly(listener, std::net::Shutdown::Read);
    }
}

/// Waits until `listener` is readable: on tokio's reactor (`ready`, whose guard the
/// caller clears once the queue is empty), or without it on the worker's poll ring.
async fn readable<'a>(
    ready: Option<&'a AsyncFd<RawSocket>>,
    listener: &Socket,
    worker: &Worker,
) -> std::io::Result<Option<AsyncFdReadyGuard<'a, RawSocket>>> {
    match ready {
        Some(ready) => ready.readable().await.map(Some),
        None => worker.ring.ready(listener, readiness::READABLE).await.map(|_| None),
    }
}

/// Connections accepted per wake of a listener before the worker turns to them.
const ACCEPT_BATCH: usize = 64;

/// How a batch of accepts ended.
enum Batch {
    /// The queue is empty (`EAGAIN`).
    Emptied,
    /// As many accepted as the batch takes, more may wait.
    Full,
    /// An accept failed for want of resources (`EMFILE`, `ENFILE`, `ENOBUFS`,
    /// `ENOMEM`) or was refused (`EPERM`), the connection still queued: back off
    /// briefly instead of spinning.
    Failed(std::io::Error),
    /// The socket listens no more (`EINVAL`: shut down) or is no socket.
    Shut(std::io::Error),
}

/// Accepts and starts up to `most` connections. A connection that failed before it
/// was taken (`ECONNABORTED`, and the network errors that accept(2) says to retry like
/// `EAGAIN`) is skipped.
fn accept_batch(listener: &Socket, (key, scheme): (ListenerKey, Scheme), most: usize, worker: &Rc<Worker>) -> Batch {
    for _ in 0..most {
        match crate::io::accept(listener) {
            Ok((stream, peer)) => {
                let Some(peer) = peer.as_socket() else { continue };
                start(TcpStream::from_std(stream.into()), peer, (key, scheme), worker);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Batch::Emptied,
            Err(e) => match e.raw_os_error() {
                // EPERM: a security module refused before taking the connection.
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EPERM) => {
                    return Batch::Failed(e);
                }
                Some(libc::EINVAL | libc::EBADF | libc::ENOTSOCK) => return Batch::Shut(e),
                // EINTR, and a connection's own error, which took it off the queue:
                // ECONNABORTED, EPROTO, ENETDOWN and the like.
                _ => {}
            },
        }
    }
    Batch::Full
}

/// Gives an accepted connection the generation in force and starts its life.
fn start(stream: TcpStream, peer: SocketAddr, (key, scheme): (ListenerKey, Scheme), worker: &Rc<Worker>) {
    let generation = worker.generations.current();
    let tls = generation.tls_for(&key);
    if scheme == Scheme::Https && tls.is_none() {
        // Accepted as a reload removed this TLS listener: never served as plain text.
        return;
    }
    let active = ActiveConn::new(&worker.stats);
    let listener = (scheme, tls, generation);
    // Boxed: a task's future is copied whole at the spawn and again as the task ends
    // (tokio writes its stage, sized as the future, on completion and when the output
    // is dropped); the connection's is 2 KiB, a box is a pointer. One copy into the box
    // instead of five of the whole future: a fifth of the handshake's `memcpy`.
    tokio_uring::spawn(Box::pin(super::serve(stream, peer, listener, worker.clone(), active)));
}
