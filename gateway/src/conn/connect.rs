//! Phase 3, connect: runs once the request is admitted. Rewrites the head for the
//! upstream (`X-Forwarded-*`, hop-by-hop headers), connects to the route's servers in
//! policy order and forwards the head (what followed it waits: see `plain` and
//! `relay_choice`). For an upgrade it
//! also waits for the response head ([`super::response::read_head`]), and
//! moves to the next server while [`ProxyError::retry_safe`] says so; so does any
//! failed connect (nothing was sent). At most `tries` servers, each failure reported
//! to passive health.
//!
//! A plain request to a group with a pool (`upstream.NAME.keepalive`) first asks the
//! worker's pool for an idle connection to the server the balancer picked (an upgrade's
//! connection becomes its WebSocket, so upgrades always connect anew), and goes out
//! without `Connection: close`.
//!
//! Returns the connected upstream (and, for an upgrade, its response head). Errors:
//! 502 (refused, closed, malformed), 503 (no eligible server), 504 (timeouts). Must
//! never retry once any byte of a response was consumed, nor send upstream anything
//! but the head wsgate parsed and rewrote and the bytes that followed it.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Worker;
use super::peer_io::PeerIo;
use super::response::{peek_head, read_head};
use super::route_admit::Admit;
use super::teardown::Facts;
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::Framing;
use crate::http::request::{Method, RequestHead};
use crate::http::response::ResponseHead;
use crate::http::rewrite::{Forwarded, upstream_head_on};
use crate::http::upgrade::Intent;
use crate::metrics::Recorder;
use crate::readiness::Ring;
use crate::upstream::{ActiveGuard, Group, Pick};
use crate::wait::Waiter;

/// A connected upstream (its TLS handshake done, for a TLS group).
pub struct Connected {
    /// How the upstream's socket is waited on: registered with tokio's reactor when
    /// its response head was read there ([`HeadWait::Reactor`]), for the userspace
    /// relay to go on with. Declared before `stream`, so dropped before it.
    pub waiter: Waiter,
    pub stream: PeerIo,
    pub server: usize,
    pub started: Instant,
    /// Counts the connection as live on its server (`least_conn`, `max_conns`) until dropped.
    pub live: ActiveGuard,
    /// The upstream's response head to an upgrade; `None` for plain HTTP.
    pub response: Option<ResponseHead>,
    /// Bytes read off a plain upstream's socket, starting with its response head to an
    /// upgrade: what follows the head is the upstream's next bytes (the first frames
    /// after a 101, the start of a body otherwise), due to the client in order. Empty
    /// while the head is queued still (plain HTTP; peeked for a pair the splice takes
    /// at its 101; a TLS upstream's stream holds it).
    pub read: Vec<u8>,
    /// The last read of `read` filled its buffer: the rest of a segment it cut may be
    /// queued (see [`read_head`]).
    pub read_cut: bool,
    /// What the client sent after its head, not forwarded yet.
    pub early: Vec<u8>,
    /// The request's body framing (plain HTTP).
    pub framing: Framing,
    /// The request's method (plain HTTP: how the response is framed).
    pub method: Method,
    /// Plain HTTP: the rewritten head as sent (sent again on a fresh connection when a
    /// pooled one turns out closed).
    pub request: Vec<u8>,
    /// Plain HTTP: the head asked the upstream to keep the connection (pooled group).
    pub persistent: bool,
    /// Taken from the worker's pool, after carrying this many requests; `None`: new.
    pub reused: Option<u32>,
}

/// Connects upstream and forwards the request: `head` parsed from `buf`, whose bytes
/// after the head follow it.
pub async fn connect(
    head: &RequestHead,
    buf: &[u8],
    admit: &Admit<'_>,
    worker: &Worker,
    facts: &mut Facts,
) -> Result<Connected, ProxyError> {
    let generation = facts.generation.clone();
    let cfg = &generation.config;
    let group = &admit.route.group;
    let fwd = Forwarded {
        client_ip: admit.client_ip,
        peer_ip: admit.peer_ip,
        trusted: worker.admission.is_trusted(admit.peer_ip),
        proto: facts.scheme.as_str(),
    };
    // Bytes that followed the head are not forwarded with it: for an upgrade they wait
    // for the 101 (then they are WebSocket data), for plain HTTP only the request's own
    // body goes on (see `plain`). A pipelined request is never passed on raw.
    let persistent = admit.intent == Intent::Plain && group.keepalive.idle > 0 && head.minor_version == 1;
    let out = upstream_head_on(head, admit.intent, fwd, persistent);
    let pick = Pick { client: admit.client_ip, key: group.hash_key().and_then(|k| k.extract(head)) };
    let connected = if admit.intent == Intent::WebSocket {
        let plain = facts.scheme == crate::config::Scheme::Http;
        let splices = super::relay_choice::splices_at_once(cfg, worker);
        let exchange = Exchange {
            ring: &worker.ring,
            request: &out,
            connect_timeout: cfg.timeouts.connect,
            response_timeout: cfg.timeouts.response,
            max_response: cfg.limits.max_response_header_bytes,
            method: &head.method,
            metrics: &worker.metrics,
            head: HeadWait::of(plain, splices),
        };
        self::exchange(group, &pick, &exchange).await?
    } else {
        let order = group.attempt_order(&pick);
        let pooled = match order.first() {
            Some(&first) if persistent => from_pool(worker, group, first, &out).await,
            _ => None,
        };
        let mut connected = if let Some(c) = pooled {
            c
        } else {
            let c = connect_in((&worker.ring, &worker.metrics), group, order, cfg.timeouts.connect).await?;
            send_head(&worker.ring, group, c, &out).await?
        };
        connected.request = out;
        connected.persistent = persistent;
        connected
    };
    facts.upstream_addr = Some(group.server(connected.server).addr());
    if let Err(e) = crate::io::set_keepalive(connected.stream.tcp(), &cfg.keepalive) {
        tracing::warn!(error = %e, "setting TCP keepalive on the upstream socket");
    }
    let mut connected = connected;
    connected.early = buf[head.len..].to_vec();
    connected.framing = head.framing();
    connected.method.clone_from(&head.method);
    Ok(connected)
}

/// An idle connection to `server` from the worker's pool with `head` sent on it, when
/// there is one that takes it; counted as a pool hit or miss.
async fn from_pool(worker: &Worker, group: &Arc<Group>, server: usize, head: &[u8]) -> Option<Connected> {
    let found = worker.pool.take(group, server).and_then(|c| Some((c, group.try_enter(server)?)));
    let Some((conn, live)) = found else {
        worker.metrics.pool_miss();
        return None;
    };
    // Closed between the check and the send: nothing of the request reached a server
    // that would answer it, so a fresh connection takes it.
    let stream = conn.stream;
    if stream.write_all(&worker.ring, head.to_vec()).await.0.is_err() {
        worker.metrics.pool_miss();
        return None;
    }
    worker.metrics.pool_hit();
    Some(Connected {
        waiter: Waiter::default(),
        stream,
        server,
        started: Instant::now(),
        live,
        response: None,
        read: Vec::new(),
        read_cut: false,
        early: Vec::new(),
        framing: Framing::Empty,
        method: Method::default(),
        request: Vec::new(),
        persistent: true,
        reused: Some(conn.served),
    })
}

/// Sends the request head on a new connection (a failure is the server's).
async fn send_head(ring: &Ring, group: &Group, connected: Connected, head: &[u8]) -> Result<Connected, ProxyError> {
    if let Err(e) = connected.stream.write_slice(ring, head).await {
        group.report_failure(connected.server);
        return Err(ProxyError::new(ErrorKind::UpstreamClosed, format!("forwarding request head: {e}")));
    }
    Ok(connected)
}

/// Sends an upgrade's request head on a plain upstream's new connection, whose
/// handshake's last ACK rides on it ([`crate::io::connect`]'s `ack_on_head`), then has
/// the socket acknowledge at once: the upstream's 101 is acknowledged as on any new
/// connection, so an upstream that writes its 101 and first frame apart with Nagle's
/// algorithm on does not wait for a delayed ACK before the frame. (A plain request is
/// not connected so: its body follows the head, and a send within 40 ms of the
/// handshake leaves the socket delaying its ACKs, the response's among them.)
async fn forward_head(ring: &Ring, stream: &PeerIo, head: &[u8]) -> io::Result<()> {
    stream.write_slice(ring, head).await?;
    if let Err(e) = crate::io::set_quickack(stream.tcp(), true) {
        tracing::debug!(error = %e, "turning quick ACKs on after the request head");
    }
    Ok(())
}

/// A new connection to the server `upstream` was on, with its request head sent again:
/// for a plain request whose pooled connection closed before answering.
pub async fn again(
    upstream: &Connected,
    worker: &Worker,
    connect_timeout: std::time::Duration,
) -> Result<Connected, ProxyError> {
    let group = upstream.live.group();
    let mut failures = Failures::default();
    let c =
        connect_one((&worker.ring, &worker.metrics), group, (upstream.server, connect_timeout, false), &mut failures)
            .await
            .ok_or_else(|| failures.into_error(group))?;
    let mut c = send_head(&worker.ring, group, c, &upstream.request).await?;
    c.request.clone_from(&upstream.request);
    c.persistent = upstream.persistent;
    c.early.clone_from(&upstream.early);
    c.framing = upstream.framing;
    c.method.clone_from(&upstream.method);
    Ok(c)
}

/// Connects to the group's servers in `order` (the balancer's, bounded by `tries`)
/// until one accepts; each failure is reported to passive health. All refused → 502;
/// all timed out → 504; no eligible server → 503.
async fn connect_in(
    (ring, metrics): (&Ring, &Recorder),
    group: &Arc<Group>,
    order: Vec<usize>,
    timeout: Duration,
) -> Result<Connected, ProxyError> {
    let mut failures = Failures::default();
    for i in order {
        if let Some(connected) = connect_one((ring, metrics), group, (i, timeout, false), &mut failures).await {
            return Ok(connected);
        }
    }
    Err(failures.into_error(group))
}

/// What an upgrade sends upstream and how long it waits for the answer.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// The worker's poll ring, for the connect and the response.
    pub ring: &'a Ring,
    /// The rewritten request head and the bytes that followed it.
    pub request: &'a [u8],
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_response: usize,
    pub method: &'a str,
    /// The worker's counters (upstream connect latency).
    pub metrics: &'a Recorder,
    /// How a plain upstream's response head is taken (a TLS upstream's is decrypted
    /// onto its stream and peeked there).
    pub head: HeadWait,
}

/// How a plain upstream's response head to an upgrade is taken, by what follows the 101.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadWait {
    /// Peeked, left queued: the kernel splice takes the pair at its 101 and delivers
    /// the head itself (the client gets nothing from userspace first, so a client that
    /// answers the 101 at once cannot beat the handover).
    Peek,
    /// Read waiting on tokio's reactor, a registration that the userspace relay goes
    /// on with ([`Connected::waiter`]): a plain client's pair relayed in userspace.
    Reactor,
    /// Read waiting on the poll ring, where a wait registers nothing (see
    /// [`crate::readiness`]): a TLS client's pair (its relay registers the upstream's
    /// socket with tokio's reactor at its own first wait).
    Ring,
}

impl HeadWait {
    /// For a pair whose client speaks plain HTTP (`plain`) or TLS, spliced at its 101
    /// (`splices`) or not. Only a plain client's pair can be spliced (no kTLS here).
    pub fn of(plain: bool, splices: bool) -> Self {
        match (plain, splices) {
            (true, true) => Self::Peek,
            (true, false) => Self::Reactor,
            (false, _) => Self::Ring,
        }
    }
}

/// For a WebSocket upgrade: connect, forward the request, and read the response head,
/// moving on to the next server (bounded by `tries`) when one fails before answering
/// anything — refused, connect timeout, or [`ProxyError::retry_safe`]. Every failure
/// is reported to passive health.
pub async fn exchange(group: &Arc<Group>, pick: &Pick<'_>, x: &Exchange<'_>) -> Result<Connected, ProxyError> {
    let mut failures = Failures::default();
    // The handshake's last ACK rides on the head; a TLS upstream's handshake is
    // not sent so (its server's flights would be acknowledged late).
    let ack_on_head = group.tls.is_none();
    for i in group.attempt_order(pick) {
        let attempt = (i, x.connect_timeout, ack_on_head);
        let Some(mut connected) = connect_one((x.ring, x.metrics), group, attempt, &mut failures).await else {
            continue;
        };
        let addr = group.server(i).addr();
        let sent = if ack_on_head {
            forward_head(x.ring, &connected.stream, x.request).await
        } else {
            connected.stream.write_slice(x.ring, x.request).await
        };
        if let Err(e) = sent {
            group.report_failure(i);
            tracing::warn!(upstream = %addr, group = %group.name, error = %e, "forwarding the request failed; trying the next server");
            failures.other.push(format!("{addr}: forwarding request head: {e}"));
            continue;
        }
        let deadline = Instant::now() + x.response_timeout;
        let answered = match &connected.stream {
            PeerIo::Plain(tcp) if x.head != HeadWait::Peek => {
                if x.head == HeadWait::Reactor {
                    connected.waiter.settle(tcp);
                }
                read_head((x.ring, &connected.waiter), tcp, x.max_response, deadline, x.method).await
            }
            stream => peek_head(x.ring, stream, x.max_response, deadline, x.method).await.map(|h| (h, vec![], false)),
        };
        match answered {
            Ok((head, read, cut)) => {
                connected.response = Some(head);
                connected.read = read;
                connected.read_cut = cut;
                return Ok(connected);
            }
            Err(e) if e.retry_safe() => {
                group.report_failure(i);
                tracing::warn!(upstream = %addr, group = %group.name, error = %e.detail, "upstream closed before answering; trying the next server");
                failures.other.push(format!("{addr}: {}", e.detail));
            }
            Err(e) => {
                group.report_failure(i);
                return Err(ProxyError::new(e.kind, format!("{addr}: {}", e.detail)));
            }
        }
    }
    Err(failures.into_error(group))
}

/// Failed attempts of one connection, for its error.
#[derive(Default)]
struct Failures {
    timeouts: Vec<String>,
    other: Vec<String>,
}

impl Failures {
    /// All connect timeouts → 504; other failures → 502; nothing tried → 503.
    fn into_error(self, group: &Group) -> ProxyError {
        let kind = match (self.timeouts.is_empty(), self.other.is_empty()) {
            (true, true) => {
                return ProxyError::new(
                    ErrorKind::NoUpstream,
                    format!("no available server in upstream `{}`", group.name),
                );
            }
            (false, true) => ErrorKind::UpstreamTimeout,
            _ => ErrorKind::UpstreamRefused,
        };
        let all: Vec<String> = self.timeouts.into_iter().chain(self.other).collect();
        ProxyError::new(kind, format!("upstream `{}`: {}", group.name, all.join("; ")))
    }
}

/// One connect attempt to server `i` within `timeout` (`ack_on_head`: see
/// [`crate::io::connect`]); `None` (failure recorded) when it is full or fails.
async fn connect_one(
    (ring, metrics): (&Ring, &Recorder),
    group: &Arc<Group>,
    (i, timeout, ack_on_head): (usize, Duration, bool),
    failures: &mut Failures,
) -> Option<Connected> {
    // A server can fill up between the pick and here: skip it, it did not fail.
    let live = group.try_enter(i)?;
    let addr = group.server(i).addr();
    let started = Instant::now();
    let connected = match crate::io::connect(ring, addr, group.next_source(), (timeout, ack_on_head)).await {
        Ok(tcp) => secure(ring, group, i, tcp, started + timeout).await,
        Err(e) => Err(e),
    };
    match connected {
        Ok(stream) => {
            metrics.upstream_connected(started.elapsed());
            Some(Connected {
                waiter: Waiter::default(),
                stream,
                server: i,
                started,
                live,
                response: None,
                read: Vec::new(),
                read_cut: false,
                early: Vec::new(),
                framing: Framing::Empty,
                method: Method::default(),
                request: Vec::new(),
                persistent: false,
                reused: None,
            })
        }
        Err(e) => {
            drop(live);
            group.report_failure(i);
            tracing::warn!(upstream = %addr, group = %group.name, error = %e, "upstream connect failed; trying the next server");
            let failure = format!("{addr}: {e}");
            if e.kind() == io::ErrorKind::TimedOut {
                failures.timeouts.push(failure);
            } else {
                failures.other.push(failure);
            }
            None
        }
    }
}

/// The upstream connection as the group speaks it: `tcp` itself, or TLS over it once
/// the handshake (within `deadline`, the connect timeout) verified the server. A failed
/// handshake is an `io::Error` saying why (timed out: `TimedOut`), like a failed connect.
async fn secure(
    ring: &Ring,
    group: &Group,
    i: usize,
    tcp: tokio_uring::net::TcpStream,
    deadline: Instant,
) -> io::Result<PeerIo> {
    let Some(tls) = &group.tls else { return Ok(PeerIo::Plain(tcp)) };
    let server = group.server(i);
    let name = tls.name_for(&server.address, server.addr());
    // Boxed: the handshake's future is 4 KB, and unboxed it would sit in every plain
    // connection's connect future too (and be copied with it at each move).
    match Box::pin(crate::tls::handshake::connect(tcp, (tls.config.clone(), name), ring, deadline, &tls.stats)).await {
        Ok(stream) => Ok(PeerIo::Tls(Box::new(stream))),
        Err(failed) => {
            let reason = crate::tls::UpstreamHandshakeFailure::of(&failed).as_str();
            tracing::debug!(upstream = %server.addr(), group = %group.name, reason, "upstream TLS handshake failed: {}", failed.detail);
            let kind = if failed.why == crate::tls::HandshakeFailure::Timeout {
                io::ErrorKind::TimedOut
            } else {
                io::ErrorKind::ConnectionRefused
            };
            Err(io::Error::new(kind, format!("TLS handshake: {}", failed.detail)))
        }
    }
}
