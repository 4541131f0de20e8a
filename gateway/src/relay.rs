//! The userspace relay: both directions of a proxied connection on io_uring.
//!
//! Each direction waits for readability on the poll ring (no buffer held), then
//! borrows a buffer from the worker's pool, takes what is queued with one non-blocking
//! `recv` (the data is known to be there, so an io_uring read would only add a
//! completion round trip), and writes it all to the other side before reading again:
//! with one non-blocking `send` when it fits, else with an io_uring write that waits
//! for room, so a slow reader stops the sender through
//! TCP flow control and nothing is buffered beyond one buffer per moving direction.
//! A FIN becomes `shutdown(SHUT_WR)` on the other side (the other direction keeps
//! flowing); a reset is passed on as a reset. The relay never closes the sockets: the
//! caller owns them and closes them after [`relay`] returns. When the admin plane is on,
//! what it moves is published as it goes ([`RelayBytes`]: two relaxed stores per
//! message, nothing else).

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::pin::pin;
use std::time::{Duration, Instant};

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::bufpool::BufPool;
use crate::close::{Close, Side};
use crate::metrics::live::RelayBytes;
use crate::readiness::{self, Ring};
use crate::shutdown::{Phase, ShutdownRx};

/// What a relay moved and why it stopped.
#[derive(Debug, Clone, Copy)]
pub struct RelayOutcome {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
    pub reason: Close,
    /// When the upstream's first bytes arrived.
    pub first_response: Option<Instant>,
    /// The status code of an HTTP response at the start of the upstream's bytes.
    pub response_status: Option<u16>,
}

/// How one relay behaves.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    pub idle_timeout: Duration,
    /// Plain HTTP: once the upstream has finished its response (FIN), the exchange is
    /// over and the client is closed too, instead of waiting for the client's FIN.
    pub end_on_upstream_fin: bool,
    /// Stop with [`Close::Paused`] at the first quiet moment after this long.
    pub pause_after: Option<Duration>,
}

/// How soon a pause is tried again when bytes were in flight.
const PAUSE_RETRY: Duration = Duration::from_millis(20);

/// How one direction ended.
enum PumpEnd {
    /// The source sent FIN.
    Eof,
    /// Reading the source failed (reset).
    ReadFailed(io::Error),
    /// Writing the destination failed (reset, or it closed its read side).
    WriteFailed(io::Error),
}

/// Relays bytes both ways until both directions finished, a reset, the idle timeout,
/// the `Stop` phase, or a pause (`opts.pause_after`). Unless paused, both sockets are
/// shut down (not closed) on return, which also completes any io_uring operation
/// still in flight on them; a pause returns only when nothing is in flight.
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    opts: RelayOptions,
    shutdown: &mut ShutdownRx,
    (ring, buffers, live): (&Ring, &BufPool, Option<&RelayBytes>),
) -> RelayOutcome {
    let activity = Cell::new(Instant::now());
    let (c2u_bytes, u2c_bytes) = (Cell::new(0u64), Cell::new(0u64));
    let first = Cell::new(None);
    // Directions holding bytes they have read and not yet written.
    let holding = Cell::new(0u32);
    let mut c2u =
        pin!(pump(client, upstream, &activity, (&c2u_bytes, live.map(|l| (l, 0))), None, &holding, (ring, buffers)));
    let mut u2c = pin!(pump(
        upstream,
        client,
        &activity,
        (&u2c_bytes, live.map(|l| (l, 1))),
        Some(&first),
        &holding,
        (ring, buffers)
    ));
    let mut idle = pin!(tokio::time::sleep(opts.idle_timeout));
    let mut pause = pin!(tokio::time::sleep(opts.pause_after.unwrap_or(Duration::MAX)));
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
                if let Some(reason) = settle(end, client, upstream, Side::Client) {
                    break reason;
                }
                first_fin.get_or_insert(Close::ClientFin);
            }
            end = &mut u2c, if !u2c_done => {
                u2c_done = true;
                if let Some(reason) = settle(end, upstream, client, Side::Upstream) {
                    break reason;
                }
                first_fin.get_or_insert(Close::UpstreamFin);
                if opts.end_on_upstream_fin {
                    break Close::Done;
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
            // Only between reads: dropping a pump that waits for readability loses nothing.
            () = &mut pause, if opts.pause_after.is_some() && !c2u_done && !u2c_done => {
                if holding.get() == 0 {
                    break Close::Paused;
                }
                pause.as_mut().reset((Instant::now() + PAUSE_RETRY).into());
            }
        }
    };
    // Wake whatever is still in flight (a parked write to a slow reader, a read) so the
    // kernel lets go of both sockets once the caller drops them. When both directions
    // ended with FIN nothing is in flight, and the close that follows is enough.
    if !(c2u_done && u2c_done) && reason != Close::Paused {
        crate::io::shutdown_quietly(client, Shutdown::Both);
        crate::io::shutdown_quietly(upstream, Shutdown::Both);
    }
    let first: FirstBytes = first.get();
    RelayOutcome {
        client_to_upstream: c2u_bytes.get(),
        upstream_to_client: u2c_bytes.get(),
        reason,
        first_response: first.map(|f| f.0),
        response_status: first.and_then(|f| f.1),
    }
}

/// Acts on the end of the direction reading `src` and writing `dst`: a FIN is passed on
/// as `SHUT_WR` (`None`: the other direction keeps going); a failure is passed on as a
/// reset and ends the pair with the side that failed.
fn settle(end: PumpEnd, src: &TcpStream, dst: &TcpStream, src_side: Side) -> Option<Close> {
    let dst_side = if src_side == Side::Client { Side::Upstream } else { Side::Client };
    let (src_reset, dst_reset) = (Close::reset(src_side), Close::reset(dst_side));
    match end {
        PumpEnd::Eof => {
            crate::io::shutdown_quietly(dst, Shutdown::Write);
            None
        }
        PumpEnd::ReadFailed(e) => {
            tracing::debug!(error = %e, side = src_reset.as_str(), "read failed");
            reset(dst);
            Some(src_reset)
        }
        PumpEnd::WriteFailed(e) => {
            tracing::debug!(error = %e, side = dst_reset.as_str(), "write failed");
            reset(src);
            Some(dst_reset)
        }
    }
}

/// Passes a reset on: the next close of `s` sends RST.
fn reset(s: &TcpStream) {
    if let Err(e) = crate::io::reset_on_close(s) {
        tracing::debug!(error = %e, "SO_LINGER on reset propagation");
    }
}

/// When the upstream's first bytes came, and the HTTP status they start with.
type FirstBytes = Option<(Instant, Option<u16>)>;

/// Moves bytes from `from` to `to` until FIN or an error, counting them in `moved`
/// (and publishing them to the admin plane's live view in `published`, direction
/// `.1`, when it is on). `first` records when the
/// first bytes came and the HTTP status they start with, if any. `holding` counts
/// this direction while it waits to write bytes it has read (it is safe to drop only
/// when not counted).
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Cell<Instant>,
    (moved, published): (&Cell<u64>, Option<(&RelayBytes, usize)>),
    first: Option<&Cell<FirstBytes>>,
    holding: &Cell<u32>,
    (ring, buffers): (&Ring, &BufPool),
) -> PumpEnd {
    loop {
        if let Err(e) = ring.ready(from, readiness::READABLE).await {
            return PumpEnd::ReadFailed(e);
        }
        // Keep reading while reads fill the whole buffer: bytes are moving, so holding a
        // buffer is fine; a short read means the queue is drained and we wait again.
        loop {
            let mut buf = buffers.take();
            let capacity = buf.capacity();
            let n = match crate::io::recv_into(from, &mut buf) {
                Ok(0) => {
                    buffers.put(buf);
                    return PumpEnd::Eof;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    buffers.put(buf);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    buffers.put(buf);
                    continue;
                }
                Err(e) => {
                    buffers.put(buf);
                    return PumpEnd::ReadFailed(e);
                }
            };
            let now = Instant::now();
            activity.set(now);
            if let Some(first) = first.filter(|f| f.get().is_none()) {
                first.set(Some((now, sniff_status(&buf))));
            }
            // Most writes fit in the socket buffer at once; what does not is written
            // by io_uring, which waits for room (the slow reader's flow control).
            let sent = match crate::io::send_now(to, &buf) {
                Ok(k) => k,
                Err(e) => {
                    buffers.put(buf);
                    return PumpEnd::WriteFailed(e);
                }
            };
            if sent < n {
                holding.set(holding.get() + 1);
                let (res, slice) = to.write_all(buf.slice(sent..n)).await;
                holding.set(holding.get() - 1);
                buffers.put(slice.into_inner());
                if let Err(e) = res {
                    return PumpEnd::WriteFailed(e);
                }
            } else {
                buffers.put(buf);
            }
            moved.set(moved.get() + n as u64);
            if let Some((live, direction)) = published {
                live.add(direction, n as u64, now);
            }
            if n < capacity {
                break;
            }
        }
    }
}

/// The status code of `HTTP/1.x NNN ...` at the start of `bytes`.
fn sniff_status(bytes: &[u8]) -> Option<u16> {
    let rest = bytes.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sniffs_status() {
        assert_eq!(super::sniff_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(super::sniff_status(b"HTTP/1.0 200"), Some(200));
        assert_eq!(super::sniff_status(b"HTTP/1.1 2x0"), None);
        assert_eq!(super::sniff_status(b"garbage"), None);
    }
}
