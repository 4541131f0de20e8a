//! The paced drain: after SIGTERM every live WebSocket is closed with a Close 1001
//! "going away" at a frame boundary in both directions, spread over `drain.window`.
//!
//! - [`frames`] follows WebSocket frame boundaries in a byte stream without copying
//!   payloads, so a Close is only ever put between two frames;
//! - [`close_frame`] builds the two Close frames (unmasked to the client, masked to the
//!   upstream, as a client would send it);
//! - [`pacer`] hands each worker's connections their close times, and [`turn`] waits
//!   for a connection's;
//! - [`events`] tells a worker's relays of their turns, the `Stop` and a binary
//!   upgrade;
//! - [`state`] is a relay's drain state across its two directions;
//! - [`removed`] announces the servers a reload removed from a group with
//!   `drain_removed`, whose WebSockets then close the same way.
//!
//! Nothing here touches a socket: the userspace relay and the splice supervision use
//! these pieces on the sockets they own.

pub mod close_frame;
pub mod events;
pub mod frames;
pub mod pacer;
pub mod removed;
pub mod state;

pub use frames::{FrameState, FrameTracker};
pub use pacer::Pacer;
pub use removed::{Removal, Removals};
pub use state::DrainState;

use crate::shutdown::{Phase, ShutdownRx};

/// Resolves at this connection's turn in the drain (never without a pacer).
pub async fn turn(mut shutdown: ShutdownRx, pacer: Option<&Pacer>) {
    let Some(pacer) = pacer else { return std::future::pending().await };
    shutdown.reached(Phase::Draining).await;
    tokio::time::sleep_until(pacer.slot().into()).await;
}

/// What decides when a relay closes: its worker's drain schedule, and the removal of
/// its upstream server by a reload (when the relay watches for it).
#[derive(Debug, Clone, Copy)]
pub struct Turns<'a> {
    pub pacer: &'a Pacer,
    pub removal: Option<&'a Removal>,
    /// A binary upgrade takes the pair to the new process (the relay pauses at its
    /// next quiet moment); `None` for a pair that cannot move.
    pub upgrade: Option<&'a crate::upgrade::Upgrade>,
}
