//! When `splice = "sockmap"` splices a WebSocket: right after its 101, or only once it
//! has outlived `relay.splice_after`. Each worker learns it from how long its WebSockets
//! lived. (`auto` hands pairs over when they go quiet or carry bulk instead: see
//! [`crate::relay::Handover`].)
//!
//! Handing a pair to the kernel costs a few tens of µs of system calls; relaying in
//! userspace first and handing over later costs more again (measured on the
//! development VM: 77 µs of wsgate CPU per long-lived connection spliced at the 101,
//! 111 µs when first relayed for a second). Both only pay off for connections that
//! live on: a connect–upgrade–close loop is cheapest never spliced. So each worker
//! keeps a moving share of its recent WebSockets that ended within `splice_after`:
//! while most outlive it, new ones are spliced at the 101; once most end sooner, new
//! ones start in the userspace relay and are handed over only if they outlive it.
//!
//! Only WebSockets whose client sent something count: one that gave up before a byte
//! (a client timing out under overload) tells nothing of the workload's lifetimes.
//! A field of the worker ([`crate::conn::Worker`]): no locks, no system calls; it must
//! never be consulted for plain HTTP nor shared between workers.

use std::cell::Cell;
use std::time::Duration;

/// Weight of one connection in the moving share (the last ~16 dominate).
const WEIGHT: f32 = 1.0 / 16.0;

/// One worker's record of how long its WebSockets lived.
#[derive(Debug, Default)]
pub struct Lifetimes {
    /// Moving share of recent WebSockets on this worker that ended within `splice_after`.
    short_share: Cell<f32>,
}

impl Lifetimes {
    /// How long the next WebSocket on this worker should be relayed in userspace before
    /// the splice: `Duration::ZERO` (splice at the 101) unless most recent ones were short.
    pub fn splice_delay(&self, splice_after: Duration) -> Duration {
        if splice_after.is_zero() || self.short_share.get() <= 0.5 { Duration::ZERO } else { splice_after }
    }

    /// Records that a WebSocket on this worker ended after `lifetime`, its client having
    /// sent `client_bytes` after the request head (none: not counted, see the module doc).
    pub fn record(&self, lifetime: Duration, client_bytes: u64, splice_after: Duration) {
        if client_bytes == 0 {
            return;
        }
        let short = if lifetime < splice_after { 1.0 } else { 0.0 };
        let share = self.short_share.get();
        self.short_share.set(share + (short - share) * WEIGHT);
    }

    /// This worker's moving share of short WebSockets (diagnostics and tests).
    pub fn short_share(&self) -> f32 {
        self.short_share.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(1);

    #[test]
    fn splices_at_once_until_most_connections_are_short_and_back() {
        let lifetimes = Lifetimes::default();
        let splice_delay = |after| lifetimes.splice_delay(after);
        let record = |lifetime, bytes, after| lifetimes.record(lifetime, bytes, after);
        let short_share = || lifetimes.short_share();
        assert_eq!(splice_delay(AFTER), Duration::ZERO, "a fresh worker splices at the 101");
        let mut short = 0;
        while splice_delay(AFTER).is_zero() {
            record(Duration::from_millis(20), 6, AFTER);
            short += 1;
            assert!(short < 64, "never switched to deferring");
        }
        assert!((10..=14).contains(&short), "switched after {short} short connections");
        // A worker that has seen nothing but short ones for a while …
        for _ in 0..64 {
            record(Duration::from_millis(20), 6, AFTER);
        }
        assert!(!splice_delay(AFTER).is_zero());
        // … goes back to splicing at the 101 after about as many long ones.
        let mut long = 0;
        while !splice_delay(AFTER).is_zero() {
            record(Duration::from_secs(30), 6, AFTER);
            long += 1;
            assert!(long < 64, "never switched back");
        }
        assert!((10..=14).contains(&long), "switched back after {long} long connections");
        assert_eq!(splice_delay(Duration::ZERO), Duration::ZERO, "0s never defers");
        let before = short_share();
        record(Duration::from_millis(1), 0, AFTER);
        assert!((short_share() - before).abs() < f32::EPSILON, "a silent client must not count");
    }
}
