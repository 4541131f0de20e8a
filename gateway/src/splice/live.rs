//! What an open spliced pair has moved so far, read from the kernel-shared array
//! (plain memory, no system call) by whoever holds a [`LiveSlot`] — the admin
//! plane's live view and byte counters, which must not wait for the pair to close.
//!
//! Must never write to the array: the verdict program and the pair's worker own it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::backpressure::{bytes, needs_userspace};
use super::shared::{TO_CLIENT, TO_UPSTREAM};
use super::splicer::Splicer;
use super::worker::SplicedPair;

/// Names one spliced pair's row of the kernel-shared array, for as long as the
/// pair holds it (the generation tells a reused row apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSlot {
    slot: u32,
    generation: u64,
    /// Client bytes forwarded during the handover (not in the array).
    early: u64,
}

/// Bytes a spliced pair has moved since its handover, and how long it has been quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveBytes {
    /// Client → upstream (bytes forwarded during the handover included).
    pub to_upstream: u64,
    /// Upstream → client.
    pub to_client: u64,
    /// Since the last byte in either direction (coarse clock, a few ms).
    pub idle: Duration,
    /// A direction is over its budget (relayed in userspace until the peer catches up).
    pub over_budget: bool,
}

impl LiveSlot {
    /// A row no pair has held yet (generation 0): for benchmarks of the readers only.
    #[doc(hidden)]
    pub fn unallocated(slot: u32) -> Self {
        Self { slot, generation: 0, early: 0 }
    }
}

impl SplicedPair {
    /// The pair's row, for [`Splicer::live_bytes`].
    pub fn live_slot(&self) -> LiveSlot {
        let (inner, slot, early) = self.row();
        LiveSlot { slot, generation: inner.generation(slot).load(Ordering::Acquire), early }
    }
}

impl Splicer {
    /// What the pair of `live` has moved so far; `None` once its row went to another pair.
    pub fn live_bytes(&self, live: LiveSlot) -> Option<LiveBytes> {
        let inner = &*self.inner;
        let generation = inner.generation(live.slot);
        if live.slot >= inner.capacity || generation.load(Ordering::Acquire) != live.generation {
            return None;
        }
        let slot = live.slot;
        let over_budget = needs_userspace(inner, slot, TO_UPSTREAM) || needs_userspace(inner, slot, TO_CLIENT);
        let (up, down) = (bytes(inner, slot, TO_UPSTREAM), bytes(inner, slot, TO_CLIENT));
        let last = inner.last_active(live.slot).load(Ordering::Relaxed);
        // Read again: a row reused meanwhile may have given another pair's counts.
        if generation.load(Ordering::Acquire) != live.generation {
            return None;
        }
        let idle = Duration::from_nanos(crate::io::bpf::coarse_now_ns().saturating_sub(last));
        Some(LiveBytes { to_upstream: live.early + up, to_client: down, idle, over_budget })
    }
}
