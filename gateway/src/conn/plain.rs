//! Phase 5 for plain HTTP, one exchange: runs once connect has forwarded the rewritten
//! request head: the request body goes upstream exactly as its framing says, the response
//! head is awaited within `timeouts.response` (504 past it), interim 1xx responses and
//! then the final response go back exactly as framed (but for the final head's
//! `Connection` headers, set for the client connection: see `response::pass`), and the
//! exchange ends, saying whether both connections are at a message boundary.
//!
//! Bytes the client sends past its request's body — a pipelined request — never reach
//! the upstream raw: they are kept ([`Exchanged::leftover`]) and parsed as the next
//! request's head once this response is through (see `keepalive`), so the upstream only
//! ever sees heads that wsgate parsed and rewrote.
//!
//! Must never: forward a byte the request's framing does not cover, wait without a
//! bound, or panic on network input.

use std::pin::pin;
use std::time::{Duration, Instant};

use super::Worker;
use super::peer_io::PeerIo;
use super::response::{pass, peek_head, take_head};
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::{BodyTracker, Framing};
use crate::http::response::ResponseHead;

/// Interim (1xx) responses passed on before the final one; more is an upstream fault.
const MAX_INTERIM: usize = 8;

/// Bounds of one exchange.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// For the response head, counted from the end of the request body.
    response: Duration,
    /// Between two reads of the request body.
    idle: Duration,
    /// Largest response head.
    max_response: usize,
}

/// What an exchange did (filled in as it goes: an error leaves what was done by then).
#[derive(Debug, Default)]
#[allow(clippy::struct_excessive_bools, reason = "independent facts of one exchange, each read once")]
pub struct Exchanged {
    /// The final response's status.
    pub status: u16,
    /// Request body bytes forwarded (the head not included).
    pub bytes_in: u64,
    /// Response bytes passed to the client, heads included.
    pub bytes_out: u64,
    /// When the first response head was complete.
    pub first_response: Option<Instant>,
    /// Request body bytes were read from the client beyond those that came with the
    /// head: the request can no longer be sent again.
    pub body_read: bool,
    /// The whole request body went upstream.
    pub request_complete: bool,
    /// The whole response went back as framed, nothing past it from the upstream.
    pub response_complete: bool,
    /// The final response allows another request on the upstream connection.
    pub response_keep_alive: bool,
    /// The client was told (or will find) that its connection ends after this response.
    pub closing: bool,
    /// Bytes the client sent past this request: the start of its next request.
    pub leftover: Vec<u8>,
}

/// One request as the exchange needs it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The request's body framing.
    pub framing: Framing,
    /// What the client sent right after its head (already read).
    pub early: &'a [u8],
    /// How the response is framed (HEAD).
    pub method: &'a str,
    /// The client connection ends after this response (the client asked, HTTP/1.0,
    /// the last of `limits.max_requests`); the drain also ends it.
    pub closing: bool,
}

/// Runs the exchange, recording in `done` what it did.
pub async fn exchange(
    client: &PeerIo,
    upstream: &PeerIo,
    req: Request<'_>,
    (worker, cfg): (&Worker, &crate::config::Config),
    done: &mut Exchanged,
) -> Result<(), ProxyError> {
    let limits = Limits {
        response: cfg.timeouts.response,
        idle: cfg.timeouts.idle,
        max_response: cfg.limits.max_response_header_bytes,
    };
    let (early, method) = (req.early, req.method);
    let mut body = BodyTracker::new(req.framing);
    let first = body.advance(early).map_err(|e| client_fault(&e))?;
    done.leftover = early[first..].to_vec();
    if first > 0 {
        upstream.write_all(&worker.ring, early[..first].to_vec()).await.0.map_err(|e| forwarding(&e))?;
        done.bytes_in = first as u64;
    }

    // The upstream may answer before the body is complete (413, 401): watch for its
    // head while the body streams; its timeout starts once the body is through.
    let far = Instant::now() + Duration::from_hours(24 * 365);
    let mut response = pin!(peek_head(&worker.ring, upstream, limits.max_response, far, method));
    // Interim (1xx) responses passed on, while the body streams and after it.
    let mut interim = 0;
    let head = if body.is_done() {
        done.request_complete = true;
        timed(limits.response, &mut response).await?
    } else {
        done.body_read = true;
        let mut pump = pin!(pump_body(client, upstream, &mut body, limits.idle, worker));
        loop {
            tokio::select! {
                pumped = &mut pump => {
                    let (forwarded, leftover) = pumped?;
                    done.bytes_in += forwarded;
                    done.leftover = leftover;
                    done.request_complete = true;
                    break timed(limits.response, &mut response).await?;
                }
                head = &mut response => {
                    let head = head?;
                    // An interim answer while the body streams (`100 Continue` to
                    // `Expect: 100-continue`) asks for the body: it goes on to the
                    // client and the body keeps streaming.
                    if (100..200).contains(&head.status) && head.status != 101 && interim < MAX_INTERIM {
                        interim += 1;
                        done.first_response.get_or_insert_with(Instant::now);
                        done.bytes_out += pass_interim(upstream, client, &head, worker).await?;
                        response.set(peek_head(&worker.ring, upstream, limits.max_response, far, method));
                        continue;
                    }
                    // Answered before the body was through: the rest of it is unread, so
                    // the client connection ends after this response.
                    break head;
                }
            }
        }
    };
    done.first_response.get_or_insert_with(Instant::now);
    let mut head = head;
    // Interims passed while the body streamed count toward the same bound.
    for _ in interim..MAX_INTERIM {
        if head.status == 101 {
            return Err(ProxyError::new(ErrorKind::UpstreamInvalid, "101 to a request that asked for no upgrade"));
        }
        if !(100..200).contains(&head.status) {
            break;
        }
        done.bytes_out += pass_interim(upstream, client, &head, worker).await?;
        let deadline = Instant::now() + limits.response;
        head = peek_head(&worker.ring, upstream, limits.max_response, deadline, method).await?;
    }
    if (100..200).contains(&head.status) {
        return Err(ProxyError::new(ErrorKind::UpstreamInvalid, format!("more than {MAX_INTERIM} interim responses")));
    }
    done.status = head.status;
    done.response_keep_alive = head.keep_alive;
    let draining = worker.shutdown.phase() >= crate::shutdown::Phase::Draining;
    // The client connection ends after this response when it asked to, when the drain
    // has begun, when its body was not read through, or when the response is framed
    // by the close or comes from an HTTP/1.0 upstream (whose framing a 1.1 client reads
    // as ending the connection).
    done.closing =
        req.closing || draining || !done.request_complete || !head.http11 || head.framing == Framing::UntilClose;
    let passed = pass(upstream, client, (&head, &[]), (worker, cfg.timeouts.response), Some(done.closing)).await?;
    done.bytes_out += passed.sent;
    done.response_complete = passed.complete;
    Ok(())
}

/// Passes an interim head, which was peeked and so is queued whole: exactly its bytes,
/// so the final response behind it stays queued.
async fn pass_interim(
    upstream: &PeerIo,
    client: &PeerIo,
    head: &ResponseHead,
    worker: &Worker,
) -> Result<u64, ProxyError> {
    let buf = take_head(upstream, head.len)?;
    client
        .write_all(&worker.ring, buf)
        .await
        .0
        .map_err(|e| ProxyError::new(ErrorKind::ClientClosed, format!("passing an interim response: {e}")))?;
    Ok(head.len as u64)
}

/// Waits for the response head at most `limit`.
async fn timed(
    limit: Duration,
    response: impl Future<Output = Result<ResponseHead, ProxyError>>,
) -> Result<ResponseHead, ProxyError> {
    tokio::time::timeout(limit, response).await.unwrap_or_else(|_| {
        Err(ProxyError::new(ErrorKind::UpstreamTimeout, format!("no response head within {limit:?}")))
    })
}

/// Streams the rest of the request body from the client to the upstream, and nothing
/// past it. Returns the bytes forwarded and what the client sent past its body.
async fn pump_body(
    client: &PeerIo,
    upstream: &PeerIo,
    body: &mut BodyTracker,
    idle: Duration,
    worker: &Worker,
) -> Result<(u64, Vec<u8>), ProxyError> {
    let pool = &worker.buffers;
    let mut forwarded = 0u64;
    while !body.is_done() {
        match tokio::time::timeout(idle, client.readable(&worker.ring)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ProxyError::new(ErrorKind::ClientClosed, format!("waiting for the body: {e}"))),
            Err(_) => return Err(ProxyError::new(ErrorKind::HeaderTimeout, "request body stalled")),
        }
        let mut buf = pool.take();
        let n = match client.recv_into(&mut buf) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {
                pool.put(buf);
                continue;
            }
            res => res,
        };
        let n = match n {
            Ok(0) => {
                pool.put(buf);
                return Err(ProxyError::new(ErrorKind::ClientClosed, "closed in the middle of the request body"));
            }
            Ok(n) => n,
            Err(e) => {
                pool.put(buf);
                return Err(ProxyError::new(ErrorKind::ClientClosed, format!("reading the request body: {e}")));
            }
        };
        let take = match body.advance(&buf[..n]) {
            Ok(k) => k,
            Err(e) => {
                pool.put(buf);
                return Err(client_fault(&e));
            }
        };
        let leftover = buf[take..n].to_vec();
        buf.truncate(take);
        let (res, buf) = upstream.write_all(&worker.ring, buf).await;
        pool.put(buf);
        res.map_err(|e| forwarding(&e))?;
        forwarded += take as u64;
        if take < n {
            return Ok((forwarded, leftover));
        }
    }
    Ok((forwarded, Vec::new()))
}

/// A framing error in the request body is the client's.
fn client_fault(e: &ProxyError) -> ProxyError {
    ProxyError::new(ErrorKind::BadRequest, format!("request body: {}", e.detail))
}

fn forwarding(e: &std::io::Error) -> ProxyError {
    ProxyError::new(ErrorKind::UpstreamClosed, format!("forwarding the request: {e}"))
}
