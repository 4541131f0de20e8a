//! The userspace relay: both directions of a proxied connection on io_uring.
//!
//! Each direction waits for readability (no buffer held), edge-triggered on tokio's
//! reactor (see [`crate::wait`]). It then borrows a buffer from the worker's pool,
//! takes what is queued with one non-blocking `recv` (the data is known to be there, so
//! an io_uring read would only add a completion round trip), and writes it all to the
//! other side before reading again: with one non-blocking `send` when it fits, else
//! with an io_uring write that waits for room, so a slow reader stops the sender
//! through TCP flow control and nothing is buffered beyond one buffer per moving
//! direction.
//! A FIN becomes `shutdown(SHUT_WR)` on the other side (the other direction keeps
//! flowing); a reset is passed on as a reset. The relay never closes the sockets: the
//! caller owns them and closes them after [`relay`] returns.

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;
use tokio_uring::buf::{BoundedBuf, Slice};
use tokio_uring::net::TcpStream;

use crate::bufpool::BufPool;
use crate::close::{Close, Side};
use crate::drain::events::{Events, Hub, WorkerEvent};
use crate::drain::{FrameTracker, Turns, close_frame};
use crate::metrics::live::RelayBytes;
use crate::readiness::{self, Ring};
use crate::wait::{Waiter, drained};

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
    /// Where the frames stood when the relay stopped (client→upstream,
    /// upstream→client): the next relay of the pair starts from here.
    pub frames: [FrameTracker; 2],
    /// When a byte last moved either way (the idle clock a next relay goes on with).
    pub last_activity: Instant,
}

/// How one relay behaves.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    pub idle_timeout: Duration,
    /// When to stop with [`Close::Paused`] so that the kernel splice takes the pair.
    pub handover: Handover,
    /// How long the drain waits for a frame in progress to end, then for the peers'
    /// Close frames (`drain.close_timeout`).
    pub close_timeout: Duration,
    /// Where the frames stand when the relay starts (client→upstream,
    /// upstream→client): after the upstream's 101 head, after the client's early frames.
    pub frames: [FrameTracker; 2],
    /// When a byte last moved before this relay (`None`: now); the idle timeout and
    /// the handover's quiet period count from there.
    pub active_since: Option<Instant>,
    /// Bytes are queued unread in the upstream (a peeked 101, or the rest of a segment
    /// that the 101's read may have cut): the upstream→client pump reads before it
    /// first waits. Only a hint: a read that finds nothing waits as usual.
    pub upstream_queued: bool,
}

/// When the userspace relay stops ([`Close::Paused`]) for the kernel splice to take the
/// pair; it always stops at a quiet moment (no byte held in userspace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// Never: the relay runs until the connection ends.
    Never,
    /// At the first quiet moment after this long.
    After(Duration),
    /// Once no byte has moved either way for this long (an idle pair costs nothing in
    /// the kernel), or once the pair carries bulk: more than [`BULK_BYTES_PER_SEC`] in
    /// one such period (the splice moves bulk with less CPU). Small messages stay here,
    /// where their round trip is shortest.
    IdleOrBulk(Duration),
}

impl Handover {
    /// When the relay first looks (`None`: never).
    fn first_look(self) -> Option<Duration> {
        match self {
            Self::Never => None,
            Self::After(d) | Self::IdleOrBulk(d) => Some(d),
        }
    }
}

/// Throughput above which [`Handover::IdleOrBulk`] hands the pair to the kernel.
pub const BULK_BYTES_PER_SEC: u64 = 4 << 20;

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
    /// The drain is closing and the direction has relayed its last whole frame.
    Boundary,
}

/// One direction's state, shared by its pump and the relay.
#[derive(Default)]
struct Dir {
    /// Bytes relayed.
    moved: Cell<u64>,
    /// Where the relayed bytes' frames end.
    frames: Cell<FrameTracker>,
    /// The pump waits to write bytes it has read: it is safe to stop only when not.
    holding: Cell<bool>,
}

impl Dir {
    /// Not holding bytes and between two frames: stopping here cuts nothing.
    fn at_boundary(&self) -> bool {
        !self.holding.get() && self.frames.get().at_boundary()
    }
}

/// How the pumps stopped.
struct Ended {
    reason: Close,
    /// Both directions ended with FIN, or one did after the closing handshake: nothing
    /// is in flight, and the close that follows sends the FINs still due.
    both_fin: bool,
    /// For the drain: (client, upstream) are between frames and get a Close 1001.
    going_away: [bool; 2],
}

/// Relays bytes both ways until both directions finished (or one did after the
/// closing handshake: [`closing_handshake_done`]), a reset, the idle timeout, the
/// `Stop` phase, a pause (`opts.handover`) or this connection's turn in the drain or
/// after its server's removal (`turns`): then each side gets a Close 1001 at the end
/// of the frame in progress (unless its peer's Close reached it already), the relay
/// waits for the peers' Close frames, and returns [`Close::Drain`]. Unless paused or
/// ended by FINs, both sockets are shut down (not closed) on return, which also
/// completes any io_uring operation still in flight on them; a pause returns only when
/// nothing is in flight. The upstream→client pump waits with `waiter` (registered
/// already when the response phase waited for the 101 on tokio's reactor); it is
/// dropped, and so deregistered, before this returns.
pub async fn relay(
    (client, upstream, waiter): (&TcpStream, &TcpStream, Waiter),
    opts: &RelayOptions,
    hub: &Hub,
    (ring, buffers, live): (&Ring, &BufPool, Option<&RelayBytes>),
    turns: Option<Turns<'_>>,
) -> RelayOutcome {
    let (c2u, u2c) = (Dir::default(), Dir::default());
    c2u.frames.set(opts.frames[0]);
    u2c.frames.set(opts.frames[1]);
    let first = Cell::new(None);
    let activity = Cell::new(opts.active_since.unwrap_or_else(Instant::now));
    let ends = (&first, &activity);
    let ended = pumps((client, upstream, waiter), (&c2u, &u2c), ends, opts, hub, (ring, buffers, live), turns).await;
    if ended.reason == Close::Drain {
        let [to_client, to_upstream] = ended.going_away;
        let closing = going_away(client, upstream, [to_client, to_upstream], (&c2u, &u2c), (ring, buffers));
        if tokio::time::timeout(opts.close_timeout, closing).await.is_err() {
            tracing::debug!("no Close from a peer within drain.close_timeout");
        }
    }
    // Wake whatever is still in flight (a parked write to a slow reader, a read) so the
    // kernel lets go of both sockets once the caller drops them. When the pair ended
    // with FINs no write is in flight (neither pump holds bytes) and a pump's pending
    // readiness wait was cancelled when the pumps were dropped: the close that follows
    // is enough (its FIN goes once the ring has let go of the socket).
    if !ended.both_fin && ended.reason != Close::Paused {
        crate::io::shutdown_quietly(client, Shutdown::Both);
        crate::io::shutdown_quietly(upstream, Shutdown::Both);
    }
    let first: FirstBytes = first.get();
    RelayOutcome {
        client_to_upstream: c2u.moved.get(),
        upstream_to_client: u2c.moved.get(),
        reason: ended.reason,
        first_response: first.map(|f| f.0),
        response_status: first.and_then(|f| f.1),
        frames: [c2u.frames.get(), u2c.frames.get()],
        last_activity: activity.get(),
    }
}

/// Runs both pumps until the relay ends (see [`relay`]). The pumps are dropped on
/// return, so the drain's close handshake has the sockets to itself.
#[allow(clippy::too_many_arguments, reason = "the relay's parts, each used once")]
#[allow(clippy::too_many_lines, reason = "the relay's one loop: what may end a wait, then what each end does")]
async fn pumps(
    (client, upstream, waiter): (&TcpStream, &TcpStream, Waiter),
    (c2u, u2c): (&Dir, &Dir),
    (first, activity): (&Cell<FirstBytes>, &Cell<Instant>),
    opts: &RelayOptions,
    hub: &Hub,
    (ring, buffers, live): (&Ring, &BufPool, Option<&RelayBytes>),
    turns: Option<Turns<'_>>,
) -> Ended {
    let closing = Cell::new(false);
    // What each direction moves shows live in the admin plane (`live`, when it is on).
    let (c2u_io, u2c_io) = ((ring, buffers, live.map(|l| (l, 0))), (ring, buffers, live.map(|l| (l, 1))));
    let c2u_from = (client, Waiter::default());
    let mut c2u_pump = Pump::new((c2u_from, upstream), (c2u, false), activity, None, &closing, c2u_io);
    let u2c_side = Some(UpstreamSide { first, c2u });
    let u2c_from = (upstream, waiter);
    let mut u2c_pump = Pump::new((u2c_from, client), (u2c, opts.upstream_queued), activity, u2c_side, &closing, u2c_io);
    // One timer for the idle timeout and the pause: the earlier of the two (a timer
    // costs its registration in tokio's wheel, and most pairs live for less than either).
    let mut pause = Pause::new(opts.handover);
    let sleep = pin!(tokio::time::sleep_until(pause.next_look(activity.get() + opts.idle_timeout).into()));
    let mut clock = Clock::new(sleep);
    // The worker's events, each at most once in a relay's life: the shutdown's stop, its
    // turn in a drain, a binary upgrade (pause at the next quiet moment, whatever
    // `opts.handover` says). Asking costs a comparison until one of them changed.
    let mut events = Events::new(hub, turns);
    // How long a frame in progress may take to end once it is this connection's turn.
    let mut frame_end = pin!(tokio::time::sleep(Duration::MAX));
    // Ended, and (the drain) stopped at a frame boundary, per direction.
    let [mut c2u_done, mut u2c_done, mut c2u_whole, mut u2c_whole] = [false; 4];
    let mut first_fin = None;
    let ended = |reason| Ended { reason, both_fin: false, going_away: [false; 2] };

    loop {
        if (c2u_done && u2c_done) || ((c2u_done || u2c_done) && closing_handshake_done(c2u, u2c)) {
            let reason = first_fin.unwrap_or(Close::ClientFin);
            return Ended { reason, both_fin: true, going_away: [false; 2] };
        }
        if closing.get() && (c2u_done || c2u_whole) && (u2c_done || u2c_whole) {
            // The client's Close goes the upstream→client way, after its last frame.
            return Ended { reason: Close::Drain, both_fin: false, going_away: [u2c_whole, c2u_whole] };
        }
        // Each wake of the task polls both pumps; the worker's events only when they
        // may have news (`Events::quiet`), and the clock only to arm it after it was
        // set and then once it went off: both cost a cold timer or slot per message
        // otherwise.
        let step = poll_fn(|cx| {
            if !c2u_done
                && !c2u_whole
                && let Poll::Ready(end) = c2u_pump.poll(cx)
            {
                return Poll::Ready(Step::ClientToUpstream(end));
            }
            if !u2c_done
                && !u2c_whole
                && let Poll::Ready(end) = u2c_pump.poll(cx)
            {
                return Poll::Ready(Step::UpstreamToClient(end));
            }
            if !events.quiet()
                && let Poll::Ready(event) = events.poll_next(cx)
            {
                return Poll::Ready(Step::Told(event));
            }
            if clock.went_off(cx) {
                return Poll::Ready(Step::Clock);
            }
            if closing.get() && frame_end.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::FrameEnd);
            }
            Poll::Pending
        })
        .await;
        match step {
            Step::ClientToUpstream(end) => {
                if matches!(end, PumpEnd::Boundary) {
                    c2u_whole = true;
                    continue;
                }
                c2u_done = true;
                let last = u2c_done || closing_handshake_done(c2u, u2c);
                if let Some(reason) = settle(end, client, upstream, (Side::Client, !last)) {
                    return ended(reason);
                }
                first_fin.get_or_insert(Close::ClientFin);
            }
            Step::UpstreamToClient(end) => {
                if matches!(end, PumpEnd::Boundary) {
                    u2c_whole = true;
                    continue;
                }
                u2c_done = true;
                // The upstream's FIN goes on to a client that has not sent its own. When
                // it ends the pair (the closing handshake is done: the server closes
                // first, RFC 6455 §7.1.1), the close that follows sends it.
                let last = c2u_done || closing_handshake_done(c2u, u2c);
                if let Some(reason) = settle(end, upstream, client, (Side::Upstream, !last)) {
                    return ended(reason);
                }
                first_fin.get_or_insert(Close::UpstreamFin);
            }
            Step::Told(event) => match event {
                WorkerEvent::Stop => return ended(Close::Shutdown),
                // Only once, and nothing else sets `closing`.
                WorkerEvent::Turn => {
                    // A pump that is not holding bytes waits for readability: at a frame
                    // boundary it has nothing more to relay. Any other goes on to the end
                    // of its frame (reading no further) and then reports `Boundary`.
                    closing.set(true);
                    c2u_whole = c2u.at_boundary();
                    u2c_whole = u2c.at_boundary();
                    frame_end.as_mut().reset((Instant::now() + opts.close_timeout).into());
                }
                // A pair that is closing is not handed anywhere.
                WorkerEvent::Handing if closing.get() => {}
                WorkerEvent::Handing => {
                    pause.now();
                    clock.set(Instant::now());
                }
            },
            Step::Clock => {
                let (now, idle_end) = (Instant::now(), activity.get() + opts.idle_timeout);
                if idle_end <= now {
                    return ended(Close::IdleTimeout);
                }
                // Only between reads: dropping a pump that waits for readability loses nothing.
                if !c2u_done && !u2c_done && !closing.get() {
                    let moved = c2u.moved.get() + u2c.moved.get();
                    let holding = c2u.holding.get() || u2c.holding.get();
                    if pause.due(now, (moved, activity.get(), holding)) {
                        return ended(Close::Paused);
                    }
                } else {
                    pause.at = None;
                }
                clock.set(pause.next_look(idle_end));
            }
            Step::FrameEnd => {
                // A sender stopped mid-frame: no Close can go that way without cutting
                // its frame; that side gets only the FIN.
                tracing::debug!(c2u_whole, u2c_whole, "drain: a frame did not end within drain.close_timeout");
                return Ended { reason: Close::Drain, both_fin: false, going_away: [u2c_whole, c2u_whole] };
            }
        }
    }
}

/// The relay's one timer (the idle timeout and the pause's next look), polled only to
/// arm it once it was set and then once it went off: it wakes the relay then, and a
/// poll on every wake of the relay's task (each message) costs a cold timer entry.
struct Clock<'a> {
    sleep: Pin<&'a mut Sleep>,
    /// Polled since it was last set.
    armed: bool,
}

impl<'a> Clock<'a> {
    fn new(sleep: Pin<&'a mut Sleep>) -> Self {
        Self { sleep, armed: false }
    }

    /// Goes off at `at` (and must be polled again to be armed).
    fn set(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at.into());
        self.armed = false;
    }

    /// Whether it went off; arms it on its first poll since it was set.
    fn went_off(&mut self, cx: &mut Context<'_>) -> bool {
        if self.armed && !self.sleep.is_elapsed() {
            return false;
        }
        // Outside the task's budget: a poll that the budget turned away would leave
        // the timer unarmed, and it would never be looked at again.
        self.armed = true;
        pin!(tokio::task::unconstrained(self.sleep.as_mut())).poll(cx).is_ready()
    }
}

/// What ended a wait of [`pumps`].
enum Step {
    ClientToUpstream(PumpEnd),
    UpstreamToClient(PumpEnd),
    Told(WorkerEvent),
    /// The idle timeout or the pause's next look.
    Clock,
    /// The drain's wait for a frame in progress to end.
    FrameEnd,
}

/// When the relay stops for the kernel splice to take the pair ([`Handover`]), or for
/// a binary upgrade to pass it.
struct Pause {
    handover: Handover,
    /// When to look next (`None`: never, also for a period past what `Instant` holds).
    at: Option<Instant>,
    /// Bytes moved (both ways) when the handover last looked.
    looked_at: u64,
    /// It decided to hand over and waits for a quiet moment.
    handing_over: bool,
    /// An upgrade asked for it: pause at the next quiet moment.
    asked: bool,
}

impl Pause {
    fn new(handover: Handover) -> Self {
        let at = handover.first_look().and_then(|d| Instant::now().checked_add(d));
        Self { handover, at, looked_at: 0, handing_over: false, asked: false }
    }

    /// A binary upgrade takes the pair: pause at the next quiet moment.
    fn now(&mut self) {
        self.asked = true;
        self.at = Some(Instant::now());
    }

    /// When the relay's timer next goes off: at the pause's next look, or at `idle_end`.
    fn next_look(&self, idle_end: Instant) -> Instant {
        self.at.map_or(idle_end, |at| at.min(idle_end))
    }

    /// At a tick of the relay's timer, with `moved` bytes moved so far, the last one at
    /// `idle_since`, and bytes `holding` in a pump: whether to pause now. Otherwise the
    /// next look is set: after the period (`IdleOrBulk`: not idle that long, nor bulk),
    /// or shortly (bytes in flight).
    fn due(&mut self, now: Instant, (moved, idle_since, holding): (u64, Instant, bool)) -> bool {
        if self.at.is_none_or(|at| at > now) {
            return false;
        }
        if let Handover::IdleOrBulk(period) = self.handover
            && !self.handing_over
            && !self.asked
        {
            let bulk = moved - self.looked_at > bulk_bytes(period);
            self.looked_at = moved;
            if !bulk && now.saturating_duration_since(idle_since) < period {
                self.at = idle_since.checked_add(period);
                return false;
            }
        }
        self.handing_over = true;
        if !holding {
            return true;
        }
        self.at = Some(now + PAUSE_RETRY);
        false
    }
}

/// The drain's close handshake, once the pumps stopped between frames: a Close 1001
/// to each side in `to` ([client, upstream]), then reads (and drops) what each of them
/// still sends until its Close. What is dropped here is what that peer sent after its
/// direction's last whole frame was relayed: it cannot reach the other side, which
/// has been told the connection is going away.
async fn going_away(
    client: &TcpStream,
    upstream: &TcpStream,
    [to_client, to_upstream]: [bool; 2],
    (c2u, u2c): (&Dir, &Dir),
    io: (&Ring, &BufPool),
) {
    tracing::debug!(to_client, to_upstream, "drain: sending Close 1001");
    // A side that was relayed its peer's Close already gets no second one; what it
    // still sends is read to its own Close all the same.
    let client_side = async {
        if to_client {
            if !u2c.frames.get().close_seen()
                && let Err(e) = crate::io::write_all(client, close_frame::to_client()).await
            {
                tracing::debug!(error = %e, "drain: Close to the client");
                return;
            }
            until_close(client, c2u, io).await;
        }
    };
    let upstream_side = async {
        if to_upstream {
            let mask = rand::random::<[u8; 4]>();
            if !c2u.frames.get().close_seen()
                && let Err(e) = crate::io::write_all(upstream, close_frame::to_upstream(mask)).await
            {
                tracing::debug!(error = %e, "drain: Close to the upstream");
                return;
            }
            until_close(upstream, u2c, io).await;
        }
    };
    tokio::join!(client_side, upstream_side);
}

/// Reads `from` (whose frames `dir` follows) until a whole Close frame, end of stream
/// or an error; the bytes are dropped.
async fn until_close(from: &TcpStream, dir: &Dir, (ring, buffers): (&Ring, &BufPool)) {
    let mut frames = dir.frames.get();
    let mut dropped = 0u64;
    while !frames.close_seen() {
        if ring.ready(from, readiness::READABLE).await.is_err() {
            break;
        }
        let mut buf = buffers.take();
        let got = crate::io::recv_into(from, &mut buf);
        frames.feed(&buf);
        dropped += buf.len() as u64;
        buffers.put(buf);
        match got {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(_) => break,
        }
    }
    if dropped > 0 {
        tracing::debug!(dropped, "drain: bytes after the last relayed frame, up to the peer's Close");
    }
}

/// Acts on the end of the direction reading `src` and writing `dst`: a FIN is passed on
/// as `SHUT_WR` when `pass_fin` (`None`: the pair goes on, or ended with FINs); a
/// failure is passed on as a reset and ends the pair with the side that failed. A FIN
/// not passed on here is left to the close that follows the relay, which sends FIN
/// when nothing is left unread on the socket (RST otherwise: only a peer that sent
/// bytes after its Close; after a FIN, if the pump sent one with the upstream's Close),
/// and one system call per connection is saved: the client's FIN once the upstream has
/// ended or the closing handshake is done (unless the pump sent it with that Close),
/// and the upstream's once the client has sent its own or the closing handshake is done.
fn settle(end: PumpEnd, src: &TcpStream, dst: &TcpStream, (src_side, pass_fin): (Side, bool)) -> Option<Close> {
    let dst_side = if src_side == Side::Client { Side::Upstream } else { Side::Client };
    let (src_reset, dst_reset) = (Close::reset(src_side), Close::reset(dst_side));
    match end {
        PumpEnd::Eof => {
            if pass_fin {
                crate::io::shutdown_quietly(dst, Shutdown::Write);
            }
            None
        }
        // Handled by the caller; nothing to pass on.
        PumpEnd::Boundary => None,
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

/// Both Close frames have gone by and neither pump holds bytes: the WebSocket is
/// closed (RFC 6455 §7.1.1), so the first FIN (the server's, as a rule) ends the pair
/// without waiting for the other side's: the close that follows sends it FIN. A peer
/// may send nothing after its Close; only one that broke that rule gets RST (its bytes
/// are unread at the close).
fn closing_handshake_done(c2u: &Dir, u2c: &Dir) -> bool {
    let done = |d: &Dir| d.frames.get().close_seen() && !d.holding.get();
    done(c2u) && done(u2c)
}

/// When the upstream's first bytes came, and the HTTP status they start with.
type FirstBytes = Option<(Instant, Option<u16>)>;

/// What only the upstream→client pump has.
#[derive(Clone, Copy)]
struct UpstreamSide<'a> {
    /// Where it records when the upstream's first bytes came and their status.
    first: &'a Cell<FirstBytes>,
    /// The other direction: once the client's Close went by there, the upstream's
    /// Close ends the closing handshake.
    c2u: &'a Dir,
}

/// One direction: moves bytes from `from` to `to` until FIN or an error, following the
/// frames in `dir`; reads before it first waits when bytes are known to be queued. For
/// the upstream→client pump, `upstream` ([`UpstreamSide`]) is where it records when the
/// first bytes came and the HTTP status they start with, and the other direction: once
/// the client's Close went by, the upstream's Close ends the closing handshake, and the
/// server closes the TCP connection then (RFC 6455 §7.1.1): the pump reads again
/// without waiting for readiness, since the upstream's FIN follows its Close (often in
/// the same segment); when a peek finds that FIN queued, the Close goes on to the
/// client with a FIN in one segment (`MSG_MORE`, then `shutdown` at once). (Only a
/// read and a peek: bytes that are not WebSocket frames can look like Close frames to
/// the tracker, and must still pass.)
/// Once `closing` (the drain), reads no further than the end of the current frame and
/// ends with [`PumpEnd::Boundary`] there.
///
/// A state machine polled by the relay's one wait ([`Pump::poll`]), not a future of its
/// own: a wake of the relay's task goes straight to the socket's readiness, with no
/// future's state to resume on the way (per message, that was a tenth of the relay's
/// instructions).
struct Pump<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    /// Their descriptors, read once: each read and send would otherwise load them from
    /// the sockets' own allocations, a cache line each, cold between two messages.
    fds: (RawFd, RawFd),
    dir: &'a Dir,
    activity: &'a Cell<Instant>,
    upstream: Option<UpstreamSide<'a>>,
    closing: &'a Cell<bool>,
    ring: &'a Ring,
    buffers: &'a BufPool,
    /// Where what this direction moves shows live (the admin plane), and which way it is.
    published: Option<(&'a RelayBytes, usize)>,
    waiter: Waiter,
    /// A wait on the poll ring in progress ([`Waiter::Ring`]).
    ring_wait: Option<readiness::Ready>,
    /// Wait for readiness before the next read (not when bytes are known to be queued).
    wait: bool,
    /// Bytes that did not fit in `to` at once, being written by io_uring, which waits
    /// for room (the slow reader's flow control).
    writing: Option<Writing<'a>>,
}

/// io_uring's write of what did not fit at once; it gives the buffer back.
type WriteOp<'a> = Pin<Box<dyn Future<Output = tokio_uring::BufResult<(), Slice<Vec<u8>>>> + 'a>>;

/// A write that waits for room, and what the read that filled it leaves to do after it.
struct Writing<'a> {
    op: WriteOp<'a>,
    then: Took,
}

/// What a read did, for the steps after its bytes are written.
#[derive(Clone, Copy)]
struct Took {
    n: usize,
    now: Instant,
    /// Shorter than asked: it took all that was queued.
    short: bool,
    /// Its Close ended the closing handshake: the FIN is near, read again at once.
    read_again: bool,
}

impl Took {
    /// Whether the read after this one waits for readiness: a full read reads again at
    /// once, and so does one that ended the closing handshake.
    fn waits(self) -> bool {
        self.short && !self.read_again
    }
}

impl<'a> Pump<'a> {
    fn new(
        ((from, waiter), to): ((&'a TcpStream, Waiter), &'a TcpStream),
        (dir, queued): (&'a Dir, bool),
        activity: &'a Cell<Instant>,
        upstream: Option<UpstreamSide<'a>>,
        closing: &'a Cell<bool>,
        (ring, buffers, published): (&'a Ring, &'a BufPool, Option<(&'a RelayBytes, usize)>),
    ) -> Self {
        Self {
            from,
            to,
            fds: (from.as_raw_fd(), to.as_raw_fd()),
            dir,
            activity,
            upstream,
            closing,
            ring,
            buffers,
            published,
            waiter,
            ring_wait: None,
            wait: !queued,
            writing: None,
        }
    }

    /// Moves what there is to move; ready once the direction ended.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<PumpEnd> {
        loop {
            if let Some(writing) = &mut self.writing {
                let (res, slice) = std::task::ready!(writing.op.as_mut().poll(cx));
                let then = writing.then;
                self.writing = None;
                self.dir.holding.set(false);
                self.buffers.put(slice.into_inner());
                if let Err(e) = res {
                    return Poll::Ready(PumpEnd::WriteFailed(e));
                }
                if let Some(end) = self.written(then) {
                    return Poll::Ready(end);
                }
                self.wait = then.waits();
            }
            if self.closing.get() && self.dir.frames.get().at_boundary() {
                return Poll::Ready(PumpEnd::Boundary);
            }
            if self.ring_wait.is_none() {
                self.waiter.settle(self.from);
            }
            let mut guard = if self.wait {
                match std::task::ready!(self.waiter.poll_readable(cx, (self.ring, &mut self.ring_wait), self.from)) {
                    Ok(guard) => guard,
                    Err(e) => return Poll::Ready(PumpEnd::ReadFailed(e)),
                }
            } else {
                None
            };
            self.wait = true;
            // Keep reading while reads fill the whole buffer: bytes are moving, so holding
            // a buffer is fine; a short read means the queue is drained and we wait again.
            loop {
                let mut buf = self.buffers.take();
                let capacity = buf.capacity();
                let limit = if self.closing.get() {
                    usize::try_from(self.dir.frames.get().to_boundary()).unwrap_or(usize::MAX).min(capacity)
                } else {
                    capacity
                };
                let n = match crate::io::recv_into_max(&self.fds.0, &mut buf, limit) {
                    Ok(0) => {
                        self.buffers.put(buf);
                        return Poll::Ready(PumpEnd::Eof);
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.buffers.put(buf);
                        drained(&mut guard);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                        self.buffers.put(buf);
                        continue;
                    }
                    Err(e) => {
                        self.buffers.put(buf);
                        return Poll::Ready(PumpEnd::ReadFailed(e));
                    }
                };
                let read = self.took(&buf, n < limit);
                if read.short {
                    // A short read took all that was queued.
                    drained(&mut guard);
                }
                // The upstream's Close that ended the closing handshake, with the
                // upstream's FIN queued behind it: the client gets both in one segment
                // (the Close held back by `MSG_MORE` until the FIN is added), not two.
                let fin_next = read.read_again && crate::io::fin_next(&self.fds.0);
                // Most writes fit in the socket buffer at once; what does not is written
                // by io_uring, which waits for room (the slow reader's flow control).
                let sent = if fin_next {
                    crate::io::send_now_more(&self.fds.1, &buf)
                } else {
                    crate::io::send_now(&self.fds.1, &buf)
                };
                let sent = match sent {
                    Ok(k) => k,
                    Err(e) => {
                        self.buffers.put(buf);
                        return Poll::Ready(PumpEnd::WriteFailed(e));
                    }
                };
                if fin_next && sent == n {
                    crate::io::shutdown_quietly(&self.fds.1, Shutdown::Write);
                }
                if sent < n {
                    self.dir.holding.set(true);
                    let op = Box::pin(self.to.write_all(buf.slice(sent..n)));
                    self.writing = Some(Writing { op, then: read });
                    break;
                }
                self.buffers.put(buf);
                if let Some(end) = self.written(read) {
                    return Poll::Ready(end);
                }
                if read.short {
                    self.wait = read.waits();
                    break;
                }
            }
        }
    }

    /// Notes the `n` bytes just read into `buf` (`short`: fewer than asked): when they
    /// came, the upstream's first bytes and status, where their frames end.
    fn took(&self, buf: &[u8], short: bool) -> Took {
        let now = Instant::now();
        self.activity.set(now);
        if let Some(UpstreamSide { first, .. }) = self.upstream.filter(|u| u.first.get().is_none()) {
            first.set(Some((now, sniff_status(buf))));
        }
        let mut frames = self.dir.frames.get();
        let closed_before = frames.close_seen();
        frames.feed(buf);
        self.dir.frames.set(frames);
        let read_again =
            !closed_before && frames.close_seen() && self.upstream.is_some_and(|u| u.c2u.frames.get().close_seen());
        Took { n: buf.len(), now, short, read_again }
    }

    /// The bytes of `read` are written: counts them, and says whether the direction
    /// ends here (the drain's frame boundary).
    fn written(&self, read: Took) -> Option<PumpEnd> {
        let n = read.n as u64;
        self.dir.moved.set(self.dir.moved.get() + n);
        if let Some((live, direction)) = self.published {
            live.add(direction, n, read.now);
        }
        if self.closing.get() && self.dir.frames.get().at_boundary() {
            return Some(PumpEnd::Boundary);
        }
        None
    }
}

/// Bytes that make a pair "bulk" over `period` ([`BULK_BYTES_PER_SEC`]).
fn bulk_bytes(period: Duration) -> u64 {
    u64::try_from(u128::from(BULK_BYTES_PER_SEC) * period.as_millis() / 1000).unwrap_or(u64::MAX)
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
    use std::time::{Duration, Instant};

    use super::{Handover, Pause};

    #[test]
    fn a_pause_past_what_instant_holds_never_comes() {
        let now = Instant::now();
        let idle_end = now + Duration::from_mins(1);
        for handover in [Handover::After(Duration::MAX), Handover::IdleOrBulk(Duration::MAX), Handover::Never] {
            let mut pause = Pause::new(handover);
            assert_eq!(pause.next_look(idle_end), idle_end, "{handover:?}");
            assert!(!pause.due(now + Duration::from_hours(1), (1 << 30, now, false)), "{handover:?}");
        }
        // A period that fits is looked at when it is due.
        let mut pause = Pause::new(Handover::After(Duration::ZERO));
        assert!(pause.next_look(idle_end) <= Instant::now());
        assert!(pause.due(Instant::now(), (0, now, false)));
    }

    /// The relay's timer, polled only to arm it and once it went off, goes off also
    /// when it was armed in a poll whose task had used up its budget (a pump that read
    /// much in one go): the budget must not turn the arming poll away.
    #[test]
    fn the_clock_goes_off_when_armed_with_the_budget_spent() {
        tokio_uring::start(async {
            let sleep = std::pin::pin!(tokio::time::sleep(Duration::from_millis(30)));
            let mut clock = super::Clock::new(sleep);
            let armed_spent = std::future::poll_fn(|cx| {
                // Spend the task's budget as a busy pump does.
                let mut spend = std::pin::pin!(tokio::task::consume_budget());
                for _ in 0..10_000 {
                    if spend.as_mut().poll(cx).is_pending() {
                        let went_off = clock.went_off(cx);
                        return std::task::Poll::Ready(Some(went_off));
                    }
                    spend.set(tokio::task::consume_budget());
                }
                std::task::Poll::Ready(None)
            })
            .await;
            // (It may have gone off already when the machine stalled past its 30 ms.)
            assert!(armed_spent.is_some(), "the budget was never spent");
            let went_off = std::future::poll_fn(|cx| {
                if clock.went_off(cx) { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
            });
            tokio::time::timeout(Duration::from_secs(10), went_off).await.expect("the clock never went off");
            // Set again, it is armed again and goes off again.
            clock.set(Instant::now() + Duration::from_millis(10));
            let went_off = std::future::poll_fn(|cx| {
                if clock.went_off(cx) { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
            });
            tokio::time::timeout(Duration::from_secs(10), went_off)
                .await
                .expect("the clock, set again, never went off");
        });
    }

    #[test]
    fn sniffs_status() {
        assert_eq!(super::sniff_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(super::sniff_status(b"HTTP/1.0 200"), Some(200));
        assert_eq!(super::sniff_status(b"HTTP/1.1 2x0"), None);
        assert_eq!(super::sniff_status(b"garbage"), None);
    }
}
