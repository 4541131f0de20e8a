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

use tokio_uring::net::TcpListener;

use super::Worker;
use super::teardown::ActiveConn;
use crate::config::Scheme;
use crate::reload::listeners::ListenerKey;
use crate::shutdown::Phase;

/// Accepts connections on the listener `key` until the drain, or until a reload
/// removes the listener (`removed` fires or its sender is dropped).
pub async fn accept_loop(
    listener: TcpListener,
    (key, scheme): (ListenerKey, Scheme),
    worker: Rc<Worker>,
    removed: tokio::sync::oneshot::Receiver<()>,
) {
    let mut shutdown = worker.shutdown.clone();
    let mut draining = std::pin::pin!(shutdown.reached(Phase::Draining));
    let mut removed = std::pin::pin!(removed);
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, peer)) => {
                    let generation = worker.generations.current();
                    let tls = generation.tls_for(&key);
                    if scheme == Scheme::Https && tls.is_none() {
                        // Accepted as a reload removed this TLS listener: never served
                        // as plain text.
                        drop(stream);
                        continue;
                    }
                    let active = ActiveConn::new(&worker.stats);
                    let listener = (scheme, tls, generation);
                    tokio_uring::spawn(super::serve(stream, peer, listener, worker.clone(), active));
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            () = &mut draining => break,
            _ = &mut removed => break,
        }
    }
    // Wakes the accept still in flight, and stops the kernel queueing connections here.
    crate::io::shutdown_quietly(&listener, std::net::Shutdown::Read);
    tracing::debug!(fd = listener.as_raw_fd(), "listener closed (draining, or removed by a reload)");
}
