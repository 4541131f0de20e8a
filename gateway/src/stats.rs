//! Process-wide counters: atomics only, written by workers, read by whoever reports.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by all workers.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open right now.
    pub active: AtomicU64,
    /// WebSocket upgrade requests seen (valid ones, sent upstream or failed there).
    pub upgrades_attempted: AtomicU64,
    /// Upgrades that got a 101 and were relayed.
    pub upgrades_succeeded: AtomicU64,
    /// Connections relayed by the userspace relay (spliced ones are counted by the splicer).
    pub relayed_userspace: AtomicU64,
    /// TLS handshakes done and failed (by reason).
    pub tls: crate::tls::HandshakeStats,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Share of upgrade attempts answered with 101 (the recipe's "101 success ratio").
    pub fn upgrade_success_ratio(&self) -> Option<f64> {
        let tried = self.upgrades_attempted.load(Ordering::Relaxed);
        (tried > 0).then(|| self.upgrades_succeeded.load(Ordering::Relaxed) as f64 / tried as f64)
    }
}
