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
use tokio_uring::net::{TcpListener, TcpStream};

use super::Worker;
use super::teardown::ActiveConn;
use crate::config::Scheme;
use crate::readiness;
use crate::reload::listeners::ListenerKey;
use crate::shutdown::Phase;

/// Accepts connections on the listener `key` until the drain, or until a reload
/// removes the listener (`removed` fires or its sender is dropped). In a binary
/// upgrade the new process accepts on the same socket: this loop then submits no
/// further accept and serves what the one in flight takes (left in flight, it is
/// cancelled when the worker's ring closes, before it can take a connection nobody
/// serves), and never shuts the socket, which is the new process's now.
pub async fn accept_loop(
    listener: TcpListener,
    (key, scheme): (ListenerKey, Scheme),
    worker: Rc<Worker>,
    removed: tokio::sync::oneshot::Receiver<()>,
) {
    let mut shutdown = worker.shutdown.clone();
    let mut draining = std::pin::pin!(shutdown.reached(Phase::Draining));
    let mut handing = std::pin::pin!(worker.upgrade.handing(worker.shutdown.clone()));
    let mut removed = std::pin::pin!(removed);
    let mut accept = std::pin::pin!(listener.accept());
    let mut handed = false;
    loop {
        tokio::select! {
            res = &mut accept => {
                match res {
                    Ok((stream, peer)) => start(stream, peer, (key, scheme), &worker),
                    Err(e) if !handed => {
                        // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => {}
                }
                if handed {
                    return;
                }
                accept.set(listener.accept());
            }
            () = &mut handing, if !handed => handed = true,
            () = &mut draining, if !handed => break,
            _ = &mut removed, if !handed => break,
        }
    }
    // Wakes the accept still in flight, and stops the kernel queueing connections here.
    crate::io::shutdown_quietly(&listener, std::net::Shutdown::Read);
    tracing::debug!(fd = listener.as_raw_fd(), "listener closed (draining, or removed by a reload)");
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
