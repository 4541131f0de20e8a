//! Fixed-size tables of atomics keyed by a hashed client address: live connection
//! counts (`limit_conn`) and token buckets (`rate`).
//!
//! Every update is one compare-and-swap loop on one word: no lock, no allocation, no
//! waiting, so all workers can admit concurrently and a limit holds exactly. The hash is
//! keyed per process (`SipHash` with a random key), so clients cannot aim at a slot.
//! Two addresses that land in one slot share it: that can refuse early, never admit
//! over a limit. These tables must never grow or be resized at run time.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Maps an address to a slot index.
#[derive(Debug)]
pub struct Slots {
    hasher: RandomState,
    mask: usize,
}

impl Slots {
    /// `n` must be a power of two (validated with the configuration).
    pub fn new(n: usize) -> Self {
        Self { hasher: RandomState::new(), mask: n.next_power_of_two() - 1 }
    }

    pub fn of(&self, ip: IpAddr) -> usize {
        (self.hasher.hash_one(ip) as usize) & self.mask
    }
}

/// Live connections per slot.
#[derive(Debug)]
pub struct Counts(Box<[AtomicU32]>);

impl Counts {
    pub fn new(n: usize) -> Self {
        Self((0..n).map(|_| AtomicU32::new(0)).collect())
    }

    /// Counts one more in `slot` unless it already holds `limit`.
    pub fn try_inc(&self, slot: usize, limit: u32) -> bool {
        self.0[slot].fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < limit).then_some(n + 1)).is_ok()
    }

    pub fn dec(&self, slot: usize) {
        self.0[slot].fetch_sub(1, Ordering::AcqRel);
    }

    #[cfg(test)]
    pub fn get(&self, slot: usize) -> u32 {
        self.0[slot].load(Ordering::Relaxed)
    }
}

/// Token buckets per slot, one `u64` each: the last refill time (ms, low 32 bits of the
/// process clock) in the high half, milli-tokens in the low half.
#[derive(Debug)]
pub struct Buckets {
    slots: Box<[AtomicU64]>,
    /// Tokens per second = milli-tokens per millisecond.
    rate: f64,
    /// Bucket size in milli-tokens.
    cap: u64,
}

impl Buckets {
    pub fn new(n: usize, rate: f64, burst: u32) -> Self {
        Self { slots: (0..n).map(|_| AtomicU64::new(0)).collect(), rate, cap: u64::from(burst) * 1000 }
    }

    /// Takes one token from `slot` at time `now_ms`; false when the bucket is empty.
    pub fn take(&self, slot: usize, now_ms: u64) -> bool {
        let now = (now_ms as u32).max(1);
        self.slots[slot]
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |w| {
                let (then, milli) = ((w >> 32) as u32, w & 0xffff_ffff);
                let (then, milli) = if then == 0 {
                    (now, self.cap)
                } else {
                    let elapsed = now.wrapping_sub(then);
                    #[allow(clippy::cast_sign_loss)] // `rate` is validated to be positive
                    let refill = (f64::from(elapsed) * self.rate) as u64;
                    // No refill yet: keep the old time so fractions add up over calls.
                    if refill == 0 { (then, milli) } else { (now, (milli + refill).min(self.cap)) }
                };
                (milli >= 1000).then(|| (u64::from(then) << 32) | (milli - 1000))
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_stop_at_the_limit() {
        let c = Counts::new(8);
        assert!(c.try_inc(3, 2) && c.try_inc(3, 2));
        assert!(!c.try_inc(3, 2));
        c.dec(3);
        assert!(c.try_inc(3, 2));
        assert_eq!(c.get(3), 2);
    }

    #[test]
    fn buckets_allow_a_burst_then_the_rate() {
        let b = Buckets::new(4, 10.0, 3); // 10/s, burst 3
        let t = 5_000;
        assert!((0..3).all(|_| b.take(1, t)));
        assert!(!b.take(1, t));
        assert!(!b.take(1, t + 50)); // half a token
        assert!(b.take(1, t + 100)); // one token after 100 ms
        assert!(!b.take(1, t + 100));
        assert!((0..3).all(|_| b.take(1, t + 10_000))); // full again, capped at burst
        assert!(!b.take(1, t + 10_000));
        assert!(b.take(2, t), "slots are independent");
    }
}
