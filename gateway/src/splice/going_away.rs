//! A spliced pair's turn in the paced drain: a Close 1001 to each side at a frame
//! boundary, as the userspace relay does (`relay::going_away`).
//!
//! The program follows each direction's WebSocket frames as it passes them on
//! (`struct splice_frames`). At the pair's turn, supervision has stopped relaying at
//! a point where it holds no byte; then [`going_away`] sets the pair's `draining` flag,
//! after which the program passes every skb to userspace and stops following frames,
//! and reads where each direction's frames stand ([`Inner::freeze_frames`]). Each
//! direction then relays exactly the rest of its current frame (first the passed
//! bytes the frames already count, then bytes followed here, reading never past the
//! frame's end), waits until the peer has every byte, and that peer gets a Close 1001
//! (unmasked to the client, masked to the upstream as a client would send it). Then
//! each side is read until its own Close, and the caller shuts both down (FIN).
//!
//! What a side sends after the end of its frame in progress is read and dropped: the
//! other side has been told the connection is going away, and no frame can follow a
//! Close. A direction whose frames are not known (bytes went by untracked, or the
//! program gave up on an skb with too many frames), whose frame does not end within
//! `drain.close_timeout`, or whose source ended gets no Close: its peer gets FIN as
//! before. Must never write a byte to a side before every earlier byte of that
//! direction has reached it, and never read past the end of a frame before the Close.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::backpressure::{Direction, Fd, write_all};
use super::kernel::Frozen;
use super::shared::{TO_CLIENT, TO_UPSTREAM};
use crate::drain::{FrameTracker, close_frame};
use crate::readiness;

/// Read size while finishing a frame or waiting for a Close.
const CHUNK: usize = 64 * 1024;
/// First and longest pause before reading again after an end of stream that came
/// before every passed byte (see `supervise::burst`).
const EOF_RECHECK_MIN: Duration = Duration::from_millis(1);
const EOF_RECHECK_MAX: Duration = Duration::from_millis(50);

/// Closes the pair going away: `up` reads the client and writes the upstream, `down`
/// the reverse; `open` says which of them (up, down) has not ended. Waits up to
/// `timeout` for each frame in progress and then for the peers' Close frames.
/// Returns whether a Close 1001 went to either side.
pub(super) async fn going_away(up: &Direction<'_>, down: &Direction<'_>, open: [bool; 2], timeout: Duration) -> bool {
    let frozen = up.inner.freeze_frames(up.slot);
    let (client, upstream) = (down.dst, up.dst);
    let finish_up = bounded(timeout, finish(up, client, frozen[TO_UPSTREAM], open[0]));
    let finish_down = bounded(timeout, finish(down, upstream, frozen[TO_CLIENT], open[1]));
    let (c2u, u2c) = tokio::join!(finish_up, finish_down);
    // A side that already sent its Close has had it passed on; the peer answers it.
    let to_client = u2c.is_some_and(|t| !t.close_seen());
    let to_upstream = c2u.is_some_and(|t| !t.close_seen());
    tracing::debug!(to_client, to_upstream, "drain: sending Close 1001 to a spliced pair");
    let client_side = async {
        if to_client && send_close(down, &close_frame::to_client()).await {
            if let Some(frames) = c2u {
                until_close(up, client, frames).await;
            }
            return true;
        }
        false
    };
    let upstream_side = async {
        if to_upstream && send_close(up, &close_frame::to_upstream(rand::random())).await {
            if let Some(frames) = u2c {
                until_close(down, upstream, frames).await;
            }
            return true;
        }
        false
    };
    let closing = async {
        let (a, b) = tokio::join!(client_side, upstream_side);
        a || b
    };
    if let Ok(sent) = tokio::time::timeout(timeout, closing).await {
        return sent;
    }
    tracing::debug!("drain: no Close from a spliced pair's peer within drain.close_timeout");
    to_client || to_upstream
}

/// `fut`'s answer, or `None` after `timeout`.
async fn bounded<T>(timeout: Duration, fut: impl Future<Output = Option<T>>) -> Option<T> {
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

/// Relays the rest of direction `d`'s current frame from `src`; returns its frames at
/// the boundary, or `None` when no boundary is known or reached.
async fn finish(d: &Direction<'_>, src: RawFd, frozen: Frozen, open: bool) -> Option<FrameTracker> {
    let mut frames = frozen.frames;
    if !open || frames.is_lost() {
        return None;
    }
    // Passed bytes not read yet lie before the frames' position: relayed, not followed.
    let mut counted = frozen.passed.saturating_sub(d.forwarded());
    if counted == 0 && frames.at_boundary() {
        return Some(frames);
    }
    let mut buf = vec![0u8; CHUNK];
    let mut pause = EOF_RECHECK_MIN;
    while counted > 0 || !frames.at_boundary() {
        let want = if counted > 0 { counted } else { frames.to_boundary() };
        let want = usize::try_from(want).unwrap_or(usize::MAX).min(CHUNK);
        match crate::io::recv(&src, &mut buf[..want], 0) {
            // The source's FIN came before passed bytes reached its queue: read again.
            Ok(0) if d.pass_pending() => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(EOF_RECHECK_MAX);
            }
            // It ended inside a frame: its peer gets that FIN.
            Ok(0) => return None,
            Ok(n) => {
                let skip = usize::try_from(counted).unwrap_or(usize::MAX).min(n);
                counted -= skip as u64;
                frames.feed(&buf[skip..n]);
                if let Err(e) = d.forward(&buf[..n]).await {
                    tracing::debug!(error = %e, "drain: relaying the end of a frame");
                    return None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                d.ring.ready(&Fd(src), readiness::READABLE).await.ok()?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(frames)
}

/// Writes `frame` to `d`'s destination once every byte before it has reached it.
async fn send_close(d: &Direction<'_>, frame: &[u8]) -> bool {
    let sent = match d.wait_room(false).await {
        Ok(_) => write_all(d.ring, d.dst, frame).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &sent {
        tracing::debug!(error = %e, "drain: Close 1001 to a spliced pair");
    }
    sent.is_ok()
}

/// Reads `src` (whose frames stand at `frames`) until a whole Close frame, end of
/// stream or an error; the bytes are dropped (`d` says whether passed bytes are
/// still on their way).
async fn until_close(d: &Direction<'_>, src: RawFd, mut frames: FrameTracker) {
    let mut buf = vec![0u8; CHUNK];
    let mut dropped = 0u64;
    let mut pause = EOF_RECHECK_MIN;
    while !frames.close_seen() {
        match crate::io::recv(&src, &mut buf, 0) {
            Ok(0) if d.pass_pending() && pause < EOF_RECHECK_MAX => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Ok(0) => break,
            Ok(n) => {
                frames.feed(&buf[..n]);
                dropped += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if d.ring.ready(&Fd(src), readiness::READABLE).await.is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if dropped > 0 {
        tracing::debug!(dropped, "drain: bytes after a spliced side's last relayed frame, up to its Close");
    }
}
