//! The live line's p99 handshake: handshake times counted in 32 buckets spaced ×1.5 apart
//! (100 µs to 29 s), as atomics every load thread bumps and every worker process passes
//! on with its progress, so that the parent can take the p99 of the last second from
//! differences of summed counts.
//!
//! Only for the progress line, which shows the bucket's upper bound ("p99 ≤ 12.8 ms"): it
//! must never feed a figure of the report, which comes from the exact HdrHistograms.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Number of buckets.
pub const BUCKETS: usize = 32;

/// Upper bound of bucket `i` in microseconds (the last one also takes everything above).
pub fn bound_us(i: usize) -> f64 {
    100.0 * 1.5f64.powi(i32::try_from(i).unwrap_or(i32::MAX))
}

/// The bucket of a handshake that took `us` microseconds.
pub fn bucket(us: u64) -> usize {
    (0..BUCKETS).find(|&i| us as f64 <= bound_us(i)).unwrap_or(BUCKETS - 1)
}

/// Counts per bucket, shared by the threads of one process.
#[derive(Debug, Default)]
pub struct Live([AtomicU64; BUCKETS]);

impl Live {
    /// Counts one handshake.
    pub fn record(&self, us: u64) {
        self.0[bucket(us)].fetch_add(1, Relaxed);
    }

    /// The counts now.
    pub fn counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.0[i].load(Relaxed))
    }
}

/// The p99 (its bucket's upper bound, µs) of the handshakes counted between `before` and
/// `now`, or `None` when there were none.
pub fn p99_between(before: &[u64; BUCKETS], now: &[u64; BUCKETS]) -> Option<f64> {
    let diff: Vec<u64> = now.iter().zip(before).map(|(n, b)| n.saturating_sub(*b)).collect();
    let total: u64 = diff.iter().sum();
    if total == 0 {
        return None;
    }
    // The smallest bucket at or under which at least 99% of them fall.
    let want = total - total / 100;
    let mut seen = 0;
    diff.iter()
        .position(|c| {
            seen += c;
            seen >= want
        })
        .map(bound_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_bound_of_the_bucket_holding_the_99th_percentile() {
        let live = Live::default();
        let before = live.counts();
        for _ in 0..990 {
            live.record(500);
        }
        for _ in 0..10 {
            live.record(40_000);
        }
        let now = live.counts();
        let p99 = p99_between(&before, &now).unwrap();
        assert!((500.0..=750.0).contains(&p99), "p99 {p99}");
        live.record(40_000);
        live.record(40_000);
        let p99 = p99_between(&before, &live.counts()).unwrap();
        assert!((40_000.0..=60_000.0).contains(&p99), "p99 {p99}");
        assert_eq!(p99_between(&now, &now), None);
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }
}
