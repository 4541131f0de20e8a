//! Per-worker sweeper for the idle timeout, the drain signal and pass mode of
//! spliced pairs, so that no pair holds a timer or a channel future of its own.
//!
//! The [`Sweeper`] is the registry of a worker's supervised pairs (a field of its
//! `worker::Local`); the worker's sweep task (in `worker`) calls [`Sweeper::check`]
//! every tick, which reads each pair's last-activity stamp and pass counters from
//! the kernel-shared array (plain memory, no syscall) and the drain phase, and
//! wakes the supervisors that must end or relay. It decides; it never resumes,
//! spawns or ends a pair itself. Must never block and never make a syscall per pair.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::shutdown::{Phase, ShutdownRx};
use slab::Slab;

use super::backpressure::needs_userspace;
use super::kernel::Inner;

/// Longest time between two checks of a pair (the drain signal's latency).
const TICK_MAX: Duration = Duration::from_millis(250);
/// Shortest tick, for very short idle timeouts.
const TICK_MIN: Duration = Duration::from_millis(10);

/// Why the sweeper ended a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Swept {
    Idle,
    /// The drain's `Stop`: close at once (FIN).
    Drain,
    /// The pair's turn in the paced drain: a Close 1001 at a frame boundary.
    GoingAway,
    /// As [`Swept::GoingAway`], at the pair's turn after a reload removed its upstream
    /// server (`drain_removed`; logged `close=removed`).
    Removed,
}

/// An idle limit in ns, `u64::MAX` for none.
pub(super) fn idle_ns(idle: Option<Duration>) -> u64 {
    idle.map_or(u64::MAX, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

struct Entry {
    slot: u32,
    /// The caller's key for the pair.
    owner: usize,
    /// Idle limit in ns, `u64::MAX` for none.
    idle_ns: u64,
    drain: ShutdownRx,
    waker: Option<Waker>,
    swept: Option<Swept>,
}

/// One worker's sweeper: the supervised pairs it watches, whether its task runs,
/// and its tick.
pub(super) struct Sweeper {
    entries: Slab<Entry>,
    /// Whether the worker's sweep task is running.
    pub running: bool,
    tick: Duration,
}

impl Sweeper {
    /// A sweeper whose ticks are short enough for an idle timeout of `idle`.
    pub(super) fn new(idle: Option<Duration>) -> Self {
        let mut sweeper = Self { entries: Slab::new(), running: false, tick: TICK_MAX };
        sweeper.shorten_tick(idle);
        sweeper
    }

    /// Makes the ticks short enough for an idle timeout of `idle` (a quarter of it).
    fn shorten_tick(&mut self, idle: Option<Duration>) {
        if let Some(d) = idle {
            self.tick = self.tick.min((d / 4).max(TICK_MIN));
        }
    }

    /// Time between two checks.
    pub(super) fn tick(&self) -> Duration {
        self.tick
    }

    /// Whether no supervised pair is registered.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Ends one supervised pair for the drain (its turn came); false when none is left.
    pub(super) fn drain_one(&mut self) -> bool {
        let Some((_, e)) = self.entries.iter_mut().find(|(_, e)| e.swept.is_none()) else { return false };
        e.swept = Some(Swept::GoingAway);
        if let Some(w) = e.waker.take() {
            w.wake();
        }
        true
    }

    /// The slots of the supervised pairs the caller knows by `owner`.
    pub(super) fn owned_by(&self, owner: usize) -> Vec<u32> {
        self.entries.iter().filter(|(_, e)| e.owner == owner && e.swept.is_none()).map(|(_, e)| e.slot).collect()
    }

    /// Ends the supervised pair in `slot` known by `owner` for the removal of its
    /// upstream server; false when there is none (it ended).
    pub(super) fn remove_owned(&mut self, slot: u32, owner: usize) -> bool {
        let found = self.entries.iter_mut().find(|(_, e)| e.slot == slot && e.owner == owner && e.swept.is_none());
        let Some((_, e)) = found else { return false };
        e.swept = Some(Swept::Removed);
        if let Some(w) = e.waker.take() {
            w.wake();
        }
        true
    }

    /// Whether some supervised pair has not been ended yet.
    pub(super) fn has_live(&self) -> bool {
        self.entries.iter().any(|(_, e)| e.swept.is_none())
    }

    /// One check of every supervised pair at `now` (ns): marks and wakes those that
    /// are idle or must close for the drain, and wakes those with bytes passed to
    /// userspace.
    pub(super) fn check(&mut self, inner: &Inner, now: u64) {
        for (_, e) in &mut self.entries {
            if e.swept.is_some() {
                continue;
            }
            let swept = if e.drain.phase() == Phase::Stop {
                Some(Swept::Drain)
            } else {
                let last = inner.last_active(e.slot).load(Ordering::Relaxed);
                (now.saturating_sub(last) >= e.idle_ns).then_some(Swept::Idle)
            };
            if swept.is_some() {
                e.swept = swept;
                if let Some(w) = e.waker.take() {
                    w.wake();
                }
            } else if (0..2).any(|dir| needs_userspace(inner, e.slot, dir)) {
                // A direction went into pass mode while its supervisor waited only
                // for a close: wake it so it starts relaying (see `supervise`).
                if let Some(w) = &e.waker {
                    w.wake_by_ref();
                }
            }
        }
    }
}

/// Registers a supervised pair with `sweeper`; resolves when it must end. The
/// caller makes sure the sweep task runs.
pub(super) fn watch_pair(
    sweeper: &Rc<RefCell<Sweeper>>,
    (slot, owner): (u32, usize),
    idle: Option<Duration>,
    drain: ShutdownRx,
) -> Registration {
    let key = {
        let mut sw = sweeper.borrow_mut();
        sw.shorten_tick(idle);
        sw.entries.insert(Entry { slot, owner, idle_ns: idle_ns(idle), drain, waker: None, swept: None })
    };
    Registration { sweeper: sweeper.clone(), key }
}

/// A pair's place in the sweeper; removing it on drop.
pub(super) struct Registration {
    sweeper: Rc<RefCell<Sweeper>>,
    key: usize,
}

impl Future for Registration {
    type Output = Swept;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Swept> {
        let mut sw = self.sweeper.borrow_mut();
        let Some(e) = sw.entries.get_mut(self.key) else { return Poll::Pending };
        if let Some(why) = e.swept {
            return Poll::Ready(why);
        }
        if !e.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            e.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut sw = self.sweeper.borrow_mut();
        if sw.entries.contains(self.key) {
            sw.entries.remove(self.key);
        }
    }
}
