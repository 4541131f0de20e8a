//! A WebSocket an old process passed in a binary upgrade (`upgrade::child`), carried
//! on by a worker of this one: its facts so far become this connection's, it is routed
//! again (for its route's counts and limits) and counted on its upstream server when
//! the configuration still has it, then relayed from where its frames stand exactly
//! as a pair after its 101 ([`super::relay_choice::relay_pair`]: userspace, the splice
//! when the policy says so); a pair still spliced in the kernel is parked at once, on
//! the maps this process took from the old one. Its one access-log line, at its end, carries the bytes of
//! its whole life, in both processes.
//!
//! Must never write to either socket before the relay does: bytes queued in the
//! kernel while the pair moved are read in order by the relay.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio_uring::net::TcpStream;

use super::Worker;
use super::peer_io::PeerIo;
use super::relay_choice::{Handoff, Relayed};
use super::teardown::{self, ActiveConn, Facts};
use crate::drain::FrameTracker;
use crate::upgrade::child::Adopted;
use crate::upstream::ActiveGuard;

/// Resumes `adopted` on this worker until it ends.
pub async fn resume(adopted: Adopted, worker: Rc<Worker>) {
    let Adopted { client, upstream, facts: passed } = adopted;
    let active = ActiveConn::new(&worker.stats);
    let generation = worker.generations.current();
    let mut facts = Facts::adopted(&passed, &worker.metrics, generation.clone());
    let path = routed_path(&passed.request);
    let host = (!passed.host.is_empty()).then_some(passed.host.as_str());
    let route = generation.router.find(host, &path);
    let admitted = worker.admission.adopted(passed.peer.ip(), route.map(|r| &r.gate));
    let live = route.and_then(|r| server_guard(&r.group, passed.upstream_addr));
    if let Some(r) = route {
        facts.route = r.index;
    }
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    let opened = crate::metrics::live::Opened {
        client: facts.peer,
        upstream: facts.upstream_addr.unwrap_or(unknown),
        route: facts.route,
        started_ns: crate::metrics::id_of(facts.started),
    };
    facts.conn.upgraded(facts.route, Duration::ZERO, opened);
    if let Some(spliced) = passed.spliced {
        // Still in the kernel, with the maps this process took from the old one.
        let Some(pairs) = &worker.pairs else {
            tracing::error!(client = %facts.peer, "binary upgrade: a spliced pair came but the splice is off here; closed");
            return;
        };
        let pair = pairs.adopt(client, upstream, spliced.kernel);
        facts.conn.spliced(pair.live_slot(), [facts.bytes_in, facts.bytes_out]);
        let handoff = Handoff { pair, admitted, live, after_userspace: spliced.after_userspace };
        teardown::finish(Ok(Some(handoff)), None, facts, worker, active).await;
        return;
    }
    let frames = passed.frames.map(FrameTracker::from_state);
    let active_since = Instant::now().checked_sub(Duration::from_micros(passed.idle_us));
    let client = TcpStream::from_std(std::net::TcpStream::from(client));
    let upstream = PeerIo::Plain(TcpStream::from_std(std::net::TcpStream::from(upstream)));
    let mut slot = Some(PeerIo::Plain(client));
    let handoff = super::relay_choice::relay_pair(
        &mut slot,
        (upstream, crate::wait::Waiter::default()),
        (admitted, live),
        (frames, active_since, super::relay_choice::Queued::Nothing),
        &worker,
        &mut facts,
    )
    .await;
    match handoff {
        Relayed::Done(handoff) => teardown::finish(Ok(handoff), slot, facts, worker, active).await,
        Relayed::Moving(moving) => {
            drop(tokio_uring::spawn(Box::pin(super::relay_choice::go_on(moving, facts, worker, active))));
        }
    }
}

/// The count on the pair's upstream server, when `group` still has it.
fn server_guard(group: &std::sync::Arc<crate::upstream::Group>, addr: Option<SocketAddr>) -> Option<ActiveGuard> {
    let addr = addr?;
    let i = group.servers().iter().position(|s| s.addr() == addr)?;
    Some(group.enter(i))
}

/// The path a request line `METHOD target HTTP/1.1` was routed by: its target
/// normalised as [`crate::http::request`] does on the way in, without the query. (The
/// host needs nothing: the facts hold it as routed.)
fn routed_path(request: &str) -> String {
    let target = request.split(' ').nth(1).unwrap_or("/");
    let path = crate::http::path::normalise(target).unwrap_or_else(|_| target.to_owned());
    match path.split_once('?') {
        Some((path, _)) => path.to_owned(),
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::routed_path;

    #[test]
    fn routes_by_the_normalised_path_as_the_first_process_did() {
        assert_eq!(routed_path("GET /chat/room?x=1 HTTP/1.1"), "/chat/room");
        assert_eq!(routed_path("GET /a/../chat/./room HTTP/1.1"), "/chat/room");
        assert_eq!(routed_path("GET /%63hat HTTP/1.1"), "/chat");
        assert_eq!(routed_path("garbage"), "/");
    }
}
