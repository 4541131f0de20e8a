//! Process-wide counts of how connections were relayed, for logs and metrics.
//!
//! Plain relaxed atomics: the data plane only increments, readers take a
//! [`SpliceCounts`] snapshot. Never holds a lock.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub spliced: AtomicU64,
    pub active: AtomicU64,
    pub pressure: AtomicU64,
    pub handover_failed: AtomicU64,
    pub trimmed: AtomicU64,
}

/// A snapshot of the splice counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceCounts {
    /// Pairs handed to the kernel since start.
    pub spliced: u64,
    /// Pairs spliced right now.
    pub active: u64,
    /// Times a direction went over budget and was relayed in userspace for a while.
    pub pressure: u64,
    /// Handovers that failed (pair closed or relayed in userspace instead).
    pub handover_failed: u64,
    /// Retransmitted bytes cut off skbs of ended pairs because they had been handed on already.
    pub trimmed: u64,
}

impl Counters {
    pub fn snapshot(&self) -> SpliceCounts {
        SpliceCounts {
            spliced: self.spliced.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            pressure: self.pressure.load(Ordering::Relaxed),
            handover_failed: self.handover_failed.load(Ordering::Relaxed),
            trimmed: self.trimmed.load(Ordering::Relaxed),
        }
    }
}
