//! One client connection from accept to close: drives the handshake phases, picks the
//! relay, answers errors, and writes the access-log line.
//!
//! This is the only place that turns a [`ProxyError`] into a response, a log line and
//! an access-log status, so the three always agree.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio_uring::net::TcpStream;

use crate::accesslog::{AccessLog, AccessRecord, now_unix};
use crate::admission::{Admission, Admitted};
use crate::config::Config;
use crate::error::{ErrorKind, ProxyError};
use crate::handshake;
use crate::http::Scheme;
use crate::http::response::{ResponseHead, error_response};
use crate::http::rewrite::{Forwarded, upstream_head};
use crate::http::upgrade::{self, Intent};
use crate::relay::{self, CloseReason, RelayOptions};
use crate::router::Router;
use crate::shutdown::ShutdownRx;
use crate::splice::{self, HandoverError, Splicer};
use crate::stats::Stats;
use crate::upstream::{ActiveGuard, Pick};

/// What every connection task of one worker shares.
#[derive(Debug)]
pub struct Context {
    pub config: Arc<Config>,
    pub router: Arc<Router>,
    pub access_log: AccessLog,
    pub stats: Arc<Stats>,
    pub shutdown: ShutdownRx,
    pub admission: Arc<Admission>,
    /// The kernel fast path, when it loaded and passed its self-test.
    pub splicer: Option<Splicer>,
}

/// What is known of the connection so far, for the access log.
struct Facts {
    started: Instant,
    peer: SocketAddr,
    /// What the accepting listener speaks (`X-Forwarded-Proto`).
    scheme: Scheme,
    host: String,
    request: String,
    user_agent: String,
    status: u16,
    bytes_sent: u64,
    bytes_in: u64,
    bytes_out: u64,
    upstream_addr: Option<SocketAddr>,
    upstream_response_time: Option<f64>,
    close: &'static str,
    mode: &'static str,
}

/// Serves one accepted client connection to the end, or until its spliced pair is
/// parked (which then owns `active` and writes the access-log line at the end).
pub async fn serve(client: TcpStream, peer: SocketAddr, scheme: Scheme, ctx: Rc<Context>, active: ActiveConn) {
    let mut facts = Facts {
        started: Instant::now(),
        peer,
        scheme,
        host: String::new(),
        request: String::new(),
        user_agent: String::new(),
        status: 0,
        bytes_sent: 0,
        bytes_in: 0,
        bytes_out: 0,
        upstream_addr: None,
        upstream_response_time: None,
        close: "-",
        mode: "-",
    };
    // TCP_NODELAY comes from the listening socket: accepted sockets inherit it.
    let mut client = Some(client);
    let result = proxy(&mut client, &ctx, &mut facts).await;
    if let Ok(Some(handoff)) = result {
        let Handoff { pair, admitted, live, after_userspace } = handoff;
        active.detach();
        let end = SplicedEnd { facts: ParkedFacts::new(&facts, after_userspace), ctx, _admitted: admitted, live };
        pair.park(move |outcome| end.finish(outcome));
        return;
    }
    if let Err(err) = result {
        facts.status = err.kind.status();
        facts.close = "error";
        if !err.kind.is_refusal() {
            tracing::info!(side = %err.kind.side(), status = err.kind.status(), client = %peer, request = %facts.request, "{}", err.detail);
        } else if let Some(summary) = ctx.admission.refusal_report() {
            // Refusals come in floods: one line per `admission.log_period`, with counts.
            tracing::warn!(status = err.kind.status(), "{summary}");
        }
        if let Some(client) = &client {
            if err.kind.respond() {
                let response = error_response(err.kind);
                let len = response.len() as u64;
                if handshake::write_all(client, response).await.is_ok() {
                    facts.bytes_sent = len;
                }
            }
            crate::net::shutdown(client, std::net::Shutdown::Both);
        }
    }
    drop(active);
    if facts.status == 101 {
        crate::lifetimes::record(facts.started.elapsed(), facts.bytes_in, ctx.config.relay.splice_after);
    }
    ctx.access_log.log(AccessRecord {
        remote_addr: facts.peer,
        host: facts.host,
        time: now_unix(),
        request: facts.request,
        status: facts.status,
        bytes_sent: facts.bytes_sent,
        request_time: facts.started.elapsed().as_secs_f64(),
        upstream_response_time: facts.upstream_response_time,
        user_agent: facts.user_agent,
        upstream_addr: facts.upstream_addr,
        bytes_in: facts.bytes_in,
        bytes_out: facts.bytes_out,
        close: facts.close,
        mode: facts.mode,
    });
}

/// A spliced pair ready to park, with the guards it keeps until it ends.
struct Handoff {
    pair: splice::SplicedPair,
    admitted: Admitted,
    live: ActiveGuard,
    /// The userspace relay ran first (`mode=userspace+splice` in the access log).
    after_userspace: bool,
}

/// What a parked pair keeps of its connection until it ends: the access log's facts
/// and the guards that count it (connection, admission, upstream server).
struct SplicedEnd {
    facts: ParkedFacts,
    ctx: Rc<Context>,
    _admitted: Admitted,
    live: ActiveGuard,
}

// A parked pair is this plus 32 bytes of sockets and cookies, boxed: 128 bytes keeps it
// in the allocator's 128-byte class (with its row and log text, about 200 bytes).
const _: () = assert!(size_of::<SplicedEnd>() <= 96);

impl SplicedEnd {
    fn finish(self, outcome: splice::SpliceOutcome) {
        // The pair's `ActiveConn` was detached when it was parked.
        self.ctx.stats.active.fetch_sub(1, Ordering::Relaxed);
        let lifetime = self.facts.lifetime();
        // One relayed in userspace first was counted when it outlived `splice_after`.
        if !self.facts.after_userspace {
            let client_bytes = self.facts.before_splice[0] + outcome.to_upstream;
            crate::lifetimes::record(lifetime, client_bytes, self.ctx.config.relay.splice_after);
        }
        self.facts.log(&self.ctx, self.live.addr(), outcome, lifetime);
    }
}

/// What the access log needs of a parked pair, kept compact: it lives as long as the
/// pair, and an idle pair should cost a couple of hundred bytes at most.
struct ParkedFacts {
    /// Nanoseconds from [`epoch`] to the accept.
    started_ns: u64,
    /// Client address, host, request line and user agent, each but the last ended by a
    /// newline (which none of them can contain).
    text: Box<str>,
    /// Bytes (client → upstream, upstream → client) moved before the splice: client
    /// bytes that came with the request head, and the userspace relay's before the pause.
    before_splice: [u64; 2],
    upstream_response_time: f32,
    /// The userspace relay ran before the splice (`mode=userspace+splice`).
    after_userspace: bool,
}

/// A fixed instant of this process, so a parked pair keeps its start in 8 bytes. Set
/// by [`start_clock`] before the first accept (a later first use would date earlier
/// connections from it).
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Fixes the instant parked pairs count their start from; call before accepting.
pub fn start_clock() {
    epoch();
}

impl ParkedFacts {
    fn new(facts: &Facts, after_userspace: bool) -> Self {
        let peer = facts.peer.to_string();
        let started = facts.started.saturating_duration_since(epoch());
        Self {
            started_ns: u64::try_from(started.as_nanos()).unwrap_or(u64::MAX),
            text: [peer.as_str(), "\n", &facts.host, "\n", &facts.request, "\n", &facts.user_agent]
                .concat()
                .into_boxed_str(),
            before_splice: [facts.bytes_in, facts.bytes_out],
            #[allow(clippy::cast_possible_truncation, reason = "seconds; an f32 keeps microseconds over minutes")]
            upstream_response_time: facts.upstream_response_time.unwrap_or_default() as f32,
            after_userspace,
        }
    }

    /// Accept to now.
    fn lifetime(&self) -> std::time::Duration {
        epoch().elapsed().saturating_sub(std::time::Duration::from_nanos(self.started_ns))
    }

    /// Writes the pair's access-log line.
    fn log(self, ctx: &Context, upstream: SocketAddr, outcome: splice::SpliceOutcome, lifetime: std::time::Duration) {
        let mut parts = self.text.splitn(4, '\n').map(str::to_owned);
        let mut part = || parts.next().unwrap_or_default();
        let (peer, host, request, user_agent) = (part(), part(), part(), part());
        ctx.access_log.log(AccessRecord {
            remote_addr: peer.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            host,
            time: now_unix(),
            request,
            status: 101,
            bytes_sent: self.before_splice[1] + outcome.to_client,
            request_time: lifetime.as_secs_f64(),
            upstream_response_time: Some(f64::from(self.upstream_response_time)),
            user_agent,
            upstream_addr: Some(upstream),
            bytes_in: self.before_splice[0] + outcome.to_upstream,
            bytes_out: self.before_splice[1] + outcome.to_client,
            close: splice_close(outcome.reason, outcome.first_fin),
            mode: if self.after_userspace { "userspace+splice" } else { "splice" },
        });
    }
}

/// What the handshake phases leave for the relay.
struct Prepared {
    connected: handshake::Connected,
    /// The upstream's response head (peeked, still queued); `None` for plain HTTP.
    response: Option<ResponseHead>,
    /// Holds the admission slots (per address, per route, global) until the end.
    admitted: Admitted,
    /// What the client sent after its head (not yet forwarded).
    early: Vec<u8>,
    /// The request's body framing and method (for plain HTTP).
    plain: PlainRequest,
}

/// What a plain exchange needs of the request head.
struct PlainRequest {
    framing: crate::http::body::Framing,
    method: String,
}

/// The phases before the relay: read head, route, validate, admit, connect, forward,
/// and (for an upgrade) the response head. Boxed by the caller, so the long-lived
/// relay future does not carry the handshake's state.
async fn prepare(client: &TcpStream, ctx: &Context, facts: &mut Facts) -> Result<Prepared, ProxyError> {
    let cfg = &ctx.config;
    // Phase: read head.
    let deadline = facts.started + cfg.timeouts.header;
    let (head, buf) = handshake::read_head(client, &cfg.limits, deadline).await?;
    facts.request = head.request_line();
    facts.host = head.host().unwrap_or_default();
    facts.user_agent = head.header("user-agent").map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();

    // Phase: route, validate.
    crate::http::request::check_host(&head)?;
    let route = ctx.router.find(head.host().as_deref(), head.path()).ok_or_else(|| {
        ProxyError::new(ErrorKind::NoRoute, format!("no route for host `{}` path `{}`", facts.host, head.path()))
    })?;
    let intent = upgrade::classify(&head)?;
    crate::http::request::check_framing(&head)?;
    if intent == Intent::WebSocket {
        Stats::bump(&ctx.stats.upgrades_attempted);
    }

    // Phase: admit (client address as believed, origin, limits).
    let peer_ip = facts.peer.ip();
    let client_ip = ctx.admission.client_ip(peer_ip, &head);
    facts.peer = SocketAddr::new(client_ip, facts.peer.port());
    if intent == Intent::WebSocket {
        route.gate.check_origin(&head)?;
    }
    let admitted = ctx.admission.admit(client_ip, &route.gate)?;

    // Phase: connect upstream and forward the rewritten head with whatever followed it.
    // An upgrade also waits for the response head here (peeked, left queued), so that a
    // server failing before it answers is replaced by the next one.
    let fwd =
        Forwarded { client_ip, peer_ip, trusted: ctx.admission.is_trusted(peer_ip), proto: facts.scheme.as_str() };
    // Bytes that followed the head are not forwarded with it: for an upgrade they wait
    // for the 101 (then they are WebSocket data), for plain HTTP only the request's own
    // body goes on (see `plain`). A pipelined request is never passed on raw.
    let out = upstream_head(&head, intent, fwd);
    let early = buf[head.len..].to_vec();
    let pick = Pick { client: client_ip, key: route.group.hash_key().and_then(|k| k.extract(&head)) };
    let (connected, resp) = if intent == Intent::WebSocket {
        let exchange = handshake::Exchange {
            request: &out,
            connect_timeout: cfg.timeouts.connect,
            response_timeout: cfg.timeouts.response,
            max_response: cfg.limits.max_response_header_bytes,
            method: &head.method,
        };
        let (connected, resp) = handshake::exchange(&route.group, &pick, &exchange).await?;
        drop(out);
        (connected, Some(resp))
    } else {
        let connected = handshake::connect(&route.group, &pick, cfg.timeouts.connect).await?;
        if let Err(e) = handshake::write_all(&connected.stream, out).await {
            route.group.report_failure(connected.server);
            return Err(ProxyError::new(ErrorKind::UpstreamClosed, format!("forwarding request head: {e}")));
        }
        (connected, None)
    };
    facts.upstream_addr = Some(route.group.server(connected.server).addr());
    if let Err(e) = crate::keepalive::apply(&connected.stream, &cfg.keepalive) {
        tracing::warn!(error = %e, "setting TCP keepalive on the upstream socket");
    }
    let plain = PlainRequest { framing: head.framing(), method: head.method };
    Ok(Prepared { connected, response: resp, admitted, early, plain })
}

/// The phases up to the relay. `client_slot` is taken only by the kernel splice (which
/// owns the sockets from then on); on an error it is still there for the response.
/// Returns the spliced pair to park, or `None` when the connection is over.
async fn proxy(
    client_slot: &mut Option<TcpStream>,
    ctx: &Context,
    facts: &mut Facts,
) -> Result<Option<Handoff>, ProxyError> {
    let cfg = &ctx.config;
    let client = client_slot.as_ref().ok_or_else(|| ProxyError::new(ErrorKind::Internal, "client socket missing"))?;
    let Prepared { connected, response: resp, admitted, early, plain } = Box::pin(prepare(client, ctx, facts)).await?;
    let upstream = connected.stream;
    let live = connected.live;

    let mut shutdown = ctx.shutdown.clone();
    let idle_timeout = cfg.timeouts.idle;
    let Some(resp) = resp else {
        // Plain HTTP: the body as framed, then the response as framed, then the end.
        Stats::bump(&ctx.stats.relayed_userspace);
        facts.mode = "userspace";
        let limits = crate::plain::Limits {
            response: cfg.timeouts.response,
            idle: idle_timeout,
            max_response: cfg.limits.max_response_header_bytes,
        };
        let exchange = crate::plain::exchange(client, &upstream, plain.framing, &early, &plain.method, limits);
        let done = tokio::select! {
            done = Box::pin(exchange) => done,
            () = shutdown.reached(crate::shutdown::Phase::Stop) => {
                facts.close = CloseReason::Shutdown.as_str();
                return Ok(None);
            }
        };
        let done = done?;
        if done.pipelined {
            tracing::debug!(client = %facts.peer, "bytes after the request were not forwarded (pipelining is not supported)");
        }
        facts.status = done.status;
        facts.bytes_in = done.bytes_in;
        facts.bytes_out = done.bytes_out;
        facts.bytes_sent = done.bytes_out;
        facts.upstream_response_time = done.first_response.map(|t| (t - connected.started).as_secs_f64());
        facts.close = CloseReason::Done.as_str();
        crate::net::shutdown(client, std::net::Shutdown::Both);
        crate::net::shutdown(&upstream, std::net::Shutdown::Both);
        return Ok(None);
    };

    // Phase: response head (peeked above, still queued).
    facts.upstream_response_time = Some(connected.started.elapsed().as_secs_f64());
    facts.status = resp.status;
    if resp.status != 101 {
        // Passed back as-is; both sides closed after it.
        facts.bytes_sent = Box::pin(handshake::pass_response(&upstream, client, &resp, cfg.timeouts.response)).await?;
        facts.bytes_out = facts.bytes_sent;
        facts.close = CloseReason::Done.as_str();
        crate::net::shutdown(client, std::net::Shutdown::Both);
        crate::net::shutdown(&upstream, std::net::Shutdown::Both);
        return Ok(None);
    }

    // Phase: relay, in the kernel when it can take the pair. What the client sent
    // after its head is WebSocket data now: it goes first.
    Stats::bump(&ctx.stats.upgrades_succeeded);
    if !early.is_empty() {
        facts.bytes_in += early.len() as u64;
        handshake::write_all(&upstream, early).await.map_err(|e| {
            ProxyError::new(ErrorKind::UpstreamClosed, format!("forwarding the client's first frames: {e}"))
        })?;
    }
    let opts = RelayOptions { idle_timeout, end_on_upstream_fin: false, pause_after: None };
    let Some(splicer) = &ctx.splicer else {
        userspace_relay(client, &upstream, opts, &mut shutdown, ctx, facts).await;
        return Ok(None);
    };
    // A short connection costs less in userspace than a handover: when most recent ones
    // on this worker were short, relay it there first and hand it to the kernel at its
    // first quiet moment after `splice_after` (see `lifetimes`).
    let delay = crate::lifetimes::splice_delay(cfg.relay.splice_after);
    if !delay.is_zero() {
        let first = RelayOptions { pause_after: Some(delay), ..opts };
        let outcome = userspace_relay(client, &upstream, first, &mut shutdown, ctx, facts).await;
        if outcome.reason != CloseReason::Paused {
            return Ok(None);
        }
        // It outlived `splice_after`: counted as long now, not when it ends (which may be
        // hours away), so a worker that defers learns as soon as connections live on.
        crate::lifetimes::record(delay, outcome.client_to_upstream, cfg.relay.splice_after);
    }
    let Some(client) = client_slot.take() else { return Ok(None) };
    // The userspace path is boxed: the handshake's future stays small, and a spliced
    // pair leaves it altogether (parked, it is a table row, not a task).
    match Box::pin(splicer.splice(client, upstream, Vec::new())).await {
        Ok(pair) => {
            return Ok(Some(Handoff { pair, admitted, live, after_userspace: !delay.is_zero() }));
        }
        Err(HandoverError::NotSpliced { client, upstream, reason, forwarded }) => {
            tracing::debug!(reason, "pair not spliced; relaying in userspace");
            facts.bytes_in += forwarded;
            userspace_relay(&client, &upstream, opts, &mut shutdown, ctx, facts).await;
        }
        Err(HandoverError::Failed { side, source }) => {
            // The sockets are closed (dropped with the error); nothing can be sent. A
            // peer that reset or closed meanwhile is that peer's doing, not a failure.
            let reset = crate::net::is_reset(&source);
            match (side, reset) {
                (splice::Side::Client, true) => {
                    tracing::debug!(error = %source, client = %facts.peer, "client reset during the splice handover");
                    facts.close = "client_reset";
                }
                (splice::Side::Upstream, true) => {
                    tracing::debug!(error = %source, client = %facts.peer, "upstream reset during the splice handover");
                    facts.close = "upstream_reset";
                }
                _ => {
                    tracing::info!(side = %side, error = %source, client = %facts.peer, "splice handover failed");
                    facts.close = "error";
                }
            }
        }
    }
    drop((admitted, live));
    Ok(None)
}

async fn userspace_relay(
    client: &TcpStream,
    upstream: &TcpStream,
    opts: RelayOptions,
    shutdown: &mut ShutdownRx,
    ctx: &Context,
    facts: &mut Facts,
) -> relay::RelayOutcome {
    // Counted in the mode it ends in: a relay that pauses for the splice is not.
    if opts.pause_after.is_none() {
        Stats::bump(&ctx.stats.relayed_userspace);
    }
    facts.mode = "userspace";
    let outcome = Box::pin(relay::relay(client, upstream, opts, shutdown)).await;
    if opts.pause_after.is_some() && outcome.reason != CloseReason::Paused {
        Stats::bump(&ctx.stats.relayed_userspace);
    }
    facts.bytes_in += outcome.client_to_upstream;
    facts.bytes_out += outcome.upstream_to_client;
    facts.bytes_sent = facts.bytes_out;
    facts.close = outcome.reason.as_str();
    outcome
}

/// The access log's close reason for a spliced pair.
fn splice_close(reason: splice::CloseReason, first_fin: Option<splice::Side>) -> &'static str {
    use splice::{CloseReason as R, Side};
    match reason {
        R::Closed if first_fin == Some(Side::Upstream) => "upstream_fin",
        R::Closed => "client_fin",
        R::Reset(Side::Client) => "client_reset",
        R::Reset(Side::Upstream) => "upstream_reset",
        R::Reset(Side::Internal) | R::Error(..) => "error",
        R::Idle => "idle_timeout",
        R::Shutdown => "shutdown",
    }
}

/// Counts a connection as active while alive.
#[derive(Debug)]
pub struct ActiveConn(Option<Arc<Stats>>);

impl ActiveConn {
    pub fn new(stats: &Arc<Stats>) -> Self {
        Stats::bump(&stats.accepted);
        stats.active.fetch_add(1, Ordering::Relaxed);
        Self(Some(stats.clone()))
    }

    /// Keeps the connection counted without this guard: whoever holds the connection
    /// from now on must decrement `Stats::active` itself (a parked pair, to stay small).
    fn detach(mut self) {
        self.0 = None;
    }
}

impl Drop for ActiveConn {
    fn drop(&mut self) {
        if let Some(stats) = &self.0 {
            stats.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
