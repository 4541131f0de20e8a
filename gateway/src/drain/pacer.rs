//! One worker's drain schedule: when each of its live WebSockets gets its Close.
//!
//! The worker counts its live WebSockets ([`Pacer::enter`]); at the drain the first
//! [`Pacer::slot`] fixes the plan: that many closes spread evenly over
//! `drain.window`, no closer together than this worker's share of `drain.rate`,
//! each moved by a random part (`drain.jitter`) of its share. Every worker plans on
//! its own (no lock, no message): together they close about `live / window` a second.
//! Must never sleep or touch a socket; it only answers "when".

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::Rng as _;

use crate::config::DrainConfig;

/// The schedule fixed at the drain's start.
#[derive(Debug, Clone, Copy)]
struct Plan {
    start: Instant,
    spacing: Duration,
    /// Closes handed out so far.
    next: u32,
    /// Live WebSockets when the plan was made.
    planned: u32,
}

/// One worker's drain schedule.
#[derive(Debug)]
pub struct Pacer {
    window: Duration,
    /// Closest spacing this worker's share of `drain.rate` allows.
    min_spacing: Duration,
    jitter: f64,
    live: Cell<u32>,
    plan: Cell<Option<Plan>>,
}

impl Pacer {
    /// The schedule of one of `workers` workers.
    pub fn new(cfg: &DrainConfig, workers: usize) -> Self {
        let min_spacing = if cfg.rate > 0.0 {
            Duration::from_secs_f64((workers.max(1) as f64 / cfg.rate).min(3600.0))
        } else {
            Duration::ZERO
        };
        Self { window: cfg.window, min_spacing, jitter: cfg.jitter, live: Cell::new(0), plan: Cell::new(None) }
    }

    /// Counts a live WebSocket until the guard is dropped.
    pub fn enter(self: &Rc<Self>) -> LiveGuard {
        self.live.set(self.live.get() + 1);
        LiveGuard(self.clone())
    }

    /// When the next WebSocket to ask gets its Close. The first call after the drain
    /// began fixes the plan.
    pub fn slot(&self) -> Instant {
        let mut plan = self.plan.get().unwrap_or_else(|| self.make_plan(Instant::now()));
        let k = plan.next;
        plan.next += 1;
        self.plan.set(Some(plan));
        // Inside its share [k, k+1) of the plan: the middle when evenly spaced, anywhere
        // in a centred part `jitter` wide otherwise.
        let offset = if self.jitter > 0.0 { self.jitter * rand::thread_rng().r#gen::<f64>() } else { 0.0 };
        let at = plan.start + plan.spacing * k + plan.spacing.mul_f64((1.0 - self.jitter) / 2.0 + offset);
        // Without a rate cap nothing goes past the window, even a connection that was
        // not counted when the plan was made.
        if self.min_spacing.is_zero() || k >= plan.planned {
            return at.min(plan.start + self.window.max(self.min_spacing * k));
        }
        at
    }

    /// The next close time if it is due at `now` (claiming it), for pairs that are
    /// checked on a tick rather than waiting on a timer of their own.
    pub fn claim_due(&self, now: Instant) -> bool {
        let plan = self.plan.get().unwrap_or_else(|| self.make_plan(now));
        self.plan.set(Some(plan));
        if plan.start + plan.spacing * plan.next + plan.spacing.mul_f64((1.0 - self.jitter) / 2.0) > now {
            return false;
        }
        self.slot();
        true
    }

    fn make_plan(&self, start: Instant) -> Plan {
        let planned = self.live.get().max(1);
        let spacing = (self.window / planned).max(self.min_spacing);
        Plan { start, spacing, next: 0, planned }
    }
}

/// A live WebSocket, counted by its worker's [`Pacer`] until dropped.
#[derive(Debug)]
pub struct LiveGuard(Rc<Pacer>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(window: u64, rate: f64, jitter: f64) -> DrainConfig {
        DrainConfig { window: Duration::from_secs(window), rate, jitter, ..DrainConfig::default() }
    }

    #[test]
    fn closes_spread_evenly_over_the_window() {
        let p = Rc::new(Pacer::new(&cfg(10, 0.0, 0.0), 1));
        let guards: Vec<_> = (0..10).map(|_| p.enter()).collect();
        let slots: Vec<_> = (0..10).map(|_| p.slot()).collect();
        let start = p.plan.get().unwrap().start;
        for (k, s) in slots.iter().enumerate() {
            assert_eq!(*s - start, Duration::from_millis(500 + 1000 * k as u64), "the middle of share {k}");
        }
        // One more than counted still closes inside the window.
        assert!(p.slot() - start <= Duration::from_secs(10));
        drop(guards);
        assert_eq!(p.live.get(), 0);
    }

    #[test]
    fn the_rate_cap_stretches_the_plan_and_jitter_stays_in_the_share() {
        // 2 workers, 4 closes a second together: each worker 2 a second.
        let p = Rc::new(Pacer::new(&cfg(1, 4.0, 1.0), 2));
        let _g: Vec<_> = (0..6).map(|_| p.enter()).collect();
        let slots: Vec<_> = (0..6).map(|_| p.slot()).collect();
        let start = p.plan.get().unwrap().start;
        for (k, s) in slots.iter().enumerate() {
            let base = Duration::from_millis(500) * u32::try_from(k).unwrap();
            assert!(*s - start >= base && *s - start <= base + Duration::from_millis(500), "slot {k}");
        }
    }

    #[test]
    fn due_slots_are_claimed_one_by_one() {
        let p = Rc::new(Pacer::new(&cfg(2, 0.0, 0.0), 1));
        let _g: Vec<_> = (0..2).map(|_| p.enter()).collect();
        let now = Instant::now();
        assert!(!p.claim_due(now), "the first close is due half a share after the start");
        let start = p.plan.get().unwrap().start;
        assert!(p.claim_due(start + Duration::from_millis(500)));
        assert!(!p.claim_due(start + Duration::from_millis(500)), "the second one second later");
        assert!(p.claim_due(start + Duration::from_millis(1500)));
    }
}
