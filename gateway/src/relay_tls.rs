//! The userspace relay of a pair with TLS on one side or both (a wss client, a TLS
//! upstream): each side's bytes are read — decrypted, for a TLS side — into the
//! worker's pooled buffers and written — encrypted, for a TLS side — to the other.
//! This kernel has no kTLS, so such a pair never goes to the kernel splice.
//!
//! Same contract as [`crate::relay`]: each direction waits for readability holding no
//! buffer, reads what is there, and writes all of it before reading again, so a slow
//! reader stops the sender through TCP flow control (rustls buffers at most one
//! record of plaintext on the way in, and one pooled buffer's worth of records on the
//! way out). A FIN (or close_notify) becomes `SHUT_WR` on the other side (after a
//! close_notify, towards a TLS side); a reset or a bad record is passed on as a reset; idle timeout and
//! the `Stop` phase end it with the same close reasons. Never closes the sockets.
//!
//! In the drain, at this pair's turn (the worker's [`Pacer`]), each direction goes on
//! to the end of the frame in progress ([`FrameTracker`] on the plaintext, no copy)
//! and relays nothing after it; then the client gets a Close 1001 and the upstream a
//! masked one (through TLS where the side speaks it), what each sends until its Close is read and dropped (within
//! `drain.close_timeout`), and the client gets close_notify. What can be lost is what
//! [`crate::relay`] says of the plain relay.

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::pin::pin;
use std::time::Instant;

use crate::bufpool::BufPool;
use crate::close::{Close, Side};
use crate::conn::peer_io::PeerIo;
use crate::drain::events::{Events, Hub, WorkerEvent};
use crate::drain::{DrainState, Turns, close_frame};
use crate::metrics::live::RelayBytes;
use crate::readiness::Ring;
use crate::relay::{RelayOptions, RelayOutcome};
use crate::wait::{Guard, Waiter, drained};

/// How one direction ended.
enum PumpEnd {
    Eof,
    ReadFailed(io::Error),
    WriteFailed(io::Error),
    /// Drain: stopped at a frame boundary; nothing after it was relayed.
    Whole,
}

/// Direction indexes: client → upstream, upstream → client.
const C2U: usize = 0;
const U2C: usize = 1;

/// What both directions share: activity, bytes moved, the drain.
struct Shared<'a> {
    activity: Cell<Instant>,
    moved: [Cell<u64>; 2],
    drain: DrainState,
    /// What the admin plane shows live (when it is on).
    live: Option<&'a RelayBytes>,
}

impl Shared<'_> {
    /// `n` more bytes relayed in direction `dir`.
    fn moved(&self, dir: usize, n: usize) {
        self.moved[dir].set(self.moved[dir].get() + n as u64);
        if let Some(live) = self.live {
            live.add(dir, n as u64, self.activity.get());
        }
    }
}

/// Relays both ways until both directions finished, a reset, the idle timeout, `Stop`
/// or this pair's turn in the drain or after its server's removal (`turns`).
/// `opts.handover` and `upstream_queued` do not apply (a TLS pair is never spliced; a
/// TLS upstream's 101 is held decrypted by its stream). It waits for both FINs, also
/// after the closing handshake. Either side may be plain, not both (that is
/// [`crate::relay`]'s).
#[allow(clippy::too_many_lines, reason = "one select over the pair's events, as in crate::relay")]
pub async fn relay(
    client: &PeerIo,
    upstream: &PeerIo,
    opts: RelayOptions,
    hub: &Hub,
    (ring, buffers, live): (&Ring, &BufPool, Option<&RelayBytes>),
    turns: Option<Turns<'_>>,
) -> RelayOutcome {
    let s = Shared {
        activity: Cell::new(Instant::now()),
        moved: [Cell::new(0), Cell::new(0)],
        drain: DrainState::new(opts.frames),
        live,
    };
    let mut c2u = pin!(pump(client, upstream, C2U, &s, (ring, buffers)));
    let mut u2c = pin!(pump(upstream, client, U2C, &s, (ring, buffers)));
    let mut idle = pin!(tokio::time::sleep(opts.idle_timeout));
    // A TLS pair cannot move to another process: its caller gives it no upgrade event.
    let mut events = Events::new(hub, turns);
    let mut frame_end = pin!(tokio::time::sleep(std::time::Duration::MAX));
    let (mut c2u_done, mut u2c_done) = (false, false);
    let (mut c2u_whole, mut u2c_whole) = (false, false);
    let mut first_fin = None;
    let reason = loop {
        if c2u_done && u2c_done {
            break first_fin.unwrap_or(Close::ClientFin);
        }
        if s.drain.closing() && (c2u_done || c2u_whole) && (u2c_done || u2c_whole) {
            let closing = going_away(client, upstream, [u2c_whole, c2u_whole], &s, (ring, buffers));
            if tokio::time::timeout(opts.close_timeout, closing).await.is_err() {
                tracing::debug!("no Close from a peer within drain.close_timeout");
            }
            client.shutdown(Shutdown::Write);
            break Close::Drain;
        }
        tokio::select! {
            biased;
            end = &mut c2u, if !c2u_done && !c2u_whole => {
                if matches!(end, PumpEnd::Whole) {
                    c2u_whole = true;
                    continue;
                }
                c2u_done = true;
                match end {
                    PumpEnd::Whole => {}
                    PumpEnd::Eof => {
                        upstream.shutdown(Shutdown::Write);
                        first_fin.get_or_insert(Close::ClientFin);
                    }
                    PumpEnd::ReadFailed(e) => break failed(&e, Side::Client, client, upstream),
                    PumpEnd::WriteFailed(e) => break failed(&e, Side::Upstream, client, upstream),
                }
            }
            end = &mut u2c, if !u2c_done && !u2c_whole => {
                if matches!(end, PumpEnd::Whole) {
                    u2c_whole = true;
                    continue;
                }
                u2c_done = true;
                match end {
                    PumpEnd::Whole => {}
                    PumpEnd::Eof => {
                        client.shutdown(Shutdown::Write);
                        first_fin.get_or_insert(Close::UpstreamFin);
                    }
                    PumpEnd::ReadFailed(e) => break failed(&e, Side::Upstream, client, upstream),
                    PumpEnd::WriteFailed(e) => break failed(&e, Side::Client, client, upstream),
                }
            }
            () = &mut idle => {
                let deadline = s.activity.get() + opts.idle_timeout;
                if deadline <= Instant::now() {
                    break Close::IdleTimeout;
                }
                idle.as_mut().reset(deadline.into());
            }
            event = events.told() => match event {
                WorkerEvent::Stop => break Close::Shutdown,
                // Only once, and nothing else begins the drain.
                WorkerEvent::Turn => {
                    // Each pump stops itself at its next boundary (one waiting between
                    // frames is woken for that); none is dropped in the middle of a write.
                    s.drain.begin();
                    frame_end.as_mut().reset((Instant::now() + opts.close_timeout).into());
                }
                // Not pushed: a TLS pair's `Turns` have no upgrade.
                WorkerEvent::Handing => {}
            },
            () = &mut frame_end, if s.drain.closing() => {
                // A sender stopped mid-frame: no Close can go that way without cutting it.
                tracing::debug!(c2u_whole, u2c_whole, "drain: a frame did not end within drain.close_timeout");
                break Close::Drain;
            }
        }
    };
    if !(c2u_done && u2c_done) {
        // Wakes a write parked on a slow reader; the caller closes both sockets.
        crate::io::shutdown_quietly(client.tcp(), Shutdown::Both);
        crate::io::shutdown_quietly(upstream.tcp(), Shutdown::Both);
    }
    RelayOutcome {
        client_to_upstream: s.moved[C2U].get(),
        upstream_to_client: s.moved[U2C].get(),
        reason,
        first_response: None,
        response_status: None,
        frames: [s.drain.frames(C2U), s.drain.frames(U2C)],
        last_activity: s.activity.get(),
    }
}

/// The drain's close handshake once the pumps stopped between frames: a Close 1001 to
/// each side in `to` ([client, upstream]), then what each still sends is read and
/// dropped until its Close (it was sent after that direction's last relayed frame).
async fn going_away(
    client: &PeerIo,
    upstream: &PeerIo,
    [to_client, to_upstream]: [bool; 2],
    s: &Shared<'_>,
    io: (&Ring, &BufPool),
) {
    tracing::debug!(to_client, to_upstream, "drain: sending Close 1001 (TLS)");
    // A side that was relayed its peer's Close already gets no second one.
    let client_side = async {
        if to_client {
            let close = (!s.drain.frames(U2C).close_seen()).then(close_frame::to_client);
            close_with(client, close, s.drain.frames(C2U), io).await;
        }
    };
    let upstream_side = async {
        if to_upstream {
            let close = (!s.drain.frames(C2U).close_seen()).then(|| close_frame::to_upstream(rand::random()));
            close_with(upstream, close, s.drain.frames(U2C), io).await;
        }
    };
    tokio::join!(client_side, upstream_side);
}

/// Sends `close` (if any) to `peer`, then reads and drops what it sends until its own
/// Close (`frames` tracks what comes from it), its end or an error.
async fn close_with(
    peer: &PeerIo,
    close: Option<Vec<u8>>,
    mut frames: crate::drain::FrameTracker,
    (ring, buffers): (&Ring, &BufPool),
) {
    if let Some(close) = close
        && peer.write_all(ring, close).await.0.is_err()
    {
        return;
    }
    while !frames.close_seen() {
        let mut buf = buffers.take();
        let got = peer.recv_into(&mut buf);
        frames.feed(&buf);
        buffers.put(buf);
        match got {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                if peer.readable(ring).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// The side `failed` broke the pair: the other side gets a reset on close.
fn failed(e: &io::Error, failed: Side, client: &PeerIo, upstream: &PeerIo) -> Close {
    let reason = Close::reset(failed);
    tracing::debug!(error = %e, side = reason.as_str(), "TLS relay ended");
    let other = if failed == Side::Client { upstream } else { client };
    if let Err(e) = crate::io::reset_on_close(other.tcp()) {
        tracing::debug!(error = %e, "SO_LINGER on reset propagation");
    }
    reason
}

/// One direction, `from` → `to` (`dir`): read what `from` has (decrypted, for TLS)
/// until nothing is left, writing all of each read before the next; then wait for
/// `from` to be readable.
async fn pump(from: &PeerIo, to: &PeerIo, dir: usize, s: &Shared<'_>, (ring, buffers): (&Ring, &BufPool)) -> PumpEnd {
    // A short read drains a plain socket; a TLS one gives a record at a time.
    let plain = from.as_plain().is_some();
    let mut waiter = Waiter::default();
    let mut guard: Guard<'_> = None;
    loop {
        loop {
            if s.drain.whole(dir) {
                return PumpEnd::Whole;
            }
            let mut buf = buffers.take();
            let capacity = buf.capacity();
            let n = match from.recv_into(&mut buf) {
                Ok(0) => {
                    buffers.put(buf);
                    return PumpEnd::Eof;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    buffers.put(buf);
                    drained(&mut guard);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    buffers.put(buf);
                    break;
                }
                Err(e) => {
                    buffers.put(buf);
                    return PumpEnd::ReadFailed(e);
                }
            };
            s.activity.set(Instant::now());
            let (k, whole) = s.drain.take(dir, &buf[..n]);
            // In the drain, what follows the frame in progress is not relayed.
            buf.truncate(k);
            let (res, buf) = to.write_all(ring, buf).await;
            buffers.put(buf);
            if let Err(e) = res {
                return PumpEnd::WriteFailed(e);
            }
            s.moved(dir, k);
            if whole {
                return PumpEnd::Whole;
            }
            if plain && n < capacity {
                drained(&mut guard);
                break;
            }
        }
        guard = None;
        // TLS bytes already decrypted and waiting are readable at once.
        if from.has_plaintext() {
            continue;
        }
        waiter.settle(from.tcp());
        // Registered before waiting: the drain's turn wakes a pump idle between frames.
        let turn = s.drain.woken();
        tokio::select! {
            polled = waiter.readable(ring, from.tcp()) => match polled {
                Ok(g) => guard = g,
                Err(e) => return PumpEnd::ReadFailed(e),
            },
            () = turn => {}
        }
    }
}
