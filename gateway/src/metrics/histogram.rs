//! A histogram the data plane can feed for the price of two relaxed atomic adds:
//! fixed bucket bounds, one counter per bucket (not cumulative), the sum in
//! nanoseconds. The admin thread sums the workers' histograms at scrape time.
//!
//! Must never lock or allocate when observing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Handshake (accept → 101) and upstream connect latency, seconds.
pub const LATENCY_BOUNDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Connection lifetime, seconds: WebSockets live for days.
pub const LIFETIME_BOUNDS: &[f64] =
    &[0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14_400.0, 43_200.0, 86_400.0, 259_200.0, 604_800.0, 2_592_000.0];

/// Bucket counters for one worker.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound, then one for the values above the last bound.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// A histogram summed over workers, ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// (upper bound, count in this bucket alone), the last bound being `+Inf`: the
    /// form `prometheus-client`'s encoders take (they accumulate).
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_ns: AtomicU64::new(0) }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.iter().position(|&b| secs <= b).unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The sum of `parts` (all with the same bounds as the first).
    pub fn merged<'a>(parts: impl IntoIterator<Item = &'a Histogram>) -> Option<HistogramSnapshot> {
        let mut parts = parts.into_iter().peekable();
        let bounds = parts.peek()?.bounds;
        let mut counts = vec![0u64; bounds.len() + 1];
        let mut sum_ns = 0u64;
        for h in parts {
            for (c, b) in counts.iter_mut().zip(h.buckets.iter()) {
                *c += b.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.saturating_add(h.sum_ns.load(Ordering::Relaxed));
        }
        let count = counts.iter().sum();
        let buckets = bounds.iter().copied().chain(std::iter::once(f64::INFINITY)).zip(counts).collect();
        Some(HistogramSnapshot { sum_seconds: sum_ns as f64 / 1e9, count, buckets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_summed_over_workers() {
        let (a, b) = (Histogram::new(LATENCY_BOUNDS), Histogram::new(LATENCY_BOUNDS));
        a.observe(Duration::from_micros(300));
        a.observe(Duration::from_millis(3));
        b.observe(Duration::from_mins(1));
        let s = Histogram::merged([&a, &b]).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[3], (0.005, 1));
        assert_eq!(s.buckets[LATENCY_BOUNDS.len()], (f64::INFINITY, 1));
        assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), 3);
        assert!((s.sum_seconds - 60.0033).abs() < 1e-9, "{}", s.sum_seconds);
    }
}
