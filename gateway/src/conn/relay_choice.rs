//! Phase 5, the relay: runs once the upstream has switched protocols (or, for plain
//! HTTP, right after connect). Chooses where the bytes move: the kernel splice when it
//! is loaded and takes the pair, the userspace relay otherwise, or the userspace relay
//! first and the splice later (see [`first_handover`]: in `auto`, once the pair is
//! quiet or carries bulk; in `sockmap`, when most recent WebSockets of this worker
//! were short, see `lifetimes`).
//!
//! Returns a [`Handoff`] when the pair went to the kernel (teardown parks it), `None`
//! when the relay has ended here, or the pair to relay in userspace in a task of its
//! own ([`go_on`]); byte counts, close reason and mode are in the facts. Must never close a socket it was lent, nor drop a byte on the way from one
//! relay to the other.

use std::rc::Rc;
use std::time::Duration;

use tokio_uring::net::TcpStream;

use super::Worker;
use super::connect::Connected;
use super::peer_io::PeerIo;
use super::plain::{Exchanged, Request};
use super::teardown::{ActiveConn, Facts};
use crate::admission::Admitted;
use crate::close::{Close, Mode, Side};
use crate::drain::{FrameTracker, Removal, Turns};
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::ActiveMode;
use crate::relay::{self, Handover, RelayOptions, RelayOutcome};
use crate::splice::{HandoverError, SplicedPair};
use crate::stats::Stats;
use crate::upstream::ActiveGuard;
use crate::upstream::pool::Reusable;
use crate::wait::Waiter;

/// A spliced pair ready to park, with the guards it keeps until it ends.
pub struct Handoff {
    pub pair: SplicedPair,
    pub admitted: Admitted,
    /// Counts the pair on its upstream server, when the server is known.
    pub live: Option<ActiveGuard>,
    /// The userspace relay ran first (`mode=userspace+splice` in the access log).
    pub after_userspace: bool,
}

/// What a plain exchange leaves of the client connection.
#[derive(Debug)]
pub enum PlainEnd {
    /// Closed (or closing): the connection is over.
    Closed,
    /// Kept alive, at a message boundary; these bytes (perhaps none) are the start of
    /// the client's next request.
    KeepAlive(Vec<u8>),
}

/// Plain HTTP: the body as framed, then the response as framed (see [`super::plain`]);
/// a drain's `Stop` ends it early. A request sent on a pooled upstream connection that
/// the upstream closed without answering goes once more on a new connection to the same
/// server, when that is safe (idempotent method, no body byte read past the head's).
/// Afterwards the upstream connection goes back to the worker's pool when both messages
/// were completely framed and neither side said close; the client connection is kept
/// unless it ends after this response.
pub async fn plain(
    client: &PeerIo,
    upstream: Connected,
    closing: bool,
    worker: &Worker,
    facts: &mut Facts,
) -> Result<PlainEnd, ProxyError> {
    Stats::bump(&worker.stats.relayed_userspace);
    facts.mode = Mode::Userspace;
    let mut upstream = upstream;
    let mut shutdown = worker.shutdown.clone();
    let mut done = Exchanged::default();
    let mut retried = false;
    let generation = facts.generation.clone();
    let cfg = &generation.config;
    let result = loop {
        let req = Request { framing: upstream.framing, early: &upstream.early, method: &upstream.method, closing };
        let result = tokio::select! {
            r = Box::pin(super::plain::exchange(client, &upstream.stream, req, (worker, cfg), &mut done)) => r,
            () = shutdown.reached(crate::shutdown::Phase::Stop) => {
                facts.close = Close::Shutdown;
                client.shutdown(std::net::Shutdown::Both);
                return Ok(PlainEnd::Closed);
            }
        };
        match result {
            Err(e) if !retried && stale(&e, &upstream, &done) => {
                tracing::debug!(upstream = %upstream.live.addr(), "pooled upstream connection closed unanswered; sending again on a new one");
                retried = true;
                done = Exchanged::default();
                upstream = super::connect::again(&upstream, worker, cfg.timeouts.connect).await?;
            }
            result => break result,
        }
    };
    facts.status = done.status;
    facts.bytes_in = done.bytes_in;
    facts.bytes_out = done.bytes_out;
    facts.bytes_sent = done.bytes_out;
    facts.upstream_response_time = done.first_response.map(|t| (t - upstream.started).as_secs_f64());
    result?;
    facts.close = Close::Done;
    let reuse = upstream.persistent && done.request_complete && done.response_complete && done.response_keep_alive;
    let Connected { stream, server, live, reused, .. } = upstream;
    if reuse {
        let group = live.group().clone();
        drop(live);
        worker.pool.put(&group, server, Reusable { stream, served: reused.unwrap_or(0).saturating_add(1) });
    } else {
        stream.shutdown(std::net::Shutdown::Both);
    }
    if done.closing || !done.response_complete {
        client.shutdown(std::net::Shutdown::Both);
        return Ok(PlainEnd::Closed);
    }
    Ok(PlainEnd::KeepAlive(done.leftover))
}

/// The upstream closed a reused connection before any byte of a response, and the
/// request can go again: nothing of its body was read past what came with its head,
/// and its method is idempotent (RFC 9110 §9.2.2).
fn stale(e: &ProxyError, upstream: &Connected, done: &Exchanged) -> bool {
    const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];
    e.kind == ErrorKind::UpstreamClosed
        && upstream.reused.is_some()
        && done.first_response.is_none()
        && !done.body_read
        && IDEMPOTENT.contains(&&*upstream.method)
}

/// A WebSocket after its 101: relays it in the kernel when it can take the pair.
/// `client_slot` is taken only by the splice (which owns the sockets from then on).
/// A pair with TLS on either side always stays in userspace (no kTLS here).
pub async fn websocket(
    client_slot: &mut Option<PeerIo>,
    upstream: Connected,
    admitted: Admitted,
    worker: &Worker,
    facts: &mut Facts,
) -> Relayed {
    let Connected { stream: upstream, live, early, response, read, read_cut, waiter, .. } = upstream;
    // The drain's frame boundaries: the client's early bytes are its first frames; the
    // upstream's bytes start with its 101 head (read, or queued still).
    let mut to_upstream = FrameTracker::default();
    to_upstream.feed(&early);
    let mut to_client = FrameTracker::after(response.as_ref().map_or(0, |h| h.len as u64));
    to_client.feed(&read);
    let idle = facts.generation.config.timeouts.idle;
    // What the client sent after its head is WebSocket data now: it goes first.
    if !early.is_empty() {
        let n = early.len() as u64;
        if let Err(close) = write_first(&upstream, early, Side::Upstream, (worker, idle)).await {
            facts.close = close;
            client_slot.as_ref().inspect(|c| c.shutdown(std::net::Shutdown::Both));
            return Relayed::Done(None);
        }
        facts.bytes_in += n;
    }
    // The 101 as read, and what came with it, goes to the client before anything else
    // from the upstream.
    let queued = match (&response, read.is_empty()) {
        (Some(_), true) => Queued::Untouched,
        (Some(_), false) if read_cut => Queued::Cut,
        _ => Queued::Nothing,
    };
    if let Some(client) = client_slot.as_ref().filter(|_| !read.is_empty()) {
        let n = read.len() as u64;
        if let Err(close) = write_first(client, read, Side::Client, (worker, idle)).await {
            facts.close = close;
            upstream.shutdown(std::net::Shutdown::Both);
            return Relayed::Done(None);
        }
        facts.bytes_out += n;
        facts.bytes_sent = facts.bytes_out;
    }
    let frames = ([to_upstream, to_client], None, queued);
    relay_pair(client_slot, (upstream, waiter), (admitted, Some(live)), frames, worker, facts).await
}

/// Writes `bytes` to `side`'s socket before the relay starts, within the relay's idle
/// timeout and not past the worker's stop: a peer that does not read cannot hold the
/// connection's task. Either failure shuts the socket down (which also ends a write
/// still in flight on the ring).
async fn write_first(
    to: &PeerIo,
    bytes: Vec<u8>,
    side: Side,
    (worker, idle): (&Worker, Duration),
) -> Result<(), Close> {
    let mut bytes = bytes;
    // Mostly it all fits in the socket buffer at once: no timer, no watch.
    if let PeerIo::Plain(s) = to {
        match crate::io::send_now(s, &bytes) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => drop(bytes.drain(..n)),
            Err(e) => {
                tracing::debug!(error = %e, side = %side, "peer gone before the relay started");
                to.shutdown(std::net::Shutdown::Both);
                return Err(Close::reset(side));
            }
        }
    }
    let mut stop = worker.shutdown.clone();
    let close = tokio::select! {
        biased;
        written = tokio::time::timeout(idle, to.write_all(&worker.ring, bytes)) => match written {
            Ok((Ok(()), _)) => return Ok(()),
            Ok((Err(e), _)) => {
                tracing::debug!(error = %e, side = %side, "peer gone before the relay started");
                Close::reset(side)
            }
            Err(_) => Close::IdleTimeout,
        },
        () = stop.reached(crate::shutdown::Phase::Stop) => Close::Shutdown,
    };
    to.shutdown(std::net::Shutdown::Both);
    Err(close)
}

/// What the upstream's socket may hold unread as its relay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Nothing known: the relay waits for bytes before it reads.
    Nothing,
    /// Bytes no read has touched (a peeked 101): the relay reads before it first waits;
    /// the splice may take the socket as it is.
    Untouched,
    /// The rest of a segment that the read of the 101 may have cut (it filled its
    /// buffer): the relay reads before it first waits, and the splice takes the pair
    /// only once a read came up short (DESIGN: a socket must not enter the sockhash
    /// after a partial read). A read that came up short left nothing of the sort.
    Cut,
}

/// Where a WebSocket goes from the connection's task.
pub enum Relayed {
    /// Over (`None`), or spliced and to be parked: the teardown follows in that task.
    Done(Option<Handoff>),
    /// To be relayed in userspace: in a task of its own, which also finishes the
    /// connection ([`go_on`]), and the connection's task ends.
    Moving(Moving),
}

/// A pair to relay in userspace in a task of its own: the pair, where it stands, and
/// what the rest of [`relay_pair`] needs.
pub struct Moving {
    /// How the upstream is waited on (declared before `pair`: dropped before it).
    waiter: Waiter,
    pair: (TcpStream, TcpStream),
    guards: (Admitted, Option<ActiveGuard>),
    removal: Option<Removal>,
    /// Where the relay stands (and when it pauses for the splice).
    opts: RelayOptions,
    /// How the pair started ([`first_handover`]) and whether its 101's read may have
    /// cut a segment ([`Queued::Cut`]): for the splice that may follow.
    start: (Handover, bool),
}

/// Relays an open WebSocket whose frames stand at `frames` (client→upstream,
/// upstream→client), whose bytes last moved at `active_since` (`None`: now) and whose
/// upstream may have bytes queued unread (`queued`): after its 101; or one passed by an
/// old process in a binary upgrade (`conn::adopt`). `live` counts it
/// on its upstream server when that server is known. In a binary upgrade of this
/// process, a pair relayed in userspace is passed to the new process at its next quiet
/// moment (`close=` is then [`Close::Handed`]: the new process writes its line).
///
/// A pair relayed in userspace leaves the connection's task before its relay starts
/// ([`Relayed::Moving`]): each message then wakes and polls a task that holds the relay
/// and the connection's end, not the connection's chain of phases down to the relay
/// (a cold cache line per level and per wake, with a thousand connections), and the
/// phases' memory goes (a held pair's: 5,254 bytes against 7,816 when it moved only
/// after its first eight reads, in `cargo xtask bench hold`). Its relay reads what is
/// queued (`queued`) before its first wait.
pub async fn relay_pair(
    client_slot: &mut Option<PeerIo>,
    (upstream, waiter): (PeerIo, Waiter),
    (admitted, live): (Admitted, Option<ActiveGuard>),
    (frames, active_since, queued): ([FrameTracker; 2], Option<std::time::Instant>, Queued),
    worker: &Worker,
    facts: &mut Facts,
) -> Relayed {
    let generation = facts.generation.clone();
    let cfg = &generation.config;
    let Some(client) = client_slot.as_ref() else { return Relayed::Done(None) };
    // A reload that removes the server from a group with `drain_removed` closes the
    // userspace relay with 1001 (a spliced pair, at its turn: `teardown::park`).
    let removal = live.as_ref().map(|l| worker.generations.removals.watch(l.server_live()));
    let opts = RelayOptions {
        idle_timeout: cfg.timeouts.idle,
        handover: Handover::Never,
        close_timeout: cfg.drain.close_timeout,
        frames,
        active_since,
        upstream_queued: queued != Queued::Nothing,
    };
    // TLS on either side: userspace (no kTLS here).
    let upstream = match (client, upstream) {
        (PeerIo::Plain(_), PeerIo::Plain(upstream)) => upstream,
        (client, upstream) => {
            userspace_tls(client, &upstream, (opts, removal.as_ref()), worker, facts).await;
            return Relayed::Done(None);
        }
    };
    let handover = if worker.pairs.is_some() { first_handover(cfg, worker) } else { Handover::Never };
    let start = (handover, queued == Queued::Cut);
    let opts = RelayOptions { handover, ..opts };
    let Some(PeerIo::Plain(client)) = client_slot.take() else {
        // Deregistered before its socket closes.
        drop(waiter);
        return Relayed::Done(None);
    };
    // Spliced at once (`splice_after = 0s`, or `sockmap` learning that pairs live
    // long), else relayed in a task of its own. A 101 read with a segment it may have
    // cut (the choice changed since connect read it) is relayed there to a short read
    // first, then handed over.
    let guards = (admitted, live);
    if !splices_now(handover, worker) {
        tracing::debug!(client = %facts.peer, "relay: moved to a task of its own");
        return Relayed::Moving(Moving { waiter, pair: (client, upstream), guards, removal, opts, start });
    }
    if queued == Queued::Cut {
        let opts = RelayOptions { handover: Handover::After(Duration::ZERO), ..opts };
        return Relayed::Moving(Moving { waiter, pair: (client, upstream), guards, removal, opts, start });
    }
    // Not waited on by the splice.
    drop(waiter);
    match to_kernel(client_slot, (client, upstream), guards, opts, start, worker, facts).await {
        Kernel::Spliced(handoff) => Relayed::Done(Some(handoff)),
        Kernel::Refused((client, upstream), opts, guards) => {
            // Relayed to its end in a task of its own, as the splice had taken it.
            let opts = RelayOptions { handover: Handover::Never, ..opts };
            let waiter = Waiter::default();
            Relayed::Moving(Moving { waiter, pair: (client, upstream), guards, removal, opts, start })
        }
        Kernel::Over => Relayed::Done(None),
    }
}

/// The rest of a connection whose pair is relayed in userspace in this task
/// ([`Relayed::Moving`]): the relay to its end or to its pause for the splice, the
/// splice, the teardown.
pub async fn go_on(moving: Moving, facts: Facts, worker: Rc<Worker>, active: ActiveConn) {
    let Moving { waiter, pair, guards, removal, opts, start } = moving;
    let mut facts = facts;
    let mut client_slot = None;
    let here = relay_here((&pair.0, &pair.1, waiter), opts, removal.as_ref(), &worker, &mut facts).await;
    let handoff = match here {
        Here::Paused(paused) => {
            let opts = RelayOptions { handover: Handover::Never, ..paused };
            match to_kernel(&mut client_slot, pair, guards, opts, start, &worker, &mut facts).await {
                Kernel::Spliced(handoff) => Some(handoff),
                Kernel::Refused((client, upstream), opts, guards) => {
                    let pair = (&client, &upstream, Waiter::default());
                    relay_here(pair, opts, removal.as_ref(), &worker, &mut facts).await;
                    drop(guards);
                    None
                }
                Kernel::Over => None,
            }
        }
        Here::Ended => {
            client_slot = Some(PeerIo::Plain(pair.0));
            None
        }
    };
    Box::pin(super::teardown::finish(Ok(handoff), client_slot, facts, worker, active)).await;
}

/// What [`to_kernel`] did with a pair.
enum Kernel {
    /// Spliced: the pair to park.
    Spliced(Handoff),
    /// The splice turned it down: the caller relays it in userspace to its end, from
    /// where it stands, with its guards (its own await, not one inside this future:
    /// the relay's future is the largest part of a connection's).
    Refused((TcpStream, TcpStream), RelayOptions, (Admitted, Option<ActiveGuard>)),
    /// Over: no splice in this worker (the client went back to its slot), or the
    /// handover failed (the sockets are closed).
    Over,
}

/// Hands a plain pair paused at a quiet moment (or not yet relayed) to the kernel
/// splice, which starts from `opts.frames`; `start` is how the pair started (see
/// [`Moving::start`]).
async fn to_kernel(
    client_slot: &mut Option<PeerIo>,
    pair: (TcpStream, TcpStream),
    (admitted, live): (Admitted, Option<ActiveGuard>),
    mut opts: RelayOptions,
    (handover, cut): (Handover, bool),
    worker: &Worker,
    facts: &mut Facts,
) -> Kernel {
    let Some(pairs) = &worker.pairs else {
        *client_slot = Some(PeerIo::Plain(pair.0));
        return Kernel::Over;
    };
    if let Handover::After(delay) = handover {
        // It outlived `splice_after`: counted as long now, not when it ends (which
        // may be hours away), so a worker that defers learns as soon as connections
        // live on.
        worker.lifetimes.record(delay, facts.bytes_in, facts.generation.config.relay.splice_after);
    }
    let (client, upstream) = pair;
    facts.conn.set_mode(ActiveMode::Handover);
    // The userspace path is boxed: the handshake's future stays small, and a spliced
    // pair leaves it altogether (parked, it is a table row, not a task).
    match Box::pin(pairs.splice_frames(client, upstream, Vec::new(), opts.frames)).await {
        Ok(pair) => {
            facts.conn.spliced(pair.live_slot(), [facts.bytes_in, facts.bytes_out]);
            return Kernel::Spliced(Handoff {
                pair,
                admitted,
                live,
                after_userspace: handover != Handover::Never || cut,
            });
        }
        Err(HandoverError::NotSpliced { client, upstream, reason, forwarded }) => {
            tracing::debug!(reason, "pair not spliced; relaying in userspace");
            facts.bytes_in += forwarded;
            if forwarded > 0 {
                // Client bytes went through the handover untracked.
                opts.frames[0] = FrameTracker::lost();
            }
            return Kernel::Refused((client, upstream), opts, (admitted, live));
        }
        Err(HandoverError::Failed { side, source }) => {
            // The sockets are closed (dropped with the error); nothing can be sent. A
            // peer that reset or closed meanwhile is that peer's doing, not a failure.
            let lost = matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::TimedOut
            );
            match side {
                Side::Client | Side::Upstream if lost => {
                    tracing::debug!(side = %side, error = %source, client = %facts.peer, "peer reset during the splice handover");
                    facts.close = Close::reset(side);
                }
                _ => {
                    tracing::info!(side = %side, error = %source, client = %facts.peer, "splice handover failed");
                    facts.close = Close::Error;
                }
            }
        }
    }
    drop((admitted, live));
    Kernel::Over
}

/// How [`relay_here`] left a pair.
enum Here {
    /// Paused for the kernel splice: where it stands.
    Paused(RelayOptions),
    /// Ended, or passed to a new process (`close=handed`).
    Ended,
}

/// Relays in userspace until the pair ends or a binary upgrade passes it to the new
/// process, or until it pauses for the kernel splice (`opts.handover`). A pause for an
/// upgrade that is over, or whose pass failed, relays on.
async fn relay_here(
    (client, upstream, waiter): (&TcpStream, &TcpStream, Waiter),
    mut opts: RelayOptions,
    removal: Option<&Removal>,
    worker: &Worker,
    facts: &mut Facts,
) -> Here {
    // Counted once, in the mode it ends in: a relay that pauses for the splice is not.
    let counted = opts.handover == Handover::Never;
    if counted {
        Stats::bump(&worker.stats.relayed_userspace);
    }
    // The first relay goes on with the upstream's registration; one after a pause
    // registers anew.
    let mut waiter = Some(waiter);
    loop {
        let pair = (client, upstream, waiter.take().unwrap_or_default());
        let outcome = userspace(pair, (&opts, removal), worker, facts).await;
        if outcome.reason != Close::Paused {
            if !counted {
                Stats::bump(&worker.stats.relayed_userspace);
            }
            return Here::Ended;
        }
        opts.frames = outcome.frames;
        opts.active_since = Some(outcome.last_activity);
        opts.upstream_queued = false;
        if worker.upgrade.passing() {
            // The new process carries the pair on; this one closes its descriptors
            // without a FIN (the sockets live on there).
            let state = (opts.frames, outcome.last_activity);
            if worker.upgrade.pass_pair(client, upstream, facts, state).is_ok() {
                facts.close = Close::Handed;
                return Here::Ended;
            }
            // Tried again at its next quiet moment, not at once.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        } else if opts.handover != Handover::Never && worker.pairs.is_some() {
            return Here::Paused(opts);
        }
    }
}

/// Whether a plain pair goes to the kernel at its 101 (see [`first_handover`]), as
/// things stand for this worker now.
pub(super) fn splices_at_once(cfg: &crate::config::Config, worker: &Worker) -> bool {
    worker.pairs.is_some() && splices_now(first_handover(cfg, worker), worker)
}

/// Whether a pair whose first relay would pause at `handover` goes to the kernel at once.
fn splices_now(handover: Handover, worker: &Worker) -> bool {
    worker.pairs.is_some() && handover == Handover::Never && !worker.upgrade.passing()
}

/// How a spliceable WebSocket starts. `splice_after = 0s`: in the kernel, at the 101.
/// `auto`: in the userspace relay, where small messages have the shortest round trip
/// (the splice adds a kernel work-queue hop per message), and in the kernel once the
/// pair has been quiet for `splice_after` or carries bulk. `sockmap`: in the kernel at
/// the 101, unless most recent WebSockets of this worker were short; then in userspace
/// first, in the kernel at the first quiet moment after `splice_after` (a short
/// connection costs less in userspace than a handover; see `lifetimes`).
fn first_handover(cfg: &crate::config::Config, worker: &Worker) -> Handover {
    let after = cfg.relay.splice_after;
    if after.is_zero() {
        return Handover::Never;
    }
    if cfg.splice == crate::config::SpliceMode::Auto {
        return Handover::IdleOrBulk(after);
    }
    let delay = worker.lifetimes.splice_delay(after);
    if delay.is_zero() { Handover::Never } else { Handover::After(delay) }
}

/// Relays a pair with TLS on one side or both in userspace and adds what moved to
/// the facts.
async fn userspace_tls(
    client: &PeerIo,
    upstream: &PeerIo,
    (opts, removal): (RelayOptions, Option<&Removal>),
    worker: &Worker,
    facts: &mut Facts,
) {
    Stats::bump(&worker.stats.relayed_userspace);
    facts.mode = Mode::Userspace;
    facts.conn.set_mode(ActiveMode::Userspace);
    let _in_drain_count = worker.pacer.enter();
    // What it moves shows live in the admin plane (`None` when that is off).
    let live = facts.conn.relaying();
    let io = (&worker.ring, &worker.buffers, live.as_deref());
    let turns = Turns { pacer: &worker.pacer, removal, upgrade: None };
    let outcome = Box::pin(crate::relay_tls::relay(client, upstream, opts, &worker.events, io, Some(turns))).await;
    facts.bytes_in += outcome.client_to_upstream;
    facts.bytes_out += outcome.upstream_to_client;
    facts.bytes_sent = facts.bytes_out;
    facts.close = close_reason(outcome.reason, removal);
}

/// Relays in userspace and adds what moved to the facts (the caller counts it).
async fn userspace(
    pair: (&TcpStream, &TcpStream, Waiter),
    (opts, removal): (&RelayOptions, Option<&Removal>),
    worker: &Worker,
    facts: &mut Facts,
) -> RelayOutcome {
    facts.mode = Mode::Userspace;
    facts.conn.set_mode(ActiveMode::Userspace);
    let _in_drain_count = worker.pacer.enter();
    // What it moves shows live in the admin plane (`None` when that is off).
    let live = facts.conn.relaying();
    let io = (&worker.ring, &worker.buffers, live.as_deref());
    let turns = Turns { pacer: &worker.pacer, removal, upgrade: Some(&worker.upgrade) };
    let outcome = relay::relay(pair, opts, &worker.events, io, Some(turns)).await;
    facts.bytes_in += outcome.client_to_upstream;
    facts.bytes_out += outcome.upstream_to_client;
    facts.bytes_sent = facts.bytes_out;
    facts.close = close_reason(outcome.reason, removal);
    outcome
}

/// A relay closed by its turn after its server's removal says so (`close=removed`).
fn close_reason(reason: Close, removal: Option<&Removal>) -> Close {
    if reason == Close::Drain && removal.is_some_and(Removal::fired) { Close::Removed } else { reason }
}
