//! Phase 4, the response: runs for an upgrade once the upstream's response head has
//! been read (by `connect`, which needs it to know whether to retry): off a plain
//! upstream's socket with what came with it ([`read_head`]), or peeked (left queued
//! for the kernel splice, or held by a TLS upstream's stream). Records the status and
//! the upstream response time. A 101 goes on to `relay_choice`, which delivers the head
//! and what followed it in order; any other status is passed back exactly (head, then
//! the body as framed) and both sides are closed. [`pass`] is also how a plain response
//! goes back: the one change it may make there is to the head's `Connection` headers,
//! which speak of the upstream connection and are set anew for the client's (keep-alive
//! or close).
//!
//! Returns [`Answer::Switching`] or [`Answer::Passed`]. Errors: 502 (malformed or too
//! large head, bad body framing before anything was passed), 504 (no head in time).
//! Must never drop a byte that came after a 101, change a byte of a response, or send
//! more than its framing says (a body that breaks its framing ends the connection).

use std::io;
use std::time::Instant;

use tokio::time::timeout_at;
use tokio_uring::net::TcpStream;

use super::Worker;
use super::connect::Connected;
use super::peer_io::PeerIo;
use super::teardown::Facts;
use crate::close::Close;
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::BodyTracker;
use crate::http::response::{self, ResponseHead};
use crate::readiness::{self, Ring};
use crate::stats::Stats;
use crate::tls::TlsStream;
use crate::wait::{Waiter, drained};

/// What the upstream answered to an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 101: relay both ways.
    Switching,
    /// Any other status: passed back and closed; the connection is over.
    Passed,
}

/// Acts on the upstream's answer to an upgrade (its head is `head`; `upstream.read`
/// holds it when it was read off the socket).
pub async fn answer(
    client: &PeerIo,
    upstream: &Connected,
    head: &ResponseHead,
    worker: &Worker,
    facts: &mut Facts,
) -> Result<Answer, ProxyError> {
    facts.upstream_response_time = Some(upstream.started.elapsed().as_secs_f64());
    facts.status = head.status;
    if head.status == 101 {
        Stats::bump(&worker.stats.upgrades_succeeded);
        super::teardown::opened(facts);
        return Ok(Answer::Switching);
    }
    // Passed back as-is; both sides closed after it.
    let stream = &upstream.stream;
    let (worker_timeout, read) = ((worker, facts.generation.config.timeouts.response), upstream.read.as_slice());
    facts.bytes_sent = Box::pin(pass(stream, client, (head, read), worker_timeout, None)).await?.sent;
    facts.bytes_out = facts.bytes_sent;
    facts.close = Close::Done;
    client.shutdown(std::net::Shutdown::Both);
    stream.shutdown(std::net::Shutdown::Both);
    Ok(Answer::Passed)
}

/// Waits for the upstream's response head and parses it without consuming it (a TLS
/// upstream's decrypted bytes are held by its stream, to be read again).
pub async fn peek_head(
    ring: &Ring,
    upstream: &PeerIo,
    max: usize,
    deadline: Instant,
    method: &str,
) -> Result<ResponseHead, ProxyError> {
    match upstream {
        PeerIo::Plain(tcp) => peek_tcp(ring, tcp, max, deadline, method).await,
        PeerIo::Tls(tls) => peek_tls(ring, tls, max, deadline, method).await,
    }
}

/// Waits for a plain upstream's response head and reads it off the socket (no second
/// read of the same bytes, as a peek would need). Returns the head; the bytes read,
/// which start with it (what follows the head in them is the upstream's next bytes:
/// the first frames after a 101, or the start of a body, the caller's to pass on in
/// order); and whether the last read filled all the room it had. Such a read may have
/// cut a segment whose rest is queued still: that socket must be read on to a short
/// read before the splice takes it (DESIGN: a socket must not enter the sockhash
/// after a partial read). Waits as `waiter` does: on tokio's reactor once it was
/// settled there, else on the poll ring.
pub async fn read_head(
    (ring, waiter): (&Ring, &Waiter),
    upstream: &TcpStream,
    max: usize,
    deadline: Instant,
    method: &str,
) -> Result<(ResponseHead, Vec<u8>, bool), ProxyError> {
    // Most response heads fit in 1 KiB; grow to `max` only for one that does not.
    let max = max.max(1);
    let mut buf = Vec::with_capacity(max.min(1024));
    loop {
        let mut guard = match timeout_at(deadline.into(), waiter.readable(ring, upstream)).await {
            Err(_) => return Err(ProxyError::new(ErrorKind::UpstreamTimeout, "no response head in time")),
            Ok(Err(e)) => {
                return Err(ProxyError::new(ErrorKind::UpstreamClosed, format!("waiting for response: {e}")));
            }
            Ok(Ok(guard)) => guard,
        };
        if buf.len() == buf.capacity() {
            buf.reserve_exact(max - buf.len());
        }
        // Never past `max`: a head that does not end within it is refused below.
        let room = (max - buf.len()).min(buf.capacity() - buf.len());
        let filled = match crate::io::recv_into_max(upstream, &mut buf, room) {
            Ok(0) if buf.is_empty() => {
                return Err(ProxyError::new(ErrorKind::UpstreamClosed, "closed before sending a response"));
            }
            Ok(0) => {
                return Err(ProxyError::new(ErrorKind::UpstreamClosed, "closed in the middle of the response head"));
            }
            Ok(n) if n == room => true,
            Ok(_) => {
                // It took all that was queued: the next wait lasts until more comes.
                drained(&mut guard);
                false
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                drained(&mut guard);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ProxyError::new(ErrorKind::UpstreamClosed, format!("reading response: {e}"))),
        };
        match response::parse(&buf, method) {
            Err(e) => return Err(e),
            Ok(Some(head)) => return Ok((head, buf, filled)),
            Ok(None) if buf.len() >= max => {
                return Err(ProxyError::new(
                    ErrorKind::UpstreamInvalid,
                    format!("response head larger than {max} bytes"),
                ));
            }
            // Partial head: the next readiness means bytes past those taken (or the
            // end, which the next read reports).
            Ok(None) => {}
        }
    }
}

/// [`peek_head`] from a TLS upstream: decrypts onto the stream's held bytes until they
/// hold a whole head.
async fn peek_tls(
    ring: &Ring,
    upstream: &TlsStream,
    max: usize,
    deadline: Instant,
    method: &str,
) -> Result<ResponseHead, ProxyError> {
    loop {
        let looked = upstream.peek_more(|held, ended| match response::parse(held, method) {
            Ok(None) if held.len() >= max => {
                Err(ProxyError::new(ErrorKind::UpstreamInvalid, format!("response head larger than {max} bytes")))
            }
            Ok(None) if ended && held.is_empty() => {
                Err(ProxyError::new(ErrorKind::UpstreamClosed, "closed before sending a response"))
            }
            Ok(None) if ended => {
                Err(ProxyError::new(ErrorKind::UpstreamClosed, "closed in the middle of the response head"))
            }
            other => other,
        });
        match looked {
            Ok(Some(Ok(Some(head)))) => return Ok(head),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(None))) => continue,
            Ok(None) => {}
            Err(e) => return Err(ProxyError::new(ErrorKind::UpstreamClosed, format!("reading response: {e}"))),
        }
        match timeout_at(deadline.into(), ring.ready(upstream.tcp(), readiness::READABLE)).await {
            Err(_) => return Err(ProxyError::new(ErrorKind::UpstreamTimeout, "no response head in time")),
            Ok(Err(e)) => {
                return Err(ProxyError::new(ErrorKind::UpstreamClosed, format!("waiting for response: {e}")));
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// [`peek_head`] from a plain upstream: `MSG_PEEK`, woken by `SO_RCVLOWAT` only when
/// more than a partial head has arrived.
async fn peek_tcp(
    ring: &Ring,
    upstream: &TcpStream,
    max: usize,
    deadline: Instant,
    method: &str,
) -> Result<ResponseHead, ProxyError> {
    // Most response heads fit in 1 KiB; grow to `max` only for one that does not.
    let mut buf = vec![0u8; max.min(1024)];
    let mut lowat_raised = false;
    let result = loop {
        let revents = match timeout_at(deadline.into(), ring.ready(upstream, readiness::READABLE)).await {
            Err(_) => break Err(ProxyError::new(ErrorKind::UpstreamTimeout, "no response head in time")),
            Ok(Err(e)) => break Err(ProxyError::new(ErrorKind::UpstreamClosed, format!("waiting for response: {e}"))),
            Ok(Ok(ev)) => ev,
        };
        let n = match crate::io::peek(upstream, &mut buf) {
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
                if let Err(e) = crate::io::set_rcvlowat(upstream, n + 1) {
                    break Err(ProxyError::new(ErrorKind::Internal, format!("SO_RCVLOWAT: {e}")));
                }
                lowat_raised = true;
            }
        }
    };
    if lowat_raised {
        let _ = crate::io::set_rcvlowat(upstream, 1);
    }
    result
}

/// What passing a response did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Passed {
    /// Bytes sent to the client, head included.
    pub sent: u64,
    /// The whole response went to the client as framed, and the upstream sent nothing
    /// past it: both connections are at a message boundary.
    pub complete: bool,
}

/// Takes exactly the `len` bytes of a peeked head (queued whole) from `upstream`.
pub(crate) fn take_head(upstream: &PeerIo, len: usize) -> Result<Vec<u8>, ProxyError> {
    let upstream = match upstream {
        PeerIo::Plain(tcp) => tcp,
        PeerIo::Tls(tls) => {
            return tls
                .take_held(len)
                .ok_or_else(|| ProxyError::new(ErrorKind::UpstreamClosed, "response head vanished"));
        }
    };
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match crate::io::recv(upstream, &mut buf[got..], 0) {
            Ok(0) | Err(_) => return Err(ProxyError::new(ErrorKind::UpstreamClosed, "response head vanished")),
            Ok(n) => got += n,
        }
    }
    Ok(buf)
}

/// A response whose body broke its framing after its head went to the client: what
/// was passed stands, incomplete, and the connection ends (no error response can
/// follow a head).
fn broken_body(passed: Passed, e: &ProxyError) -> Passed {
    tracing::info!(error = %e.detail, "upstream response body broke its framing; closing the connection");
    Passed { complete: false, ..passed }
}

/// Passes a (non-101) response from the upstream to the client: the head (exactly when
/// `closing` is `None`; on the plain path, `Some`, its `Connection` headers set for the
/// client connection, see [`response::for_client`]), then the body as framed, exactly,
/// then stops. `read` holds the bytes already read off the upstream, starting with the
/// head ([`read_head`]); empty, the head is still queued (peeked).
pub(super) async fn pass(
    upstream: &PeerIo,
    client: &PeerIo,
    (head, read): (&ResponseHead, &[u8]),
    (worker, read_timeout): (&Worker, std::time::Duration),
    closing: Option<bool>,
) -> Result<Passed, ProxyError> {
    let (head_bytes, body_start) = match read.split_at_checked(head.len) {
        _ if read.is_empty() => (take_head(upstream, head.len)?, &[][..]),
        Some((taken, rest)) => (taken.to_vec(), rest),
        None => return Err(ProxyError::new(ErrorKind::Internal, "response head longer than what was read")),
    };
    let head_bytes = match closing {
        Some(closing) => response::for_client(&head_bytes, closing),
        None => head_bytes,
    };
    let mut passed = Passed { sent: head_bytes.len() as u64, complete: false };
    if client.write_all(&worker.ring, head_bytes).await.0.is_err() {
        passed.sent = 0;
        return Ok(passed);
    }
    let mut body = BodyTracker::new(head.framing);
    // What came with the head first, exactly as framed. Past the head, a body that
    // breaks its framing ends the connection (the client has the head: no 502 follows).
    if !body_start.is_empty() {
        let take = match body.advance(body_start) {
            Ok(take) => take,
            Err(e) => return Ok(broken_body(passed, &e)),
        };
        if take > 0 && client.write_slice(&worker.ring, &body_start[..take]).await.is_err() {
            return Ok(passed);
        }
        passed.sent += take as u64;
        if take < body_start.len() {
            // The upstream sent more than its response.
            return Ok(passed);
        }
    }
    while !body.is_done() {
        let mut buf = worker.buffers.take();
        let n = match upstream.recv_into(&mut buf) {
            Ok(n) if n > 0 => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                worker.buffers.put(buf);
                match tokio::time::timeout(read_timeout, upstream.readable(&worker.ring)).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(_)) | Err(_) => return Ok(passed),
                }
            }
            _ => {
                worker.buffers.put(buf);
                return Ok(passed);
            }
        };
        let take = match body.advance(&buf[..n]) {
            Ok(k) => k,
            Err(e) => {
                worker.buffers.put(buf);
                return Ok(broken_body(passed, &e));
            }
        };
        buf.truncate(take);
        let (res, buf) = client.write_all(&worker.ring, buf).await;
        worker.buffers.put(buf);
        if res.is_err() {
            return Ok(passed);
        }
        passed.sent += take as u64;
        if take < n {
            // The upstream sent more than its response: that connection is not reused.
            return Ok(passed);
        }
    }
    passed.complete = true;
    Ok(passed)
}
