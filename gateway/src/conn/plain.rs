//! Phase 5 for plain HTTP, one exchange: runs once connect has forwarded the rewritten
//! request head: the request body goes upstream exactly as its framing says, the response
//! head is awaited within `timeouts.response` (504 past it), interim 1xx responses and
//! then the final response go back exactly as framed, and the exchange ends.
//!
//! Bytes the client sends past its request's body — a pipelined request — never reach
//! the upstream: the upstream only ever sees heads that wsgate parsed and rewrote. The
//! connection closes after the response (`Connection: close` was sent upstream), so a
//! pipelined request is left unanswered, which RFC 9112 §9.3.2 lets a client retry.
//!
//! Must never: forward a byte the request's framing does not cover, wait without a
//! bound, or panic on network input.

use std::pin::pin;
use std::time::{Duration, Instant};

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use super::Worker;
use super::client_io::ClientIo;
use super::response::{pass, peek_head};
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

/// What an exchange did.
#[derive(Debug, Default)]
pub struct Exchanged {
    /// The final response's status.
    pub status: u16,
    /// Request body bytes forwarded (the head not included).
    pub bytes_in: u64,
    /// Response bytes passed to the client, heads included.
    pub bytes_out: u64,
    /// When the first response head was complete.
    pub first_response: Option<Instant>,
    /// The client sent bytes past its request (not forwarded).
    pub pipelined: bool,
}

/// Runs the exchange. `early` is what the client sent right after its head (already
/// read); `framing` is the request's body framing.
pub async fn exchange(
    client: &ClientIo,
    upstream: &TcpStream,
    framing: Framing,
    early: &[u8],
    method: &str,
    worker: &Worker,
    cfg: &crate::config::Config,
) -> Result<Exchanged, ProxyError> {
    let limits = Limits {
        response: cfg.timeouts.response,
        idle: cfg.timeouts.idle,
        max_response: cfg.limits.max_response_header_bytes,
    };
    let mut done = Exchanged::default();
    let mut body = BodyTracker::new(framing);
    let first = body.advance(early).map_err(|e| client_fault(&e))?;
    done.pipelined = first < early.len();
    if first > 0 {
        crate::io::write_all(upstream, early[..first].to_vec()).await.map_err(|e| forwarding(&e))?;
        done.bytes_in = first as u64;
    }

    // The upstream may answer before the body is complete (413, 401): watch for its
    // head while the body streams; its timeout starts once the body is through.
    let far = Instant::now() + Duration::from_hours(24 * 365);
    let mut response = pin!(peek_head(&worker.ring, upstream, limits.max_response, far, method));
    let head = if body.is_done() {
        timed(limits.response, &mut response).await?
    } else {
        let mut pump = pin!(pump_body(client, upstream, &mut body, limits.idle, worker));
        tokio::select! {
            pumped = &mut pump => {
                let (forwarded, pipelined) = pumped?;
                done.bytes_in += forwarded;
                done.pipelined |= pipelined;
                timed(limits.response, &mut response).await?
            }
            head = &mut response => head?,
        }
    };
    done.first_response = Some(Instant::now());
    let mut head = head;
    for _ in 0..MAX_INTERIM {
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
    done.bytes_out += pass(upstream, client, &head, worker, cfg.timeouts.response).await?;
    Ok(done)
}

/// Passes an interim head, which was peeked and so is queued whole: exactly its bytes,
/// so the final response behind it stays queued.
async fn pass_interim(
    upstream: &TcpStream,
    client: &ClientIo,
    head: &ResponseHead,
    worker: &Worker,
) -> Result<u64, ProxyError> {
    let mut buf = vec![0u8; head.len];
    let mut got = 0;
    while got < head.len {
        match crate::io::recv(upstream, &mut buf[got..], libc::MSG_DONTWAIT) {
            Ok(0) | Err(_) => {
                return Err(ProxyError::new(ErrorKind::UpstreamClosed, "interim response head vanished"));
            }
            Ok(n) => got += n,
        }
    }
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
/// past it. Returns the bytes forwarded and whether the client sent more than its body.
async fn pump_body(
    client: &ClientIo,
    upstream: &TcpStream,
    body: &mut BodyTracker,
    idle: Duration,
    worker: &Worker,
) -> Result<(u64, bool), ProxyError> {
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
        let (res, slice) = upstream.write_all(buf.slice(..take)).await;
        pool.put(slice.into_inner());
        res.map_err(|e| forwarding(&e))?;
        forwarded += take as u64;
        if take < n {
            return Ok((forwarded, true));
        }
    }
    Ok((forwarded, false))
}

/// A framing error in the request body is the client's.
fn client_fault(e: &ProxyError) -> ProxyError {
    ProxyError::new(ErrorKind::BadRequest, format!("request body: {}", e.detail))
}

fn forwarding(e: &std::io::Error) -> ProxyError {
    ProxyError::new(ErrorKind::UpstreamClosed, format!("forwarding the request: {e}"))
}
