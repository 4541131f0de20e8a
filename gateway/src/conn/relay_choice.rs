//! Phase 5, the relay: runs once the upstream has switched protocols (or, for plain
//! HTTP, right after connect). Chooses where the bytes move: the kernel splice when it
//! is loaded and takes the pair, the userspace relay otherwise, or the userspace relay
//! first and the splice at the first quiet moment after `relay.splice_after` when most
//! recent WebSockets of this worker were short (`lifetimes`).
//!
//! Returns a [`Handoff`] when the pair went to the kernel (teardown parks it), or
//! `None` when the relay has ended here; byte counts, close reason and mode are in the
//! facts. Must never close a socket it was lent, nor drop a byte on the way from one
//! relay to the other.

use tokio_uring::net::TcpStream;

use super::Worker;
use super::connect::Connected;
use super::teardown::Facts;
use crate::admission::Admitted;
use crate::close::{Close, Mode};
use crate::relay::{self, RelayOptions, RelayOutcome};
use crate::splice::{HandoverError, SplicedPair};
use crate::stats::Stats;
use crate::upstream::ActiveGuard;

/// A spliced pair ready to park, with the guards it keeps until it ends.
pub struct Handoff {
    pub pair: SplicedPair,
    pub admitted: Admitted,
    pub live: ActiveGuard,
    /// The userspace relay ran first (`mode=userspace+splice` in the access log).
    pub after_userspace: bool,
}

/// Plain HTTP: the request body may be large, so relay right away; the response
/// status is read from the first bytes the upstream sends.
pub async fn plain(client: &TcpStream, upstream: &Connected, worker: &Worker, facts: &mut Facts) {
    let opts = RelayOptions { idle_timeout: worker.config.timeouts.idle, end_on_upstream_fin: true, pause_after: None };
    let outcome = userspace(client, &upstream.stream, opts, worker, facts).await;
    facts.status = outcome.response_status.unwrap_or(502);
    facts.upstream_response_time = outcome.first_response.map(|t| (t - upstream.started).as_secs_f64());
}

/// A WebSocket after its 101: relays it in the kernel when it can take the pair.
/// `client_slot` is taken only by the splice (which owns the sockets from then on).
pub async fn websocket(
    client_slot: &mut Option<TcpStream>,
    upstream: Connected,
    admitted: Admitted,
    worker: &Worker,
    facts: &mut Facts,
) -> Option<Handoff> {
    let cfg = &worker.config;
    let Connected { stream: upstream, live, .. } = upstream;
    let client = client_slot.as_ref()?;
    let opts = RelayOptions { idle_timeout: cfg.timeouts.idle, end_on_upstream_fin: false, pause_after: None };
    let Some(pairs) = &worker.pairs else {
        userspace(client, &upstream, opts, worker, facts).await;
        return None;
    };
    // A short connection costs less in userspace than a handover: when most recent ones
    // on this worker were short, relay it there first and hand it to the kernel at its
    // first quiet moment after `splice_after` (see `lifetimes`).
    let delay = worker.lifetimes.splice_delay(cfg.relay.splice_after);
    if !delay.is_zero() {
        let first = RelayOptions { pause_after: Some(delay), ..opts };
        let outcome = userspace(client, &upstream, first, worker, facts).await;
        if outcome.reason != Close::Paused {
            return None;
        }
        // It outlived `splice_after`: counted as long now, not when it ends (which may be
        // hours away), so a worker that defers learns as soon as connections live on.
        worker.lifetimes.record(delay, outcome.client_to_upstream, cfg.relay.splice_after);
    }
    let client = client_slot.take()?;
    // The userspace path is boxed: the handshake's future stays small, and a spliced
    // pair leaves it altogether (parked, it is a table row, not a task).
    match Box::pin(pairs.splice(client, upstream, Vec::new())).await {
        Ok(pair) => return Some(Handoff { pair, admitted, live, after_userspace: !delay.is_zero() }),
        Err(HandoverError::NotSpliced { client, upstream, reason, forwarded }) => {
            tracing::debug!(reason, "pair not spliced; relaying in userspace");
            facts.bytes_in += forwarded;
            userspace(&client, &upstream, opts, worker, facts).await;
        }
        Err(HandoverError::Failed { side, source }) => {
            // The sockets are closed (dropped with the error); nothing can be sent.
            tracing::info!(side = %side, error = %source, client = %facts.peer, "splice handover failed");
            facts.close = Close::Error;
        }
    }
    drop((admitted, live));
    None
}

/// Relays in userspace and adds what moved to the facts.
async fn userspace(
    client: &TcpStream,
    upstream: &TcpStream,
    opts: RelayOptions,
    worker: &Worker,
    facts: &mut Facts,
) -> RelayOutcome {
    // Counted in the mode it ends in: a relay that pauses for the splice is not.
    if opts.pause_after.is_none() {
        Stats::bump(&worker.stats.relayed_userspace);
    }
    facts.mode = Mode::Userspace;
    let mut shutdown = worker.shutdown.clone();
    let outcome = Box::pin(relay::relay(client, upstream, opts, &mut shutdown, &worker.ring, &worker.buffers)).await;
    if opts.pause_after.is_some() && outcome.reason != Close::Paused {
        Stats::bump(&worker.stats.relayed_userspace);
    }
    facts.bytes_in += outcome.client_to_upstream;
    facts.bytes_out += outcome.upstream_to_client;
    facts.bytes_sent = facts.bytes_out;
    facts.close = outcome.reason;
    outcome
}
