//! Reload counters: how many configuration reloads were applied and refused, and the
//! generation in force. Written only by the thread that reloads; read by the admin
//! plane. Plain atomics: a reload must never wait for a scrape.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of reloads by result, and the generation in force (1 at start).
#[derive(Debug)]
pub struct Reloads {
    ok: AtomicU64,
    failed: AtomicU64,
    generation: AtomicU64,
}

impl Default for Reloads {
    fn default() -> Self {
        Self { ok: AtomicU64::new(0), failed: AtomicU64::new(0), generation: AtomicU64::new(1) }
    }
}

impl Reloads {
    /// A reload published `generation`.
    pub fn applied(&self, generation: u64) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.generation.store(generation, Ordering::Relaxed);
    }

    /// A reload was refused; the running generation stays.
    pub fn refused(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads applied and refused.
    pub fn counts(&self) -> [(&'static str, u64); 2] {
        [("ok", self.ok.load(Ordering::Relaxed)), ("failed", self.failed.load(Ordering::Relaxed))]
    }

    /// The generation in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}
