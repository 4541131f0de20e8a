//! The life of one client connection, as named phases, one file each, in the order
//! they run. Read this chart, then the files top to bottom.
//!
//! ```text
//!  accept ── spawns one task per connection ──▶ serve:
//!
//!  head ─▶ route_admit ─▶ connect ──────────────────▶ response ──▶ relay_choice ───────────▶ teardown
//!   │        │              │ upgrade: connect, forward,  │ 101 ─▶    splice ─▶ park ─┐      (finish)
//!   │        │              │ read the head; next server  │           userspace ──────┼────▶ lifetimes,
//!   │        │              │ while retry_safe            │           userspace, then │      counts,
//!   │        │              │                             │           splice ─▶ park ─┤      access log
//!   │        │              │ plain HTTP: pooled or new ──┼─────────▶ plain: body ────┼────▶
//!   │        │              │ connection, forward, no head│ as framed, response (504),│
//!   │        │              │                             │ then closed, or kept ─────┼──▶ keepalive
//!   │        │              │                             │ other ─▶ passed back,     │
//!   │        │              │                             │          closed ──────────┼────▶
//!   ▼ 408    ▼ 404 400      ▼ 502 503 504                 ▼ 502 504                   │
//!     431      426 403                                                                │
//!     400 499  429 503                                                                │
//!   └────────┴──────────────┴── ProxyError ───────────────┴───────────────────────────┼────▶ teardown:
//!                                                         error response (unless the  │      answer, close,
//!                                                         client is gone), then log   │      log
//!                                                                                     ▼
//!  a parked pair is a row of the worker's table, not a task; when the kernel splice reports
//!  its end (FIN, RST, idle, drain) it comes back to teardown (`SplicedEnd::finish`).
//!  A plain pair relayed in userspace goes on, with the rest of the connection
//!  (splice, teardown), in a task of its own from its 101 (`relay_choice::go_on`);
//!  the connection's task and its phases' memory end there.
//!  The drain stops `accept`; each WebSocket closes itself at its turn (`drain::Pacer`),
//!  relays with a Close 1001 each way; whatever is left closes at `Stop`.
//!  keepalive: the request's access-log line, then the next request's first byte (already
//!  there when pipelined) within `client_keepalive` ─▶ head again; else idle timeout, FIN,
//!  reset or drain ─▶ closed and counted, without a line.
//! ```
//!
//! [`serve`] below drives the phases, once per request of a kept-alive plain HTTP
//! connection (DESIGN's "plain HTTP with `Connection: close`" is now keep-alive, see
//! `keepalive` and `plain`): each returns what the next needs, or a
//! [`ProxyError`] that goes straight to teardown. The phases record what the access
//! log needs in one [`teardown::Facts`]. Nothing here may panic on network input, and
//! nothing reaches an upstream that `head` did not parse.

pub mod accept;
pub mod adopt;
pub mod connect;
pub mod head;
pub mod keepalive;
pub mod peer_io;
pub mod plain;
pub mod relay_choice;
pub mod response;
pub mod route_admit;
pub mod teardown;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use tokio_uring::net::TcpStream;

use self::connect::Connected;
use self::keepalive::{Next, Session};
use self::peer_io::PeerIo;
use self::relay_choice::{PlainEnd, Relayed};
use self::response::Answer;
use self::teardown::{ActiveConn, Facts};
use crate::admission::{Admission, Admitted};
use crate::bufpool::BufPool;
use crate::config::Scheme;
use crate::drain::Pacer;
use crate::error::{ErrorKind, ProxyError};
use crate::lifetimes::Lifetimes;
use crate::metrics::Recorder;
use crate::readiness::Ring;
use crate::reload::{Generation, Generations};
use crate::shutdown::ShutdownRx;
use crate::splice::{Splicer, WorkerPairs};
use crate::stats::Stats;
use crate::tls::Acceptor;
use crate::upstream::pool::Pool;

/// One worker thread's state, owned by that thread and lent to every phase of its
/// connections: what all workers share (the configuration generations, counters,
/// admission, the splice) and what is this worker's alone (poll ring, relay buffers,
/// parked pairs and their sweeper, lifetimes). A connection's configuration, routes,
/// groups and access log are its generation's ([`Facts::generation`]).
#[derive(Debug)]
pub struct Worker {
    /// The configuration generation in force (each connection takes it at accept).
    pub generations: Generations,
    pub stats: Arc<Stats>,
    pub shutdown: ShutdownRx,
    pub admission: Arc<Admission>,
    /// The kernel fast path, when it loaded and passed its self-test.
    pub splicer: Option<Splicer>,
    /// This worker's poll ring: every readiness wait of its connections.
    pub ring: Ring,
    /// This worker's spliced pairs (parked and supervised) and their sweeper, when
    /// the kernel fast path is on; made with [`Splicer::init_worker`] on `ring`.
    pub pairs: Option<WorkerPairs>,
    /// This worker's relay buffers.
    pub buffers: BufPool,
    /// How long this worker's WebSockets lived: when to splice.
    pub lifetimes: Lifetimes,
    /// This worker's counters for the admin plane (empty when nobody reads them).
    pub metrics: Recorder,
    /// When each of this worker's WebSockets gets its Close in the drain.
    pub pacer: Rc<Pacer>,
    /// This worker's idle upstream connections for plain HTTP (`upstream.NAME.keepalive`).
    pub pool: Pool,
    /// A binary upgrade of this process: the listeners and live WebSockets it passes.
    pub upgrade: Arc<crate::upgrade::Upgrade>,
    /// What this worker's relays are told: the shutdown's phases and the removed servers.
    pub events: Rc<crate::drain::events::Hub>,
}

/// Serves one accepted client connection to its end, or until its spliced pair is
/// parked (teardown then finishes it when the kernel reports the end). On a TLS
/// listener (`tls`) the handshake comes first, within the header timeout; a failed
/// one is counted by reason and logged at debug level, and ends the connection.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    (scheme, tls, generation): (Scheme, Option<Acceptor>, Arc<Generation>),
    worker: Rc<Worker>,
    active: ActiveConn,
) {
    let mut facts = Facts::new(peer, &worker.metrics, generation);
    facts.scheme = scheme;
    // TCP_NODELAY comes from the listening socket: accepted sockets inherit it.
    let client = match tls {
        None => PeerIo::Plain(client),
        Some(acceptor) => {
            let deadline = facts.started + facts.generation.config.timeouts.header;
            // The phases' futures are boxed (the TLS handshake, HTTP/2, the request's
            // proxying, the teardown): this one is copied whole when the connection's
            // task is spawned, and it was 7 KiB with them inline.
            let handshake =
                crate::tls::handshake::accept(client, acceptor.config, &worker.ring, deadline, &worker.stats.tls);
            match Box::pin(handshake).await {
                Ok(stream) if stream.conn().alpn_protocol() == Some(b"h2") => {
                    return Box::pin(crate::h2::serve(Box::new(stream), peer, facts.generation, worker, active)).await;
                }
                Ok(stream) => PeerIo::Tls(Box::new(stream)),
                Err(failed) => {
                    tracing::debug!(client = %peer, reason = failed.why.as_str(), "TLS handshake failed: {}", failed.detail);
                    return;
                }
            }
        }
    };
    let mut client = Some(client);
    let mut session = Session::default();
    loop {
        session.kept = false;
        let result = match proxy(&mut client, &worker, &mut facts, &mut session).await {
            Ok(Relayed::Done(handoff)) => Ok(handoff),
            // The relay and the connection's end go on in a task of their own; this
            // one's memory (the phases) goes.
            Ok(Relayed::Moving(moving)) => {
                // Boxed, as the connection's own task is (`accept::start`): the
                // task's stage is copied whole at the spawn and as it ends.
                tokio_uring::spawn(Box::pin(relay_choice::go_on(moving, facts, worker, active)));
                return;
            }
            Err(e) => Err(e),
        };
        session.served = session.served.saturating_add(1);
        let kept = session.kept && matches!(result, Ok(None));
        let Some(io) = client.as_ref().filter(|_| kept) else {
            Box::pin(teardown::finish(result, client, facts, worker, active)).await;
            return;
        };
        teardown::request_done(&facts);
        match keepalive::next_request(io, &mut session, &worker, facts.generation.config.timeouts.client_keepalive)
            .await
        {
            Next::Request => {
                // Each request takes the generation in force when it starts: a reload
                // applies to the next request of a kept-alive connection.
                facts.next_request();
                facts.generation = worker.generations.current();
            }
            Next::End(close) => {
                teardown::ended_idle(io, facts, close, active);
                return;
            }
        }
    }
}

/// The phases from the head to the relay, for one request. `client_slot` is taken only
/// by the relay of a WebSocket; on an error it is still there for the response.
/// Returns the spliced pair to park, or `None` when the request is over
/// (`session.kept` then says whether the connection waits for another), or the relay
/// that goes on in a task of its own.
async fn proxy(
    client_slot: &mut Option<PeerIo>,
    worker: &Worker,
    facts: &mut Facts,
    session: &mut Session,
) -> Result<Relayed, ProxyError> {
    let client = client_slot.as_ref().ok_or_else(|| ProxyError::new(ErrorKind::Internal, "client socket missing"))?;
    let (upstream, admitted, closing) = Box::pin(prepare(client, session, worker, facts)).await?;
    let Some(head) = &upstream.response else {
        if let PlainEnd::KeepAlive(leftover) =
            Box::pin(relay_choice::plain(client, upstream, closing, worker, facts)).await?
        {
            session.leftover = leftover;
            session.kept = true;
        }
        drop(admitted);
        return Ok(Relayed::Done(None));
    };
    if response::answer(client, &upstream, head, worker, facts).await? == Answer::Passed {
        return Ok(Relayed::Done(None));
    }
    Ok(Box::pin(relay_choice::websocket(client_slot, upstream, admitted, worker, facts)).await)
}

/// The phases before the response: head (after what the client already sent of it),
/// route and admit, connect. Also says whether the client connection ends after this
/// request (see [`Session::closing`]). Boxed by the caller, so the long-lived relay
/// future does not carry their state.
async fn prepare(
    client: &PeerIo,
    session: &mut Session,
    worker: &Worker,
    facts: &mut Facts,
) -> Result<(Connected, Admitted, bool), ProxyError> {
    let start = std::mem::take(&mut session.leftover);
    let (head, buf) = head::read(client, start, worker, facts).await?;
    let closing = session.closing(&head, &facts.generation.config);
    let generation = facts.generation.clone();
    let admit = route_admit::route_admit(&head, worker, &generation, facts)?;
    // The client's ACKs start delayed, to ride on the answer (`runtime::listen_socket`);
    // a client that writes its body after its head with Nagle's algorithm on sends the
    // body only once the head is acknowledged: a request with a body is acknowledged at
    // once, as on any new connection, before the upstream is connected. (An upgrade's
    // bytes after its head wait for the 101: no header pass for it here.)
    if admit.intent == crate::http::upgrade::Intent::Plain
        && head.framing() != crate::http::body::Framing::Empty
        && let Err(e) = crate::io::set_quickack(client.tcp(), true)
    {
        tracing::debug!(error = %e, "turning quick ACKs on for a request body");
    }
    let upstream = connect::connect(&head, &buf, &admit, worker, facts).await?;
    Ok((upstream, admit.slots, closing))
}

#[cfg(test)]
mod tests {
    use super::{
        Acceptor, ActiveConn, Admitted, Arc, Connected, Facts, Generation, PeerIo, Rc, Scheme, SocketAddr, TcpStream,
        Worker, serve,
    };

    /// The size of what `f` returns, from its type alone (nothing is called).
    fn returned_size<F, R>(_: F) -> usize
    where
        F: FnOnce(TcpStream, SocketAddr, (Scheme, Option<Acceptor>, Arc<Generation>), Rc<Worker>, ActiveConn) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// The connection's future is copied into its task at the spawn and is the task's
    /// for the connection's whole life (in the userspace relay too): its large phases
    /// are boxed to keep it small. It was 7 KiB before they were; 2.2 KiB since, in
    /// debug and release builds. A phase that grows it back fails this.
    #[test]
    fn the_connection_future_stays_small() {
        let size = returned_size(serve);
        assert!(size <= 3 * 1024, "the connection's future grew to {size} bytes: box the phase that grew it");
    }

    /// The size of what `f` returns (the WebSocket phase's signature).
    fn phase_size<'a, F, R>(_: F) -> usize
    where
        F: FnOnce(&'a mut Option<PeerIo>, Connected, Admitted, &'a Worker, &'a mut Facts) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// The size of what `f` returns (the relay's own task's signature).
    fn task_size<F, A, B, C, D, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// The relay's own task holds a userspace pair for its life, in a box of
    /// mimalloc's 3.5 KiB size class (the next is 4 KiB: 512 bytes more per held
    /// connection), and the WebSocket phase's box a TLS pair (and a spliced pair on
    /// its way to the kernel), within the 4 KiB class (the next is 5 KiB; once past it:
    /// 1.4 KiB more per held connection in `cargo xtask bench hold`). 3,368 and 1,688
    /// bytes now.
    #[test]
    fn the_relay_futures_fit_their_size_class() {
        let size = task_size(super::relay_choice::go_on);
        assert!(size <= 3584, "the relay's task future grew to {size} bytes, past mimalloc's 3.5 KiB class");
        let size = phase_size(super::relay_choice::websocket);
        assert!(size <= 4096, "the WebSocket phase's future grew to {size} bytes, past mimalloc's 4 KiB class");
    }
}
