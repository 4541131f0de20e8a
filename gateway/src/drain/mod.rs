//! The paced drain: after SIGTERM every live WebSocket is closed with a Close 1001
//! "going away" at a frame boundary in both directions, spread over `drain.window`.
//!
//! - [`frames`] follows WebSocket frame boundaries in a byte stream without copying
//!   payloads, so a Close is only ever put between two frames;
//! - [`close_frame`] builds the two Close frames (unmasked to the client, masked to the
//!   upstream, as a client would send it);
//! - [`pacer`] hands each worker's connections their close times.
//!
//! Nothing here touches a socket: the userspace relay and the splice supervision use
//! these pieces on the sockets they own.

pub mod close_frame;
pub mod frames;
pub mod pacer;

pub use frames::{FrameState, FrameTracker};
pub use pacer::Pacer;
