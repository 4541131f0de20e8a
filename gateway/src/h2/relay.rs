//! The relay of one WebSocket stream over HTTP/2 (RFC 8441): DATA from the client to
//! the upstream socket and the upstream's bytes back as DATA, within the client's
//! window, until both ways ended, a reset, the idle timeout, the drain's `Stop`, or this
//! stream's turn in the drain.
//!
//! At its turn (the worker's [`Pacer`], as for HTTP/1.1 WebSockets, or the [`Removal`]
//! of its upstream server by a reload, `drain_removed`) each direction is
//! taken to the end of the frame in progress and relays nothing after it; then the
//! client gets a Close 1001 as a DATA frame and the upstream a masked one, wsgate reads
//! (and drops) what each sends until its Close, within `drain.close_timeout`, and ends
//! the stream (END_STREAM) and the upstream connection. The frames are followed in both
//! directions with [`FrameTracker`] (headers read, payloads skipped, no copy). What can
//! be lost is what the HTTP/1.1 relay loses: what a peer sends after its last whole
//! frame and before it reads the Close. A direction whose frame does not end within
//! `drain.close_timeout` gets no Close (never one inside a frame); the stream is reset.

use std::cell::Cell;
use std::net::Shutdown;
use std::time::Instant;

use bytes::Bytes;
use h2::{RecvStream, SendStream};

use super::ResetMeter;
use super::stream::send_within_window;
use crate::close::Close;
use crate::conn::Worker;
use crate::conn::peer_io::PeerIo;
use crate::conn::teardown::Facts;
use crate::drain::removed::Removal;
use crate::drain::{DrainState, close_frame};
use crate::metrics::live::RelayBytes;
use crate::readiness::Ring;
use crate::shutdown::Phase;

/// How one direction's pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pump {
    /// Its stream ended (end of stream, a reset, an error): the close is recorded.
    Ended,
    /// Drain: stopped at a frame boundary; nothing after it was relayed.
    Whole,
}

/// What the pumps share.
struct Shared<'a> {
    activity: Cell<Instant>,
    first_end: Cell<Option<Close>>,
    bytes: [Cell<u64>; 2],
    drain: DrainState,
    resets: &'a ResetMeter,
    /// What the admin plane shows live (when it is on).
    live: Option<&'a RelayBytes>,
}

impl<'a> Shared<'a> {
    fn new(resets: &'a ResetMeter, live: Option<&'a RelayBytes>) -> Self {
        Self {
            activity: Cell::new(Instant::now()),
            first_end: Cell::new(None),
            bytes: [Cell::new(0), Cell::new(0)],
            drain: DrainState::default(),
            resets,
            live,
        }
    }

    /// `n` more bytes relayed in direction `dir`.
    fn moved(&self, dir: usize, n: usize) {
        self.bytes[dir].set(self.bytes[dir].get() + n as u64);
        if let Some(live) = self.live {
            live.add(dir, n as u64, self.activity.get());
        }
    }

    fn end(&self, c: Close) {
        if self.first_end.get().is_none() {
            self.first_end.set(Some(c));
        }
    }
}

const C2U: usize = 0;
const U2C: usize = 1;

/// Relays a WebSocket stream both ways (see the module), starting with `first`, what
/// the upstream sent with its 101; byte counts and the close go to `facts`.
pub async fn relay(
    (mut recv, mut send): (RecvStream, SendStream<Bytes>),
    (upstream, first): (&PeerIo, Vec<u8>),
    (worker, removal): (&Worker, &Removal),
    facts: &mut Facts,
    resets: &ResetMeter,
) {
    let _live = worker.pacer.enter();
    let live = facts.conn.relaying();
    let s = Shared::new(resets, live.as_deref());
    let config = &facts.generation.config;
    let (idle, close_timeout) = (config.timeouts.idle, config.drain.close_timeout);
    let mut stop = worker.shutdown.clone();
    let ended = {
        let up = up(&mut recv, upstream, &worker.ring, &s);
        let down = down(&mut send, upstream, (worker, &s), first);
        let watcher = async {
            tokio::select! {
                () = crate::drain::turn(worker.shutdown.clone(), Some(&worker.pacer)) => {}
                () = removal.turn() => {}
            }
            s.drain.begin();
            tokio::time::sleep(close_timeout).await;
        };
        let idle_watch = async {
            loop {
                let deadline = s.activity.get() + idle;
                if Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep_until(deadline.into()).await;
            }
        };
        tokio::select! {
            ends = async { tokio::join!(up, down) } => Ok(ends),
            () = watcher => {
                tracing::debug!("drain: a frame did not end within drain.close_timeout");
                Err(if removal.fired() { Close::Removed } else { Close::Drain })
            }
            () = idle_watch => Err(Close::IdleTimeout),
            () = stop.reached(Phase::Stop) => Err(Close::Shutdown),
        }
    };
    facts.close = match ended {
        Ok((c2u, u2c)) if c2u == Pump::Whole || u2c == Pump::Whole => {
            let to = [u2c == Pump::Whole, c2u == Pump::Whole];
            let closing = going_away(&mut recv, &mut send, upstream, to, (worker, &s));
            if tokio::time::timeout(close_timeout, closing).await.is_err() {
                tracing::debug!("no Close from a peer within drain.close_timeout");
            }
            let _ = send.send_data(Bytes::new(), true);
            if removal.fired() { Close::Removed } else { Close::Drain }
        }
        Ok(_) => s.first_end.get().unwrap_or(Close::Unknown),
        Err(close) => {
            send.send_reset(h2::Reason::CANCEL);
            close
        }
    };
    facts.bytes_in += s.bytes[C2U].get();
    facts.bytes_out = s.bytes[U2C].get();
    facts.bytes_sent = facts.bytes_out;
    upstream.shutdown(Shutdown::Both);
}

/// Client → upstream: DATA written to the upstream socket; the stream's window is
/// released only once the upstream took the bytes.
async fn up(recv: &mut RecvStream, upstream: &PeerIo, ring: &Ring, s: &Shared<'_>) -> Pump {
    loop {
        if s.drain.whole(C2U) {
            return Pump::Whole;
        }
        // Registered before waiting: the drain's turn wakes a pump idle between frames.
        let turn = s.drain.woken();
        let next = tokio::select! {
            next = recv.data() => next,
            () = turn => continue,
        };
        let chunk = match next {
            None => {
                s.end(Close::ClientFin);
                upstream.shutdown(Shutdown::Write);
                return Pump::Ended;
            }
            Some(Err(_)) => {
                s.resets.count();
                s.end(Close::ClientReset);
                upstream.shutdown(Shutdown::Both);
                return Pump::Ended;
            }
            Some(Ok(chunk)) => chunk,
        };
        s.activity.set(Instant::now());
        let (n, whole) = s.drain.take(C2U, &chunk);
        if upstream.write_slice(ring, &chunk[..n]).await.is_err() {
            s.end(Close::UpstreamReset);
            upstream.shutdown(Shutdown::Both);
            return Pump::Ended;
        }
        s.moved(C2U, n);
        let _ = recv.flow_control().release_capacity(chunk.len());
        if whole {
            return Pump::Whole;
        }
    }
}

/// Upstream → client: what the upstream sends, as DATA within the client's window;
/// first the bytes that came with its 101 (`first`, perhaps none).
async fn down(
    send: &mut SendStream<Bytes>,
    upstream: &PeerIo,
    (worker, s): (&Worker, &Shared<'_>),
    first: Vec<u8>,
) -> Pump {
    if !first.is_empty() {
        let (n, whole) = s.drain.take(U2C, &first);
        let mut first = first;
        first.truncate(n);
        if let Some(end) = forward(send, upstream, s, (Bytes::from(first), whole)).await {
            return end;
        }
    }
    loop {
        if s.drain.whole(U2C) {
            return Pump::Whole;
        }
        let turn = s.drain.woken();
        let ready = tokio::select! {
            ready = upstream.readable(&worker.ring) => ready,
            () = turn => continue,
        };
        if ready.is_err() {
            s.end(Close::UpstreamReset);
            send.send_reset(h2::Reason::CANCEL);
            return Pump::Ended;
        }
        let mut buf = worker.buffers.take();
        let read = upstream.recv_into(&mut buf);
        let (n, whole) = s.drain.take(U2C, &buf);
        let data = Bytes::copy_from_slice(&buf[..n]);
        worker.buffers.put(buf);
        match read {
            Ok(0) => {
                s.end(Close::UpstreamFin);
                let _ = send.send_data(Bytes::new(), true);
                return Pump::Ended;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => {
                s.end(Close::UpstreamReset);
                send.send_reset(h2::Reason::CANCEL);
                return Pump::Ended;
            }
        }
        if let Some(end) = forward(send, upstream, s, (data, whole)).await {
            return end;
        }
    }
}

/// Sends `data` read from the upstream to the client; the pump ends (`Some`) when the
/// client is gone or the data ended at the drain's frame boundary (`whole`).
async fn forward(
    send: &mut SendStream<Bytes>,
    upstream: &PeerIo,
    s: &Shared<'_>,
    (data, whole): (Bytes, bool),
) -> Option<Pump> {
    s.activity.set(Instant::now());
    s.moved(U2C, data.len());
    if send_within_window(send, data).await.is_err() {
        s.end(Close::ClientReset);
        upstream.shutdown(Shutdown::Both);
        return Some(Pump::Ended);
    }
    whole.then_some(Pump::Whole)
}

/// The drain's close handshake once the pumps stopped between frames: a Close 1001 to
/// each side in `to` ([client, upstream]), then what each still sends is read and
/// dropped until its Close.
async fn going_away(
    recv: &mut RecvStream,
    send: &mut SendStream<Bytes>,
    upstream: &PeerIo,
    [to_client, to_upstream]: [bool; 2],
    (worker, s): (&Worker, &Shared<'_>),
) {
    tracing::debug!(to_client, to_upstream, "drain: sending Close 1001 (HTTP/2 stream)");
    // A side that was relayed its peer's Close already gets no second one.
    let client_side = async {
        if !to_client {
            return;
        }
        if !s.drain.frames(U2C).close_seen()
            && send_within_window(send, Bytes::from(close_frame::to_client())).await.is_err()
        {
            return;
        }
        let mut frames = s.drain.frames(C2U);
        while !frames.close_seen() {
            let Some(Ok(chunk)) = recv.data().await else { return };
            frames.feed(&chunk);
            let _ = recv.flow_control().release_capacity(chunk.len());
        }
    };
    let upstream_side = async {
        if !to_upstream {
            return;
        }
        if !s.drain.frames(C2U).close_seen()
            && upstream.write_slice(&worker.ring, &close_frame::to_upstream(rand::random())).await.is_err()
        {
            return;
        }
        let mut frames = s.drain.frames(U2C);
        while !frames.close_seen() {
            if upstream.readable(&worker.ring).await.is_err() {
                return;
            }
            let mut buf = worker.buffers.take();
            let read = upstream.recv_into(&mut buf);
            frames.feed(&buf);
            worker.buffers.put(buf);
            match read {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    tokio::join!(client_side, upstream_side);
}
