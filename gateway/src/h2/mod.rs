//! HTTP/2 on TLS listeners (ALPN `h2`), with the `h2` crate as hyper uses it.
//!
//! ```text
//!  TLS handshake chose h2 ─▶ serve: SETTINGS (ENABLE_CONNECT_PROTOCOL, streams, header
//!  list, windows) ─▶ accept streams ─┬─▶ stream::serve, one task per stream:
//!                                     │     extended CONNECT :protocol websocket (RFC 8441)
//!                                     │       ─▶ an HTTP/1.1 Upgrade to the upstream, 200 on
//!                                     │          its 101, then DATA ⇄ upstream bytes
//!                                     │     any other method ─▶ an HTTP/1.0 request upstream,
//!                                     │          its response as HEADERS + DATA
//!  drain ─▶ GOAWAY (no new streams); each WebSocket stream at its turn: Close 1001
//!          both ways at frame boundaries (relay.rs), then END_STREAM
//!  resets over http2.max_resets_per_second ─▶ GOAWAY ENHANCE_YOUR_CALM, connection closed
//! ```
//!
//! Each stream goes through the same phases as an HTTP/1.1 connection: its request
//! becomes an HTTP/1.1 head (or 1.0, for plain requests, so the upstream never answers
//! chunked), which `http::request::parse` parses, and then routing, admission, the
//! rewrite (`X-Forwarded-*`, `X-Forwarded-Proto: https`) and `conn::connect` treat it
//! exactly like one that came over HTTP/1.1: nothing reaches an upstream that wsgate
//! did not parse, and the upstream needs no HTTP/2. The WebSocket's frames are the
//! same bytes on both sides (RFC 8441 §5), so they are relayed unchanged; h2's flow
//! control is the backpressure (a stream's window is released only once the upstream
//! took its bytes; wsgate sends only what the client's window allows).
//!
//! Not done here: bytes cross one copy each way (h2 owns its buffers).

mod io;
mod relay;
mod stream;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::Reason;
use tokio::sync::Notify;

use crate::conn::Worker;
use crate::conn::teardown::ActiveConn;
use crate::reload::Generation;
use crate::shutdown::Phase;
use crate::tls::TlsStream;

/// How long a closing connection may take to tell its client why (GOAWAY flushed).
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// Serves one HTTP/2 client connection (its TLS handshake done, ALPN `h2`) until
/// the client leaves, the drain's `Stop`, or a reset flood.
pub async fn serve(
    tls: Box<TlsStream>,
    peer: SocketAddr,
    generation: Arc<Generation>,
    worker: Rc<Worker>,
    active: ActiveConn,
) {
    let _active = active;
    let io = match io::H2Io::new(tls) {
        Ok(io) => io,
        Err(e) => {
            tracing::warn!(client = %peer, "HTTP/2: cannot watch the socket: {e}");
            return;
        }
    };
    let c = &generation.config.http2;
    let mut builder = h2::server::Builder::new();
    builder
        .enable_connect_protocol()
        .max_concurrent_streams(c.max_concurrent_streams)
        .max_header_list_size(c.max_header_list_size)
        .initial_window_size(c.stream_window)
        .initial_connection_window_size(c.connection_window)
        .max_send_buffer_size(c.stream_window as usize);
    let deadline = Instant::now() + generation.config.timeouts.header;
    let mut conn = match tokio::time::timeout_at(deadline.into(), builder.handshake::<_, Bytes>(io)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, "HTTP/2 preface failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "HTTP/2 preface not in time");
            return;
        }
    };
    let resets = Rc::new(ResetMeter::new(c.max_resets_per_second));
    let (mut drain, mut stop) = (worker.shutdown.clone(), worker.shutdown.clone());
    let mut going_away = false;
    let closing = loop {
        tokio::select! {
            next = conn.accept() => match next {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(client = %peer, "HTTP/2 connection ended: {e}");
                    return;
                }
                Some(Ok((request, respond))) => {
                    tokio_uring::spawn(stream::serve(request, respond, peer, generation.clone(), worker.clone(), resets.clone()));
                }
            },
            () = drain.reached(Phase::Draining), if !going_away => {
                going_away = true;
                conn.graceful_shutdown();
            }
            () = stop.reached(Phase::Stop) => break Reason::NO_ERROR,
            () = resets.flooded() => {
                tracing::warn!(client = %peer, limit = c.max_resets_per_second, "HTTP/2: too many stream resets per second, connection closed");
                break Reason::ENHANCE_YOUR_CALM;
            }
        }
    };
    conn.abrupt_shutdown(closing);
    // Flush the GOAWAY, then drop the connection: its open streams end with it.
    let _ = tokio::time::timeout(GOAWAY_GRACE, async { while let Some(Ok(_)) = conn.accept().await {} }).await;
}

/// Counts the streams a client resets, per second; trips once over the limit.
struct ResetMeter {
    limit: u32,
    /// Start of the current one-second window, and resets in it.
    window: Cell<(Instant, u32)>,
    tripped: Cell<bool>,
    wake: Notify,
}

impl ResetMeter {
    fn new(limit: u32) -> Self {
        Self { limit, window: Cell::new((Instant::now(), 0)), tripped: Cell::new(false), wake: Notify::new() }
    }

    /// The client reset a stream.
    fn count(&self) {
        let (start, n) = self.window.get();
        let now = Instant::now();
        let (start, n) = if now.duration_since(start) >= Duration::from_secs(1) { (now, 1) } else { (start, n + 1) };
        self.window.set((start, n));
        if n > self.limit && !self.tripped.replace(true) {
            self.wake.notify_one();
        }
    }

    /// Returns once the limit was exceeded.
    async fn flooded(&self) {
        if !self.tripped.get() {
            self.wake.notified().await;
        }
    }
}
