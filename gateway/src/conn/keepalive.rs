//! Between two requests of a kept-alive client connection: runs after a plain exchange
//! that left both the request and the response completely framed. Waits, at most
//! `timeouts.client_keepalive`, for the first byte of the next request (already there
//! when the client pipelined it), and tells `serve` whether a next request follows.
//!
//! Returns [`Next::Request`] with the next request's first bytes in the session, or
//! [`Next::End`] with why the connection ended (the client's FIN or reset, the idle
//! timeout, the drain). Must never wait without a bound, read more than what is
//! queued, or let bytes of one request reach an upstream as part of another.

use std::time::{Duration, Instant};

use tokio::time::timeout_at;

use super::Worker;
use super::peer_io::PeerIo;
use crate::close::Close;
use crate::http::request::RequestHead;
use crate::shutdown::Phase;

/// What a client connection carries from one request to the next.
#[derive(Debug, Default)]
pub struct Session {
    /// Bytes the client sent past the last request: the start of the next one.
    pub leftover: Vec<u8>,
    /// Requests served on this connection so far.
    pub served: u32,
    /// The last request ended with the connection kept for another.
    pub kept: bool,
}

impl Session {
    /// The client connection ends after the response to `head`: the client said
    /// `Connection: close`, or spoke HTTP/1.0 (kept-alive 1.0 is not offered: the
    /// response says `Connection: close`), or this is the last request allowed by
    /// `limits.max_requests`, or keep-alive is off (`timeouts.client_keepalive` zero).
    pub fn closing(&self, head: &RequestHead, cfg: &crate::config::Config) -> bool {
        let asked = head.headers_named("connection").any(|v| crate::http::has_token(v, "close"));
        asked
            || head.minor_version == 0
            || self.served.saturating_add(1) >= cfg.limits.max_requests
            || cfg.timeouts.client_keepalive.is_zero()
    }
}

/// What follows a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A next request: its first bytes are in [`Session::leftover`].
    Request,
    /// The connection is over, as this says.
    End(Close),
}

/// Waits for the next request's first byte.
pub async fn next_request(client: &PeerIo, session: &mut Session, worker: &Worker, idle: Duration) -> Next {
    if !session.leftover.is_empty() {
        return Next::Request;
    }
    let mut shutdown = worker.shutdown.clone();
    if shutdown.phase() >= Phase::Draining {
        return Next::End(Close::Drain);
    }
    let deadline = Instant::now() + idle;
    // No buffer while idle: it is taken once the client's bytes are there.
    let buf = &mut session.leftover;
    loop {
        tokio::select! {
            ready = timeout_at(deadline.into(), client.readable(&worker.ring)) => match ready {
                Err(_) => return Next::End(Close::IdleTimeout),
                Ok(Err(_)) => return Next::End(Close::ClientReset),
                Ok(Ok(_)) => {}
            },
            () = shutdown.reached(Phase::Draining) => return Next::End(Close::Drain),
        }
        buf.reserve(1024);
        match client.recv_into(buf) {
            Ok(0) => return Next::End(Close::ClientFin),
            Ok(_) => return Next::Request,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
            Err(_) => return Next::End(Close::ClientReset),
        }
    }
}
