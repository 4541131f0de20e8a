//! The phases before bytes are relayed: read the request head, route, validate the
//! upgrade, connect upstream, forward the rewritten head, and wait for the response head.
//!
//! ```text
//!  accept ─▶ read_head ─▶ route ─▶ classify ─▶ connect ─▶ forward ─▶ peek response
//!              │ 408/431/400   │ 404   │ 400/426   │ 502/503/504          │ 502/504
//!              ▼               ▼       ▼           ▼                      ├─ 101 ──▶ relay / splice
//!            error response (client side)       error response          └─ other ─▶ passed back as-is, closed
//! ```
//!
//! Every phase is bounded by a timeout or a size limit, and every failure is a
//! [`ProxyError`]. For an upgrade, connect → forward → peek is one [`exchange`] that
//! moves to the next server (at most `tries`) while a server has answered nothing. The upstream's response head is only *peeked*: it stays queued in
//! the upstream socket, so the relay (userspace or kernel) delivers it to the client in
//! order with whatever the upstream sent right after it. Nothing here may panic on
//! network input.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::timeout_at;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::error::{ErrorKind, ProxyError};
use crate::http::body::BodyTracker;
use crate::http::request::{self, RequestHead};
use crate::http::response::{self, ResponseHead};
use crate::upstream::{ActiveGuard, Group, Pick};
use crate::{bufpool, net, readiness};

/// Reads the request head within `deadline`, at most `max` bytes. Returns the head and
/// the whole buffer, which may hold bytes that followed the head (never dropped).
pub async fn read_head(
    client: &TcpStream,
    limits: &crate::config::Limits,
    deadline: Instant,
) -> Result<(RequestHead, Vec<u8>), ProxyError> {
    let max = limits.max_header_bytes;
    let mut buf: Vec<u8> = Vec::with_capacity(max.min(1024));
    // The head usually arrived with the connection: try to take it before waiting.
    let mut wait = false;
    loop {
        if wait {
            match timeout_at(deadline.into(), readiness::ready(client, readiness::READABLE)).await {
                Err(_) => return Err(ProxyError::new(ErrorKind::HeaderTimeout, "request head not complete in time")),
                Ok(Err(e)) => {
                    return Err(ProxyError::new(ErrorKind::ClientClosed, format!("waiting for request: {e}")));
                }
                Ok(Ok(_)) => {}
            }
        }
        if buf.len() == buf.capacity() {
            buf.reserve_exact((buf.capacity() * 2).min(max) - buf.len());
        }
        match net::recv_into(client, &mut buf) {
            Ok(0) => {
                return Err(ProxyError::new(ErrorKind::ClientClosed, "closed before the request head was complete"));
            }
            Ok(_) => wait = false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait = true;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ProxyError::new(ErrorKind::ClientClosed, format!("reading request: {e}"))),
        }
        if let Some(head) = request::parse(&buf, limits.max_headers)? {
            return Ok((head, buf));
        }
        if buf.len() >= max {
            return Err(ProxyError::new(ErrorKind::HeadersTooLarge, format!("request head larger than {max} bytes")));
        }
    }
}

/// A connected upstream.
pub struct Connected {
    pub stream: TcpStream,
    pub server: usize,
    pub started: Instant,
    /// Counts the connection as live on its server (`least_conn`, `max_conns`) until dropped.
    pub live: ActiveGuard,
}

/// Connects to the group's servers in policy order (bounded by `tries`) until one
/// accepts; each failure is reported to passive health. All refused → 502; all timed
/// out → 504; no eligible server → 503.
pub async fn connect(group: &Arc<Group>, pick: &Pick<'_>, timeout: Duration) -> Result<Connected, ProxyError> {
    let mut failures = Failures::default();
    for i in group.attempt_order(pick) {
        if let Some(connected) = connect_one(group, i, timeout, &mut failures).await {
            return Ok(connected);
        }
    }
    Err(failures.into_error(group))
}

/// What an upgrade sends upstream and how long it waits for the answer.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// The rewritten request head and the bytes that followed it.
    pub request: &'a [u8],
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_response: usize,
    pub method: &'a str,
}

/// For a WebSocket upgrade: connect, forward the request, and peek the response head,
/// moving on to the next server (bounded by `tries`) when one fails before answering
/// anything — refused, connect timeout, reset or closed before a response head. That
/// is safe: nothing of a response has been consumed and an upgrade is a GET. A
/// malformed head or a response timeout ends the attempt (502/504): a slow or broken
/// server is not hammered with retries. Every failure is reported to passive health.
pub async fn exchange(
    group: &Arc<Group>,
    pick: &Pick<'_>,
    x: &Exchange<'_>,
) -> Result<(Connected, ResponseHead), ProxyError> {
    let mut failures = Failures::default();
    for i in group.attempt_order(pick) {
        let Some(connected) = connect_one(group, i, x.connect_timeout, &mut failures).await else { continue };
        let addr = group.server(i).addr();
        if let Err(e) = write_all(&connected.stream, x.request.to_vec()).await {
            group.report_failure(i);
            tracing::warn!(upstream = %addr, group = %group.name, error = %e, "forwarding the request failed; trying the next server");
            failures.other.push(format!("{addr}: forwarding request head: {e}"));
            continue;
        }
        let deadline = Instant::now() + x.response_timeout;
        match peek_response(&connected.stream, x.max_response, deadline, x.method).await {
            Ok(head) => return Ok((connected, head)),
            Err(e) if e.kind == ErrorKind::UpstreamClosed => {
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

/// One connect attempt to server `i`; `None` (failure recorded) when it is full or fails.
async fn connect_one(group: &Arc<Group>, i: usize, timeout: Duration, failures: &mut Failures) -> Option<Connected> {
    // A server can fill up between the pick and here: skip it, it did not fail.
    let live = group.try_enter(i)?;
    let addr = group.server(i).addr();
    let started = Instant::now();
    match net::connect(addr, group.next_source(), timeout).await {
        Ok(stream) => Some(Connected { stream, server: i, started, live }),
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

/// Writes all of `bytes` to `to`: at once when it fits in the socket buffer (the
/// usual case for a head), the rest by io_uring, which waits for room.
pub async fn write_all(to: &TcpStream, bytes: Vec<u8>) -> io::Result<()> {
    let sent = net::send_now(to, &bytes)?;
    if sent == bytes.len() {
        return Ok(());
    }
    to.write_all(bytes.slice(sent..)).await.0
}

/// Waits for the upstream's response head and parses it without consuming it.
pub async fn peek_response(
    upstream: &TcpStream,
    max: usize,
    deadline: Instant,
    method: &str,
) -> Result<ResponseHead, ProxyError> {
    // Most response heads fit in 1 KiB; grow to `max` only for one that does not.
    let mut buf = vec![0u8; max.min(1024)];
    let mut lowat_raised = false;
    let result = loop {
        let revents = match timeout_at(deadline.into(), readiness::ready(upstream, readiness::READABLE)).await {
            Err(_) => break Err(ProxyError::new(ErrorKind::UpstreamTimeout, "no response head in time")),
            Ok(Err(e)) => break Err(ProxyError::new(ErrorKind::UpstreamClosed, format!("waiting for response: {e}"))),
            Ok(Ok(ev)) => ev,
        };
        let n = match net::peek(upstream, &mut buf) {
            Ok(0) => break Err(ProxyError::new(ErrorKind::UpstreamClosed, "closed before sending a response")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => break Err(ProxyError::new(ErrorKind::UpstreamClosed, format!("reading response: {e}"))),
        };
        match response::parse(&buf[..n], method) {
            Err(e) => break Err(e),
            Ok(Some(head)) => break Ok(head),
            Ok(None) if n >= max => {
                break Err(ProxyError::new(
                    ErrorKind::UpstreamInvalid,
                    format!("response head larger than {max} bytes"),
                ));
            }
            Ok(None) if n == buf.len() => buf.resize(max, 0),
            Ok(None) if revents & readiness::CLOSED != 0 => {
                break Err(ProxyError::new(ErrorKind::UpstreamClosed, "closed in the middle of the response head"));
            }
            // Partial head: be woken only when more than what is queued has arrived.
            Ok(None) => {
                if let Err(e) = net::set_rcvlowat(upstream, n + 1) {
                    break Err(ProxyError::new(ErrorKind::Internal, format!("SO_RCVLOWAT: {e}")));
                }
                lowat_raised = true;
            }
        }
    };
    if lowat_raised {
        let _ = net::set_rcvlowat(upstream, 1);
    }
    result
}

/// Passes a (non-101) response from the upstream to the client exactly: the head,
/// then the body as framed, then stops. Returns the bytes sent to the client.
pub async fn pass_response(
    upstream: &TcpStream,
    client: &TcpStream,
    head: &ResponseHead,
    read_timeout: Duration,
) -> Result<u64, ProxyError> {
    let mut head_left = head.len;
    let mut body = BodyTracker::new(head.framing);
    let mut sent = 0u64;
    while head_left > 0 || !body.is_done() {
        match tokio::time::timeout(read_timeout, readiness::ready(upstream, readiness::READABLE)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
        let (res, buf) = upstream.read(bufpool::take()).await;
        let n = match res {
            Ok(n) if n > 0 => n,
            _ => {
                bufpool::put(buf);
                break;
            }
        };
        let in_head = head_left.min(n);
        head_left -= in_head;
        let in_body = match body.advance(&buf[in_head..n]) {
            Ok(k) => k,
            Err(e) => {
                bufpool::put(buf);
                return Err(e);
            }
        };
        let take = in_head + in_body;
        if take == 0 {
            bufpool::put(buf);
            break;
        }
        let (res, slice) = client.write_all(buf.slice(..take)).await;
        bufpool::put(slice.into_inner());
        if res.is_err() {
            break;
        }
        sent += take as u64;
    }
    Ok(sent)
}
