//! Phase 5, the relay: runs once the upstream has switched protocols (or, for plain
//! HTTP, right after connect). Chooses where the bytes move: the kernel splice when it
//! is loaded and takes the pair, the userspace relay otherwise, or the userspace relay
//! first and the splice later (see [`first_handover`]: in `auto`, once the pair is
//! quiet or carries bulk; in `sockmap`, when most recent WebSockets of this worker
//! were short, see `lifetimes`).
//!
//! Returns a [`Handoff`] when the pair went to the kernel (teardown parks it), or
//! `None` when the relay has ended here; byte counts, close reason and mode are in the
//! facts. Must never close a socket it was lent, nor drop a byte on the way from one
//! relay to the other.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio_uring::net::TcpStream;

use super::Worker;
use super::connect::Connected;
use super::peer_io::PeerIo;
use super::plain::{Exchanged, Request};
use super::teardown::Facts;
use crate::admission::Admitted;
use crate::close::{Close, Mode, Side};
use crate::drain::{FrameTracker, Removal, Turns};
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::ActiveMode;
use crate::metrics::live::RelayBytes;
use crate::relay::{self, Handover, RelayOptions, RelayOutcome};
use crate::splice::{HandoverError, SplicedPair};
use crate::stats::Stats;
use crate::upstream::ActiveGuard;
use crate::upstream::pool::Reusable;

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
    worker: &Rc<Worker>,
    facts: &mut Facts,
) -> Option<Handoff> {
    let Connected { stream: upstream, live, early, response, read, read_cut, .. } = upstream;
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
            return None;
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
            return None;
        }
        facts.bytes_out += n;
        facts.bytes_sent = facts.bytes_out;
    }
    let frames = ([to_upstream, to_client], None, queued);
    relay_pair(client_slot, upstream, (admitted, Some(live)), frames, worker, facts).await
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

/// Relays an open WebSocket whose frames stand at `frames` (client→upstream,
/// upstream→client), whose bytes last moved at `active_since` (`None`: now) and whose
/// upstream may have bytes queued unread (`queued`): after its 101; or one passed by an
/// old process in a binary upgrade (`conn::adopt`). `live` counts it
/// on its upstream server when that server is known. In a binary upgrade of this
/// process, a pair relayed in userspace is passed to the new process at its next quiet
/// moment (`close=` is then [`Close::Handed`]: the new process writes its line).
pub async fn relay_pair(
    client_slot: &mut Option<PeerIo>,
    upstream: PeerIo,
    (admitted, live): (Admitted, Option<ActiveGuard>),
    (frames, active_since, queued): ([FrameTracker; 2], Option<std::time::Instant>, Queued),
    worker: &Rc<Worker>,
    facts: &mut Facts,
) -> Option<Handoff> {
    let generation = facts.generation.clone();
    let cfg = &generation.config;
    let client = client_slot.as_ref()?;
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
        moves: false,
        settled: false,
    };
    // TLS on either side: userspace (no kTLS here).
    let upstream = match upstream {
        PeerIo::Plain(upstream) if matches!(client, PeerIo::Plain(_)) => upstream,
        upstream => {
            userspace_tls(client, &upstream, (opts, removal.as_ref()), worker, facts).await;
            return None;
        }
    };
    // The relay's task owns the pair while it runs; the client goes back to its slot
    // when the relay ends here.
    let Some(PeerIo::Plain(client)) = client_slot.take() else { return None };
    let mut pair = (client, upstream);
    let handover = if worker.pairs.is_some() { first_handover(cfg, worker) } else { Handover::Never };
    let mut opts = opts;
    // Spliced at once (`splice_after = 0s`, or `sockmap` learning that pairs live long),
    // else relayed here first. A 101 read with a segment it may have cut (the choice
    // changed since connect read it) is relayed here to a short read first, then
    // handed over.
    let splice_now = splices_now(handover, worker);
    if !splice_now || queued == Queued::Cut {
        let first_handover = if splice_now { Handover::After(std::time::Duration::ZERO) } else { handover };
        let first = RelayOptions { handover: first_handover, ..opts };
        match relay_here(pair, first, removal.as_ref(), worker, facts).await {
            Here::Paused(paused, back) => {
                opts = RelayOptions { handover: Handover::Never, ..paused };
                pair = back;
            }
            Here::Ended(client) => {
                *client_slot = Some(PeerIo::Plain(client));
                return None;
            }
        }
    }
    let Some(pairs) = &worker.pairs else {
        *client_slot = Some(PeerIo::Plain(pair.0));
        return None;
    };
    if let Handover::After(delay) = handover {
        // It outlived `splice_after`: counted as long now, not when it ends (which
        // may be hours away), so a worker that defers learns as soon as connections
        // live on.
        worker.lifetimes.record(delay, facts.bytes_in, cfg.relay.splice_after);
    }
    let (client, upstream) = pair;
    facts.conn.set_mode(ActiveMode::Handover);
    // The userspace path is boxed: the handshake's future stays small, and a spliced
    // pair leaves it altogether (parked, it is a table row, not a task).
    match Box::pin(pairs.splice_frames(client, upstream, Vec::new(), opts.frames)).await {
        Ok(pair) => {
            facts.conn.spliced(pair.live_slot(), [facts.bytes_in, facts.bytes_out]);
            return Some(Handoff {
                pair,
                admitted,
                live,
                after_userspace: handover != Handover::Never || queued == Queued::Cut,
            });
        }
        Err(HandoverError::NotSpliced { client, upstream, reason, forwarded }) => {
            tracing::debug!(reason, "pair not spliced; relaying in userspace");
            facts.bytes_in += forwarded;
            if forwarded > 0 {
                // Client bytes went through the handover untracked.
                opts.frames[0] = FrameTracker::lost();
            }
            // The client closes with this phase, as the splice had taken it.
            drop(relay_here((client, upstream), opts, removal.as_ref(), worker, facts).await);
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
    None
}

/// How [`relay_here`] left a pair.
enum Here {
    /// Paused for the kernel splice: where it stands, and the pair.
    Paused(RelayOptions, (TcpStream, TcpStream)),
    /// Ended, or passed to a new process (`close=handed`): the client's socket, for
    /// the teardown.
    Ended(TcpStream),
}

/// Relays in userspace until the pair ends or a binary upgrade passes it to the new
/// process, or until it pauses for the kernel splice (`opts.handover`). A pause for an
/// upgrade that is over, or whose pass failed, relays on.
async fn relay_here(
    pair: (TcpStream, TcpStream),
    mut opts: RelayOptions,
    removal: Option<&Removal>,
    worker: &Rc<Worker>,
    facts: &mut Facts,
) -> Here {
    let mut pair = pair;
    loop {
        let outcome;
        (outcome, pair) = userspace(pair, (opts, removal), worker, facts).await;
        let (client, upstream) = (&pair.0, &pair.1);
        if outcome.reason != Close::Paused {
            return Here::Ended(pair.0);
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
                return Here::Ended(pair.0);
            }
            // Tried again at its next quiet moment, not at once.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        } else if opts.handover != Handover::Never && worker.pairs.is_some() {
            return Here::Paused(opts, pair);
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
    facts.close = close_reason(outcome.reason, removal.is_some_and(Removal::fired));
}

/// Relays in userspace and adds what moved to the facts; the pair comes back with
/// the outcome.
///
/// The relay starts in the connection's task. Once a pump has read past its first few
/// reads (where it would settle on tokio's reactor: [`RelayOptions::moves`]), it pauses
/// at a quiet moment and relays on in a task of its own, with what it moved and where
/// its frames and idle clock stand: each message then wakes and polls the relay's
/// future directly, not the connection's chain of phases down to it (a cold cache line
/// per level and per wake, with a thousand connections). A connect–upgrade–close
/// exchange never gets there, and an idle pair never moves: neither pays for the task.
async fn userspace(
    pair: (TcpStream, TcpStream),
    (opts, removal): (RelayOptions, Option<&Removal>),
    worker: &Rc<Worker>,
    facts: &mut Facts,
) -> (RelayOutcome, (TcpStream, TcpStream)) {
    // Counted in the mode it ends in: a relay that pauses for the splice is not.
    if opts.handover == Handover::Never {
        Stats::bump(&worker.stats.relayed_userspace);
    }
    facts.mode = Mode::Userspace;
    facts.conn.set_mode(ActiveMode::Userspace);
    let _in_drain_count = worker.pacer.enter();
    // What it moves shows live in the admin plane (`None` when that is off).
    let live = facts.conn.relaying();
    let io = (&worker.ring, &worker.buffers, live.as_deref());
    let turns = Turns { pacer: &worker.pacer, removal, upgrade: Some(&worker.upgrade) };
    let here = RelayOptions { moves: true, ..opts };
    let mut outcome = relay::relay(&pair.0, &pair.1, here, &worker.events, io, Some(turns)).await;
    let mut removed = removal.is_some_and(Removal::fired);
    let mut pair = pair;
    if outcome.moving {
        tracing::debug!(client = %facts.peer, "relay: moved to a task of its own");
        let on = RelayOptions {
            frames: outcome.frames,
            active_since: Some(outcome.last_activity),
            upstream_queued: false,
            moves: false,
            settled: true,
            ..opts
        };
        let task = tokio_uring::spawn(relay_on(pair, on, removal.cloned(), worker.clone(), live));
        let (later, back, removed_later) = match task.await {
            Ok(done) => done,
            // A panic in the relay is the connection's, as if it had run in its task.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only as the worker's runtime goes, which drops this task too.
            Err(_) => std::future::pending().await,
        };
        pair = back;
        removed |= removed_later;
        outcome = RelayOutcome {
            client_to_upstream: outcome.client_to_upstream + later.client_to_upstream,
            upstream_to_client: outcome.upstream_to_client + later.upstream_to_client,
            first_response: outcome.first_response.or(later.first_response),
            response_status: outcome.response_status.or(later.response_status),
            ..later
        };
    }
    if opts.handover != Handover::Never && outcome.reason != Close::Paused {
        Stats::bump(&worker.stats.relayed_userspace);
    }
    facts.bytes_in += outcome.client_to_upstream;
    facts.bytes_out += outcome.upstream_to_client;
    facts.bytes_sent = facts.bytes_out;
    facts.close = close_reason(outcome.reason, removed);
    (outcome, pair)
}

/// The rest of a userspace relay, in a task of its own (see [`userspace`]): gives the
/// pair back with the outcome, and whether the server's removal closed it.
async fn relay_on(
    (client, upstream): (TcpStream, TcpStream),
    opts: RelayOptions,
    removal: Option<Removal>,
    worker: Rc<Worker>,
    live: Option<Arc<RelayBytes>>,
) -> (RelayOutcome, (TcpStream, TcpStream), bool) {
    let io = (&worker.ring, &worker.buffers, live.as_deref());
    let turns = Turns { pacer: &worker.pacer, removal: removal.as_ref(), upgrade: Some(&worker.upgrade) };
    let outcome = relay::relay(&client, &upstream, opts, &worker.events, io, Some(turns)).await;
    (outcome, (client, upstream), removal.as_ref().is_some_and(Removal::fired))
}

/// A relay closed by its turn after its server's removal says so (`close=removed`).
fn close_reason(reason: Close, removed: bool) -> Close {
    if reason == Close::Drain && removed { Close::Removed } else { reason }
}
