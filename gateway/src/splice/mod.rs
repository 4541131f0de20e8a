//! The kernel fast path: after the WebSocket handshake, the two sockets of a
//! connection are spliced with an eBPF sockmap so that bytes flow client ⇄
//! upstream without entering wsgate.
//!
//! Surface (the rest of the gateway never touches aya or maps), all of it in
//! `splicer.rs` and `worker.rs`:
//! - [`start`]: load + self-test per [`SpliceMode`]; `auto` falls back to the
//!   userspace relay with one warning, `sockmap` refuses to start.
//! - [`Splicer::init_worker`]: per worker thread, before its first splice; gives
//!   the thread's [`WorkerPairs`] (its parked pairs and sweeper, on its poll ring).
//! - [`WorkerPairs::splice_frames`]: hand a pair over after the 101 (see
//!   `handover`) with where its WebSocket frames stand, which the program follows
//!   from there so that the pair's turn in the drain sends a Close 1001 at a frame
//!   boundary (`going_away`); [`WorkerPairs::splice`] for a stream of unknown frames.
//! - [`SplicedPair::park`]: leave the pair to the kernel; a callback gets its
//!   byte counts and close reason when it ends (the only way a pair comes back).
//!   A parked pair is a table row, not a task (`park`); it becomes a supervision
//!   task (`supervise`: FIN, RST, idle, drain, pressure) only once something
//!   happens to it. One owner, `worker`, moves a pair through its states
//!   (handing over → parked → supervised → ended); the others return what
//!   happened instead of calling each other.
//! - [`Splicer::counts`]: counters for logs and metrics; [`Splicer::live_bytes`]:
//!   what an open pair has moved so far (the admin plane's live view).
//!
//! Backpressure (`backpressure`) bounds what the kernel holds per direction by
//! [`SpliceOptions::budget`]. This module must never block a worker thread and
//! never hold a buffer for an idle pair. A pair cannot be taken back out of the
//! kernel while open: removing a socket from the sockhash discards the bytes
//! its psock still queues, so a pair leaves only by closing.
//!
//! Imports inside `splice/` have no circle: each module imports only modules on
//! the lines below it (leaves are shared):
//!
//! ```text
//! mod                 start, re-exports
//! └─ splicer          → selftest, worker, handover (its error), kernel, counters, shared
//!    └─ worker        → handover, park, supervise, sweep, kernel   (the one owner)
//!       └─ park       → supervise (outcome type), sweep, backpressure, kernel
//!          ├─ supervise → going_away, sweep, backpressure, kernel, shared
//!          │  └─ going_away → backpressure, kernel, shared
//!          ├─ handover  → backpressure, kernel
//!          └─ selftest  → kernel, shared
//!             └─ sweep        → backpressure, kernel
//!                └─ backpressure → kernel, shared
//!                   └─ kernel    → frame_state, counters, shared
//!                      └─ frame_state, counters, shared   (leaves)
//! ```

mod backpressure;
mod counters;
mod frame_state;
mod going_away;
mod handover;
mod kernel;
mod live;
mod park;
mod selftest;
mod shared;
mod splicer;
mod supervise;
mod sweep;
mod worker;

use std::time::Duration;

pub use counters::SpliceCounts;
pub use handover::HandoverError;
pub use live::{LiveBytes, LiveSlot};
pub use selftest::{FORCE_FAIL_ENV, SelfTestError};
pub use splicer::{LoadError, MAX_CAPACITY, Offer, SPLICE_BPF_OBJECT, Splicer, WorkerPairs, program_digest};
pub use supervise::{Handed, SpliceOutcome};
pub use worker::{Owned, PassedKernel, SplicedPair};

pub use crate::config::{DEFAULT_SPLICE_BUDGET as DEFAULT_BUDGET, MIN_SPLICE_BUDGET as MIN_BUDGET, SpliceMode};

/// What [`start`] needs to know.
#[derive(Debug, Clone, Copy)]
pub struct SpliceOptions {
    pub mode: SpliceMode,
    /// Most pairs spliced at once (sizes the maps; pairs past it use the userspace relay).
    pub capacity: u32,
    /// Bytes per direction the kernel may hold unacknowledged (default 1 MiB,
    /// at least 64 KiB); over it the pair is relayed in userspace until it drains.
    pub budget: u64,
}

impl Default for SpliceOptions {
    fn default() -> Self {
        Self { mode: SpliceMode::Auto, capacity: 65_536, budget: DEFAULT_BUDGET }
    }
}

/// The result of [`start`].
#[derive(Debug)]
pub struct Started {
    /// The kernel fast path, or `None` for the userspace relay.
    pub splicer: Option<Splicer>,
    /// Why `auto` fell back (already logged as a warning).
    pub fallback: Option<String>,
}

/// Why `splice = "sockmap"` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "splice = \"sockmap\" but the kernel splice is unavailable: {0}; use splice = \"auto\" to fall back to the userspace relay"
    )]
    Unavailable(String),
    #[error("splice budget must be at least {MIN_BUDGET} bytes, got {0}")]
    Budget(u64),
}

/// Loads and self-tests the kernel splice as `opts.mode` asks.
pub fn start(opts: &SpliceOptions) -> Result<Started, StartError> {
    if opts.budget < MIN_BUDGET {
        return Err(StartError::Budget(opts.budget));
    }
    if opts.mode == SpliceMode::Userspace {
        tracing::info!(mode = "userspace", "splice: userspace relay (configured)");
        return Ok(Started { splicer: None, fallback: None });
    }
    let loaded = Splicer::load(opts.capacity, opts.budget)
        .map_err(|e| e.to_string())
        .and_then(|s| s.self_test().map(|took| (s, took)).map_err(|e| e.to_string()));
    match loaded {
        Ok((splicer, took)) => {
            tracing::info!(
                mode = "sockmap",
                capacity = opts.capacity,
                budget = opts.budget,
                self_test_us = took.as_micros() as u64,
                "splice: kernel fast path on"
            );
            Ok(Started { splicer: Some(splicer), fallback: None })
        }
        Err(why) if opts.mode == SpliceMode::Auto => {
            tracing::warn!(mode = "userspace", "splice: falling back to the userspace relay: {why}");
            Ok(Started { splicer: None, fallback: Some(why) })
        }
        Err(why) => Err(StartError::Unavailable(why)),
    }
}

/// Idle timeout helper for callers that keep `Duration::ZERO` as "none".
pub fn idle_limit(timeout: Duration) -> Option<Duration> {
    (!timeout.is_zero()).then_some(timeout)
}
