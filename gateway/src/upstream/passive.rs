//! Passive health: failed attempts seen by the data plane mark a server down for a while.
//!
//! `max_fails` failures within `fail_timeout` mark the server down for `fail_timeout`
//! (nginx's semantics). The state is three atomics per server, updated by whichever
//! worker saw the failure; counting is approximate under races (two workers may both
//! open a new window), which only shifts the mark by a failure. This module never
//! blocks and never logs: the caller decides what to say.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Milliseconds on a process-wide monotonic clock; never 0 (0 means "never").
pub fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// Failure counting of one server.
#[derive(Debug, Default)]
pub struct Passive {
    fails: AtomicU32,
    window_start: AtomicU64,
    down_until: AtomicU64,
}

impl Passive {
    /// Whether the server is marked down at `now`.
    pub fn is_down(&self, now: u64) -> bool {
        self.down_until.load(Ordering::Relaxed) > now
    }

    /// Records a failure at `now`; returns true when this failure marked the server down.
    pub fn failure(&self, now: u64, max_fails: u32, fail_timeout_ms: u64) -> bool {
        if max_fails == 0 {
            return false;
        }
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= fail_timeout_ms
            && self.window_start.compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.fails.store(0, Ordering::Relaxed);
        }
        if self.fails.fetch_add(1, Ordering::Relaxed) + 1 < max_fails {
            return false;
        }
        self.fails.store(0, Ordering::Relaxed);
        let was = self.down_until.swap(now.saturating_add(fail_timeout_ms), Ordering::Relaxed);
        was <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_after_max_fails_within_the_window_and_recovers() {
        let p = Passive::default();
        assert!(!p.failure(1000, 3, 100));
        assert!(!p.failure(1010, 3, 100));
        assert!(p.failure(1020, 3, 100));
        assert!(p.is_down(1119));
        assert!(!p.is_down(1120));
        // Failures spread wider than the window never add up.
        assert!(!p.failure(2000, 2, 100));
        assert!(!p.failure(2200, 2, 100));
        assert!(!p.is_down(2201));
        // max_fails = 0 disables marking.
        assert!(!p.failure(3000, 0, 100));
        assert!(!p.is_down(3000));
    }
}
