//! Phase 0, accept: runs on each worker for each of its SO_REUSEPORT listeners from
//! start-up until the drain. Takes a connection from the kernel, counts it
//! ([`ActiveConn`]), hands it the configuration generation in force and spawns its
//! life ([`super::serve`]) as a task of this worker; on a TLS listener that life
//! starts with the handshake (never here), with that generation's certificates.
//!
//! Returns when the drain begins, after shutting the listener's read side (which stops
//! the kernel queueing connections on it). Must never read from a connection or wait
//! on one: a slow client must not hold up the next accept.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use std::net::SocketAddr;

use socket2::Socket;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
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
/// for readiness on tokio's reactor, registered once for its life, and then accepts
/// without blocking, up to [`ACCEPT_BATCH`] at a time (as nginx does): an accept on
/// io_uring completes through task work, which interrupts the running worker with an
/// IPI for each connection. In a binary upgrade the new process accepts on the same
/// socket: this loop then stops at once, leaves what the kernel queued to the new
/// process, and never shuts the socket, which is the new process's now.
pub async fn accept_loop(
    listener: Socket,
    (key, scheme): (ListenerKey, Scheme),
    worker: Rc<Worker>,
    removed: tokio::sync::oneshot::Receiver<()>,
) {
    let readiness = listener.set_nonblocking(true).and_then(|()| {
        // SAFETY: the registration is a local of this function and the listener its
        // parameter: it is dropped first, while the fd is open and the same.
        unsafe { AsyncFd::register_with_interest(RawSocket::of(&listener), Interest::READABLE) }
            .map_err(std::io::Error::from)
    });
    let ready = match readiness {
        Ok(ready) => ready,
        Err(e) => {
            tracing::error!(error = %e, fd = listener.as_raw_fd(), "cannot wait for connections on a listener");
            return;
        }
    };
    let mut shutdown = worker.shutdown.clone();
    let mut draining = std::pin::pin!(shutdown.reached(Phase::Draining));
    let mut handing = std::pin::pin!(worker.upgrade.handing(worker.shutdown.clone()));
    let mut removed = std::pin::pin!(removed);
    // Since when accepts fail (no fds left): said once, and again once they work.
    let mut failing: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            () = &mut handing => {
                tracing::debug!(fd = listener.as_raw_fd(), "listener handed to the new process");
                return;
            }
            () = &mut draining => break,
            _ = &mut removed => break,
            guard = ready.readable() => {
                let Ok(mut guard) = guard else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let batch = accept_batch(&listener, (key, scheme), &worker);
                match (&batch, failing) {
                    (Batch::Failed(e), None) => {
                        tracing::warn!(error = %e, "accept failed; retrying every 10 ms, the connections stay queued");
                        failing = Some(std::time::Instant::now());
                    }
                    (Batch::Emptied | Batch::Full, Some(since)) => {
                        tracing::warn!(after_ms = since.elapsed().as_millis(), "accepting again");
                        failing = None;
                    }
                    // Still failing (said already), or working as before.
                    _ => {}
                }
                match batch {
                    Batch::Emptied => guard.clear_ready(),
                    // More wait: the connections just started run first.
                    Batch::Full => {
                        drop(guard);
                        tokio::task::yield_now().await;
                    }
                    // The connection stays queued for the next try.
                    Batch::Failed(_) => {
                        drop(guard);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }
    // Stops the kernel queueing connections here.
    drop(ready);
    crate::io::shutdown_quietly(&listener, std::net::Shutdown::Read);
    tracing::debug!(fd = listener.as_raw_fd(), "listener closed (draining, or removed by a reload)");
}

/// Connections accepted per wake of a listener before the worker turns to them.
const ACCEPT_BATCH: usize = 64;

/// How a batch of accepts ended.
enum Batch {
    /// The queue is empty (`EAGAIN`).
    Emptied,
    /// [`ACCEPT_BATCH`] accepted, more may wait.
    Full,
    /// An accept failed (no fds left: `EMFILE`, `ENFILE`, `ENOBUFS`): back off briefly
    /// instead of spinning.
    Failed(std::io::Error),
}

/// Accepts and starts up to [`ACCEPT_BATCH`] connections.
fn accept_batch(listener: &Socket, (key, scheme): (ListenerKey, Scheme), worker: &Rc<Worker>) -> Batch {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((stream, peer)) => {
                let Some(peer) = peer.as_socket() else { continue };
                start(TcpStream::from_std(stream.into()), peer, (key, scheme), worker);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Batch::Emptied,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Batch::Failed(e),
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
    tokio_uring::spawn(super::serve(stream, peer, listener, worker.clone(), active));
}

/// [`accept_loop`] for a socket the service manager passed (socket activation), which
/// every worker and the service manager share. Its read side is never shut (that would
/// stop it for all of them and lose its queue across a restart), and no accept is left
/// in flight at the end (it would take a connection nobody serves): it waits for
/// readiness on the worker's poll ring (cancelled when dropped) and then accepts
/// without blocking; another worker may have taken the connection first.
pub async fn accept_shared_loop(
    listener: Socket,
    (key, scheme): (ListenerKey, Scheme),
    worker: Rc<Worker>,
    removed: tokio::sync::oneshot::Receiver<()>,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "cannot accept from the service manager's socket");
        return;
    }
    let mut shutdown = worker.shutdown.clone();
    let mut draining = std::pin::pin!(shutdown.reached(Phase::Draining));
    let mut handing = std::pin::pin!(worker.upgrade.handing(worker.shutdown.clone()));
    let mut removed = std::pin::pin!(removed);
    loop {
        tokio::select! {
            ready = worker.ring.ready(&listener, readiness::READABLE) => {
                if ready.is_err() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                match listener.accept() {
                    Ok((s, peer)) => {
                        let Some(peer) = peer.as_socket() else { continue };
                        start(TcpStream::from_std(s.into()), peer, (key, scheme), &worker);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            () = &mut draining => break,
            _ = &mut removed => break,
            // A binary upgrade: the new process accepts from it now.
            () = &mut handing => break,
        }
    }
    tracing::debug!(fd = listener.as_raw_fd(), "stopped accepting on the service manager's socket");
}
