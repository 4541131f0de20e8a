//! The userspace relay of a TLS pair: the client's records are decrypted into the
//! worker's pooled buffers and written to the upstream; the upstream's bytes are
//! read into pooled buffers and encrypted to the client. This kernel has no kTLS, so
//! a TLS pair never goes to the kernel splice.
//!
//! Same contract as [`crate::relay`]: each direction waits for readability holding no
//! buffer, reads what is there, and writes all of it before reading again, so a slow
//! reader stops the sender through TCP flow control (rustls buffers at most one
//! record of plaintext on the way in, and one pooled buffer's worth of records on the
//! way out). A FIN becomes `SHUT_WR` on the other side (towards the client after a
//! close_notify); a reset or a bad record is passed on as a reset; idle timeout and
//! the `Stop` phase end it with the same close reasons. Never closes the sockets.

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::pin::pin;
use std::time::Instant;

use tokio_uring::net::TcpStream;

use crate::bufpool::BufPool;
use crate::close::{Close, Side};
use crate::readiness::{self, Ring};
use crate::relay::{RelayOptions, RelayOutcome};
use crate::shutdown::{Phase, ShutdownRx};
use crate::tls::TlsStream;

/// How one direction ended.
enum PumpEnd {
    Eof,
    ReadFailed(io::Error),
    WriteFailed(io::Error),
}

/// Relays both ways until both directions finished, a reset, the idle timeout or
/// `Stop`. `opts.pause_after` and `end_on_upstream_fin` do not apply (a TLS pair is
/// never spliced; this relay carries WebSockets only).
pub async fn relay(
    client: &TlsStream,
    upstream: &TcpStream,
    opts: RelayOptions,
    shutdown: &mut ShutdownRx,
    ring: &Ring,
    buffers: &BufPool,
) -> RelayOutcome {
    let activity = Cell::new(Instant::now());
    let (c2u_bytes, u2c_bytes) = (Cell::new(0u64), Cell::new(0u64));
    let mut c2u = pin!(decrypting(client, upstream, &activity, &c2u_bytes, (ring, buffers)));
    let mut u2c = pin!(encrypting(upstream, client, &activity, &u2c_bytes, (ring, buffers)));
    let mut idle = pin!(tokio::time::sleep(opts.idle_timeout));
    let mut stop = pin!(shutdown.reached(Phase::Stop));
    let (mut c2u_done, mut u2c_done) = (false, false);
    let mut first_fin = None;
    let reason = loop {
        if c2u_done && u2c_done {
            break first_fin.unwrap_or(Close::ClientFin);
        }
        tokio::select! {
            end = &mut c2u, if !c2u_done => {
                c2u_done = true;
                match end {
                    PumpEnd::Eof => {
                        crate::io::shutdown_quietly(upstream, Shutdown::Write);
                        first_fin.get_or_insert(Close::ClientFin);
                    }
                    PumpEnd::ReadFailed(e) => break failed(&e, Side::Client, client, upstream),
                    PumpEnd::WriteFailed(e) => break failed(&e, Side::Upstream, client, upstream),
                }
            }
            end = &mut u2c, if !u2c_done => {
                u2c_done = true;
                match end {
                    PumpEnd::Eof => {
                        client.close_write();
                        first_fin.get_or_insert(Close::UpstreamFin);
                    }
                    PumpEnd::ReadFailed(e) => break failed(&e, Side::Upstream, client, upstream),
                    PumpEnd::WriteFailed(e) => break failed(&e, Side::Client, client, upstream),
                }
            }
            () = &mut idle => {
                let deadline = activity.get() + opts.idle_timeout;
                if deadline <= Instant::now() {
                    break Close::IdleTimeout;
                }
                idle.as_mut().reset(deadline.into());
            }
            () = &mut stop => break Close::Shutdown,
        }
    };
    if !(c2u_done && u2c_done) {
        // Wakes a write parked on a slow reader; the caller closes both sockets.
        crate::io::shutdown_quietly(client.tcp(), Shutdown::Both);
        crate::io::shutdown_quietly(upstream, Shutdown::Both);
    }
    RelayOutcome {
        client_to_upstream: c2u_bytes.get(),
        upstream_to_client: u2c_bytes.get(),
        reason,
        first_response: None,
        response_status: None,
        // Not followed: a TLS pair is never paused for the splice, and the drain closes
        // it at `Stop` (no Close 1001 through TLS yet).
        frames: opts.frames,
    }
}

/// The side `failed` broke the pair: the other side gets a reset on close.
fn failed(e: &io::Error, failed: Side, client: &TlsStream, upstream: &TcpStream) -> Close {
    let reason = Close::reset(failed);
    tracing::debug!(error = %e, side = reason.as_str(), "TLS relay ended");
    let other: &TcpStream = if failed == Side::Client { upstream } else { client.tcp() };
    if let Err(e) = crate::io::reset_on_close(other) {
        tracing::debug!(error = %e, "SO_LINGER on reset propagation");
    }
    reason
}

/// Client → upstream: decrypt what arrived, write it all, then read again.
async fn decrypting(
    client: &TlsStream,
    upstream: &TcpStream,
    activity: &Cell<Instant>,
    moved: &Cell<u64>,
    (ring, buffers): (&Ring, &BufPool),
) -> PumpEnd {
    loop {
        // Read until nothing is buffered nor queued, so the wait below is for the socket.
        loop {
            let mut buf = buffers.take();
            let n = match client.recv_into(&mut buf) {
                Ok(0) => {
                    buffers.put(buf);
                    return PumpEnd::Eof;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    buffers.put(buf);
                    break;
                }
                Err(e) => {
                    buffers.put(buf);
                    return PumpEnd::ReadFailed(e);
                }
            };
            activity.set(Instant::now());
            let (res, buf) = write_plain(upstream, buf).await;
            buffers.put(buf);
            if let Err(e) = res {
                return PumpEnd::WriteFailed(e);
            }
            moved.set(moved.get() + n as u64);
        }
        if let Err(e) = ring.ready(client.tcp(), readiness::READABLE).await {
            return PumpEnd::ReadFailed(e);
        }
    }
}

/// Upstream → client: read what is queued, encrypt and write it all, then read again.
async fn encrypting(
    upstream: &TcpStream,
    client: &TlsStream,
    activity: &Cell<Instant>,
    moved: &Cell<u64>,
    (ring, buffers): (&Ring, &BufPool),
) -> PumpEnd {
    loop {
        if let Err(e) = ring.ready(upstream, readiness::READABLE).await {
            return PumpEnd::ReadFailed(e);
        }
        loop {
            let mut buf = buffers.take();
            let capacity = buf.capacity();
            let n = match crate::io::recv_into(upstream, &mut buf) {
                Ok(0) => {
                    buffers.put(buf);
                    return PumpEnd::Eof;
                }
                Ok(n) => n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                    buffers.put(buf);
                    break;
                }
                Err(e) => {
                    buffers.put(buf);
                    return PumpEnd::ReadFailed(e);
                }
            };
            activity.set(Instant::now());
            let res = client.write_all(ring, &buf).await;
            buffers.put(buf);
            if let Err(e) = res {
                return PumpEnd::WriteFailed(e);
            }
            moved.set(moved.get() + n as u64);
            if n < capacity {
                break;
            }
        }
    }
}

/// Writes all of `buf` to a plain socket: at once when it fits, else by io_uring,
/// which waits for room.
async fn write_plain(to: &TcpStream, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    use tokio_uring::buf::BoundedBuf;
    let sent = match crate::io::send_now(to, &buf) {
        Ok(k) => k,
        Err(e) => return (Err(e), buf),
    };
    if sent == buf.len() {
        return (Ok(()), buf);
    }
    let (res, slice) = to.write_all(buf.slice(sent..)).await;
    (res, slice.into_inner())
}
