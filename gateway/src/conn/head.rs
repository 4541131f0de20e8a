//! Phase 1, the request head: runs right after the accept (and, on a kept-alive
//! connection, once the next request's first byte came, see `keepalive`). Reads the client's head
//! within `timeouts.header`, at most `limits.max_header_bytes`, parses it, and notes
//! its request line, host and user agent for the access log.
//!
//! Returns the parsed head (its path normalised, see `http::path`) and the whole
//! buffer, which may hold bytes that followed the head (kept: connect decides what of
//! them may go upstream). Errors: 408 (not in time,
//! nothing sent), 431, 400, 499 (the client went away). Must never wait without a
//! deadline, grow a buffer past the limit, or panic on any byte the client sends.

use std::io;

use super::Worker;
use super::peer_io::PeerIo;
use super::teardown::Facts;
use crate::error::{ErrorKind, ProxyError};
use crate::http::request::{self, RequestHead};
use crate::readiness::Ring;
use tokio::time::timeout_at;

/// Reads and parses the request head, and records what the access log needs of it.
/// `start` is what the client already sent of it (a kept-alive connection's next request).
pub async fn read(
    client: &PeerIo,
    start: Vec<u8>,
    worker: &Worker,
    facts: &mut Facts,
) -> Result<(RequestHead, Vec<u8>), ProxyError> {
    let generation = facts.generation.clone();
    let limits = &generation.config.limits;
    let deadline = facts.started + generation.config.timeouts.header;
    let max = (limits.max_header_bytes, limits.max_headers);
    let (head, buf) = read_head(&worker.ring, client, start, max, deadline).await?;
    facts.request = head.request_line();
    facts.host = head.host().unwrap_or_default().into_owned();
    facts.user_agent = head.header("user-agent").map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    Ok((head, buf))
}

/// Reads the request head within `deadline`, at most `max` bytes, after `buf` (what
/// was already read of it, perhaps all of it: a pipelined request).
async fn read_head(
    ring: &Ring,
    client: &PeerIo,
    mut buf: Vec<u8>,
    (max, max_headers): (usize, usize),
    deadline: std::time::Instant,
) -> Result<(RequestHead, Vec<u8>), ProxyError> {
    if !buf.is_empty() {
        if let Some(head) = request::parse(&buf, max_headers)? {
            return Ok((head, buf));
        }
        if buf.len() >= max {
            return Err(ProxyError::new(ErrorKind::HeadersTooLarge, format!("request head larger than {max} bytes")));
        }
    }
    buf.reserve(max.min(1024).saturating_sub(buf.len()));
    // The head usually arrived with the connection: try to take it before waiting.
    let mut wait = false;
    loop {
        if wait {
            match timeout_at(deadline.into(), client.readable(ring)).await {
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
        match client.recv_into(&mut buf) {
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
        if let Some(head) = request::parse(&buf, max_headers)? {
            return Ok((head, buf));
        }
        if buf.len() >= max {
            return Err(ProxyError::new(ErrorKind::HeadersTooLarge, format!("request head larger than {max} bytes")));
        }
    }
}
