//! Supervision of a spliced pair on its worker's runtime: propagates FIN, RST
//! and errors between the sides, relays whatever the verdict passed to
//! userspace, enforces the idle timeout and the drain signal, and closes both
//! sockets at the end (which removes them from the sockhash). At the pair's turn in
//! the paced drain it stops relaying where it holds no byte and hands the pair to
//! `going_away` (Close 1001 at a frame boundary).
//!
//! A pair is supervised by a task only once something happens to it: until then
//! it is parked (`park`), a row of its worker's table. The worker (`worker`)
//! spawns [`supervise`] and hands the [`SpliceOutcome`] it returns to the pair's
//! callback. The supervising task holds no buffer while it waits, and no timer of
//! its own (the sweeper, `sweep`, reads the kernel's last-activity stamp from
//! shared memory). Must never read a socket except to relay passed bytes or
//! observe its close, never write to one outside `backpressure`, and never
//! park, resume or spawn a pair.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::backpressure::{Direction, Fd};
use super::going_away::going_away;
use super::kernel::{self, Inner, Pair};
use super::shared::{TO_CLIENT, TO_UPSTREAM};
use super::sweep::{Registration, Swept};
use crate::close::{Close, Side};
use crate::readiness::{self, Ring};

/// Read size when relaying passed bytes.
const RELAY_CHUNK: usize = 64 * 1024;
/// First and longest pause before reading again after an end of stream that came
/// before every passed byte (see `burst`).
const EOF_RECHECK_MIN: Duration = Duration::from_millis(1);
const EOF_RECHECK_MAX: Duration = Duration::from_millis(50);

/// How supervision saw a pair end, with what it needs to close the sockets; the
/// outcome reports it as a [`Close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both sides sent FIN (each was passed on to the other); this one first.
    Closed(Side),
    /// This side reset the connection; the other side is reset too.
    Reset(Side),
    /// An error on this side; the other side is reset.
    Error(Side),
    /// No byte in either direction for the idle timeout; both sides get FIN.
    Idle,
    /// The drain's `Stop`; both sides get FIN.
    Shutdown,
    /// The pair's turn in the paced drain; `open` says which directions (to the
    /// upstream, to the client) had not ended; `removed`: the turn came from the
    /// removal of its upstream server by a reload.
    GoingAway { open: [bool; 2], removed: bool },
}

impl End {
    fn close(self) -> Close {
        match self {
            Self::Closed(first) => Close::fin(first),
            Self::Reset(side) => Close::reset(side),
            Self::Error(_) => Close::Error,
            Self::Idle => Close::IdleTimeout,
            Self::Shutdown => Close::Shutdown,
            Self::GoingAway { removed: false, .. } => Close::Drain,
            Self::GoingAway { removed: true, .. } => Close::Removed,
        }
    }
}

/// What supervision reports for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpliceOutcome {
    /// Bytes client → upstream after the handshake head (early bytes included),
    /// as counted by the kernel program and the pressure relay.
    pub to_upstream: u64,
    /// Bytes upstream → client from the 101 on.
    pub to_client: u64,
    /// How it ended: `client_fin`/`upstream_fin` (both closed, that side first),
    /// a reset, `error`, `idle_timeout` or `shutdown`.
    pub reason: Close,
    /// Times a direction went over budget and was relayed in userspace.
    pub pressure_runs: u64,
    /// Most bytes the kernel held unacknowledged in one direction.
    pub held_max: u64,
    /// Retransmitted bytes the program cut off skbs, both directions (they had
    /// been handed on already; see `skip_handed_on` in splice.bpf.c).
    pub trimmed: u64,
    /// `reason` is [`Close::Handed`]: a binary upgrade passes the pair, still in the
    /// kernel, to the new process; these are its sockets (open until the callback
    /// returns) and kernel facts.
    pub handed: Option<Handed>,
}

/// A parked pair a binary upgrade passes on (see [`SpliceOutcome::handed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handed {
    pub client: std::os::fd::RawFd,
    pub upstream: std::os::fd::RawFd,
    pub kernel: super::worker::PassedKernel,
}

/// How one direction ended.
enum DirEnd {
    /// FIN from the source, passed on to the destination.
    Fin,
    /// The drain's stop, at a point where no byte is held.
    Stopped,
    Failed(Side, io::Error),
}

/// Supervises `pair` until both sides closed, one failed, or the sweeper ended it
/// (`swept` when it already had; else it registers with `watch()` and waits). At its
/// turn in the drain it waits up to `close_timeout` for a point where it holds no
/// byte, then for each frame in progress and the Close handshake. Closes both
/// sockets, then releases the pair's links and slot.
pub(super) async fn supervise(
    inner: &Inner,
    ring: &Ring,
    pair: Pair,
    (swept, close_timeout): (Option<Swept>, Duration),
    watch: impl FnOnce() -> Registration,
) -> SpliceOutcome {
    let Pair { client: client_fd, upstream: upstream_fd, ins, early } = pair;
    let (client, upstream) = (client_fd.as_raw_fd(), upstream_fd.as_raw_fd());
    let up = Direction { inner, ring, slot: ins.slot, dir: TO_UPSTREAM, dst: upstream };
    let down = Direction { inner, ring, slot: ins.slot, dir: TO_CLIENT, dst: client };
    let mut end = match swept {
        Some(why) => swept_reason(why),
        None => until_end(&up, &down, watch(), close_timeout).await,
    };
    if let End::GoingAway { open, .. } = end {
        // Boxed: the drain's cold path keeps an idle pair's future small.
        if !Box::pin(going_away(&up, &down, open, close_timeout)).await {
            end = End::Shutdown;
        }
    }
    match end {
        End::Reset(side) | End::Error(side) => {
            // Pass the failure on as RST to the side that did not fail.
            for (fd, s) in [(client, Side::Client), (upstream, Side::Upstream)] {
                if s != side {
                    let _ = crate::io::reset_on_close(&fd);
                }
            }
        }
        End::Idle | End::Shutdown | End::GoingAway { .. } => {
            let _ = crate::io::shutdown(&client, std::net::Shutdown::Write);
            let _ = crate::io::shutdown(&upstream, std::net::Shutdown::Write);
        }
        End::Closed(_) => {}
    }
    let outcome = SpliceOutcome {
        to_upstream: early + up.bytes(),
        to_client: down.bytes(),
        reason: end.close(),
        pressure_runs: up.pressure_runs() + down.pressure_runs(),
        held_max: up.held_max().max(down.held_max()),
        trimmed: up.trimmed() + down.trimmed(),
        handed: None,
    };
    let counters = &inner.counters;
    counters.pressure.fetch_add(outcome.pressure_runs, Ordering::Relaxed);
    counters.trimmed.fetch_add(outcome.trimmed, Ordering::Relaxed);
    counters.active.fetch_sub(1, Ordering::Relaxed);
    // Closed first (which takes them out of the sockhash), then the slot is freed: a
    // verdict still running for this pair writes to a slot no new pair has yet.
    drop(client_fd);
    drop(upstream_fd);
    kernel::release(inner, ins);
    outcome
}

/// Watches both directions and the sweeper until the pair ends; returns how. At the
/// pair's turn in the drain, lets each direction run on to a point where it holds no
/// byte (at most `close_timeout`; past it the pair gets FIN).
async fn until_end(up: &Direction<'_>, down: &Direction<'_>, sweep: Registration, close_timeout: Duration) -> End {
    let (client, upstream) = (down.dst, up.dst);
    let stop = Stop::default();
    let mut up_fut = pin!(direction(up, client, (Side::Client, Side::Upstream), &stop));
    let mut down_fut = pin!(direction(down, upstream, (Side::Upstream, Side::Client), &stop));
    let mut sweep = pin!(sweep);
    let (mut up_done, mut down_done) = (false, false);
    let mut stopped = [false; 2];
    let mut removed = false;
    let mut deadline = pin!(tokio::time::sleep(Duration::MAX));
    loop {
        if stop.is_set() && (up_done || stopped[0]) && (down_done || stopped[1]) {
            break End::GoingAway { open: [!up_done, !down_done], removed };
        }
        tokio::select! {
            end = &mut up_fut, if !up_done && !stopped[0] => match end {
                DirEnd::Fin if down_done => break End::Closed(Side::Upstream),
                DirEnd::Fin => up_done = true,
                DirEnd::Stopped => stopped[0] = true,
                DirEnd::Failed(side, e) => break failure(side, &e),
            },
            end = &mut down_fut, if !down_done && !stopped[1] => match end {
                DirEnd::Fin if up_done => break End::Closed(Side::Client),
                DirEnd::Fin => down_done = true,
                DirEnd::Stopped => stopped[1] = true,
                DirEnd::Failed(side, e) => break failure(side, &e),
            },
            why = &mut sweep, if !stop.is_set() => match why {
                Swept::GoingAway | Swept::Removed => {
                    removed = why == Swept::Removed;
                    stop.set();
                    deadline.as_mut().reset(tokio::time::Instant::now() + close_timeout);
                }
                why => break swept_reason(why),
            },
            () = &mut deadline, if stop.is_set() => {
                tracing::debug!("drain: a spliced pair kept relaying past drain.close_timeout");
                break End::Shutdown;
            }
        }
    }
}

fn swept_reason(why: Swept) -> End {
    match why {
        Swept::Idle => End::Idle,
        Swept::Drain => End::Shutdown,
        Swept::GoingAway => End::GoingAway { open: [true; 2], removed: false },
        Swept::Removed => End::GoingAway { open: [true; 2], removed: true },
    }
}

/// The drain's request that both directions stop relaying where they hold no byte.
#[derive(Default)]
struct Stop {
    set: std::cell::Cell<bool>,
    notify: tokio::sync::Notify,
}

impl Stop {
    fn set(&self) {
        self.set.set(true);
        self.notify.notify_waiters();
    }

    fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Resolves once set.
    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.set.get() {
                return;
            }
            notified.await;
        }
    }
}

/// A peer that reset, or that TCP keepalive or `TCP_USER_TIMEOUT` gave up on
/// (`ETIMEDOUT`), is a lost connection of that side, as in the userspace relay.
fn failure(side: Side, e: &io::Error) -> End {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::TimedOut => End::Reset(side),
        _ => End::Error(side),
    }
}

/// Watches one source socket: relays what the verdict passed to userspace and,
/// on FIN, shuts the destination's write side once the kernel has handed it
/// every redirected byte. Holds no buffer while waiting.
async fn direction(d: &Direction<'_>, src: RawFd, (src_side, dst_side): (Side, Side), stop: &Stop) -> DirEnd {
    loop {
        if stop.is_set() {
            return DirEnd::Stopped;
        }
        if d.broken() {
            let e = io::Error::other("retransmitted bytes could not be trimmed off an skb (see splice.bpf.c)");
            return DirEnd::Failed(Side::Internal, e);
        }
        // While the kernel redirects, wait only for a close: POLLIN also fires for
        // redirected bytes, which would wake the pair on every message. Pass mode
        // is noticed on every poll of `Watch` (the sweeper wakes the task for it).
        let mask = if d.needs_userspace() { readiness::READABLE } else { readiness::CLOSED };
        tokio::select! {
            ready = (Watch { d, ready: d.ring.ready(&Fd(src), mask) }) => if let Err(e) = ready {
                return DirEnd::Failed(Side::Internal, e);
            },
            () = stop.wait() => return DirEnd::Stopped,
        }
        // Cold path, boxed so an idle pair's future stays small.
        if let Some(end) = Box::pin(burst(d, src, (src_side, dst_side), stop)).await {
            return end;
        }
    }
}

/// Resolves on readiness of the source, or as soon as the direction is in pass mode.
struct Watch<'a, 'b> {
    d: &'a Direction<'b>,
    ready: readiness::Ready,
}

impl std::future::Future for Watch<'_, '_> {
    type Output = io::Result<()>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        if self.d.needs_userspace() {
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.ready).poll(cx).map(|r| r.map(|_| ()))
    }
}

/// Handles one readiness event: relays passed bytes until EAGAIN or the drain's stop
/// (`None`), or ends the direction on EOF or error.
async fn burst(d: &Direction<'_>, src: RawFd, (src_side, dst_side): (Side, Side), stop: &Stop) -> Option<DirEnd> {
    let mut buf = vec![0u8; RELAY_CHUNK];
    let mut pause = EOF_RECHECK_MIN;
    loop {
        match crate::io::recv(&src, &mut buf, 0) {
            // A premature end of stream. The verdict passed bytes that have not reached
            // this socket's receive queue: a passed skb waits in the psock's
            // `ingress_skb` whenever that queue is not empty, and the queue also holds
            // the other direction's bytes redirected out through this socket, which go
            // only as fast as that side's reader takes them. recv() says 0 as soon as
            // the FIN is in, even while they wait. Ending the direction here lost them:
            // 23 of 24 MiB in `splice_close::fin_behind_the_other_directions_queue…`,
            // and the last byte of 1 in ~250,000 handover-torture pairs. They arrive
            // once the psock worker moves them, so read again.
            Ok(0) if d.pass_pending() => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(EOF_RECHECK_MAX);
            }
            Ok(0) => {
                if let Err(e) = d.wait_room(false).await {
                    return Some(DirEnd::Failed(dst_side, e));
                }
                return Some(match crate::io::shutdown(&d.dst, std::net::Shutdown::Write) {
                    Ok(()) => DirEnd::Fin,
                    Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => DirEnd::Fin,
                    Err(e) => DirEnd::Failed(dst_side, e),
                });
            }
            Ok(n) => {
                if let Err(e) = d.forward(&buf[..n]).await {
                    return Some(DirEnd::Failed(dst_side, e));
                }
                if stop.is_set() {
                    return None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(DirEnd::Failed(src_side, e)),
        }
    }
}
