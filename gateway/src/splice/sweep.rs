//! Per-worker sweeper for the idle timeout, the drain signal and pass mode of
//! spliced pairs, so that no pair holds a timer or a channel future of its own.
//!
//! Each worker thread runs one sweeper task while it has pairs, parked (rows of
//! `park`'s table) or supervised by a task (registered here); its state is a
//! field of the worker's splice state (`splicer::Local`). Every tick it
//! reads each pair's last-activity stamp and pass counters from the
//! kernel-shared array (plain memory, no syscall) and the drain phase, resumes
//! the parked pairs that need it and wakes the supervisors that must end.
//! Must never block and never make a syscall per pair.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::shutdown::{Phase, ShutdownRx};
use slab::Slab;

use super::backpressure::needs_userspace;
use super::park;
use super::splicer::Local;

/// Longest time between two checks of a pair (the drain signal's latency).
const TICK_MAX: Duration = Duration::from_millis(250);
/// Shortest tick, for very short idle timeouts.
const TICK_MIN: Duration = Duration::from_millis(10);

/// Why the sweeper ended a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Swept {
    Idle,
    Drain,
}

struct Entry {
    slot: u32,
    /// Idle limit in ns, `u64::MAX` for none.
    idle_ns: u64,
    drain: ShutdownRx,
    waker: Option<Waker>,
    swept: Option<Swept>,
}

/// One worker's sweeper: the supervised pairs it watches and its tick.
pub(super) struct Sweeper {
    entries: Slab<Entry>,
    running: bool,
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
}

/// Starts this worker's sweeper task unless it is running.
pub(super) fn ensure_running(local: &Rc<Local>) {
    let mut sw = local.sweeper.borrow_mut();
    if !sw.running {
        sw.running = true;
        tokio::task::spawn_local(run(local.clone()));
    }
}

/// Registers a supervised pair with this worker's sweeper; resolves when it must end.
pub(super) fn watch_pair(local: &Rc<Local>, slot: u32, idle: Option<Duration>, drain: ShutdownRx) -> Registration {
    let idle_ns = idle.map_or(u64::MAX, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let key = {
        let mut sw = local.sweeper.borrow_mut();
        sw.shorten_tick(idle);
        sw.entries.insert(Entry { slot, idle_ns, drain, waker: None, swept: None })
    };
    ensure_running(local);
    Registration { local: local.clone(), key }
}

/// A pair's place in the sweeper; removing it on drop.
pub(super) struct Registration {
    local: Rc<Local>,
    key: usize,
}

impl Future for Registration {
    type Output = Swept;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Swept> {
        let mut sw = self.local.sweeper.borrow_mut();
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
        let mut sw = self.local.sweeper.borrow_mut();
        if sw.entries.contains(self.key) {
            sw.entries.remove(self.key);
        }
    }
}

async fn run(local: Rc<Local>) {
    let inner = &local.splicer.inner;
    loop {
        let tick = local.sweeper.borrow().tick;
        tokio::time::sleep(tick).await;
        let now = crate::io::bpf::coarse_now_ns();
        // Resumed rows become supervision tasks, which register here when first polled.
        let parked = park::sweep(&local, now);
        let mut sw = local.sweeper.borrow_mut();
        if sw.entries.is_empty() && parked == 0 {
            sw.running = false;
            return;
        }
        for (_, e) in &mut sw.entries {
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
