//! The paced drain: after SIGTERM every live WebSocket is closed with a Close 1001
//! "going away" at a frame boundary in both directions, spread over `drain.window`.
//!
//! - [`frames`] follows WebSocket frame boundaries in a byte stream without copying
//!   payloads, so a Close is only ever put between two frames;
//! - [`close_frame`] builds the two Close frames (unmasked to the client, masked to the
//!   upstream, as a client would send it);
//! - [`pacer`] hands each worker's connections their close times, and [`turn`] waits
//!   for a connection's;
//! - [`state`] is a relay's drain state across its two directions.
//!
//! Nothing here touches a socket: the userspace relay and the splice supervision use
//! these pieces on the sockets they own.

pub mod close_frame;
pub mod frames;
pub mod pacer;
pub mod state;

pub use frames::{FrameState, FrameTracker};
pub use pacer::Pacer;
pub use state::DrainState;

use crate::shutdown::{Phase, ShutdownRx};

/// Resolves at this connection's turn in the drain (never without a pacer).
pub async fn turn(mut shutdown: ShutdownRx, pacer: Option<&Pacer>) {
    let Some(pacer) = pacer else { return std::future::pending().await };
    shutdown.reached(Phase::Draining).await;
    tokio::time::sleep_until(pacer.slot().into()).await;
}
