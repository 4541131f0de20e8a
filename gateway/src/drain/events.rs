//! What a worker tells its relays besides their traffic ([`WorkerEvent`]): the process
//! reached `Stop`, the relay's turn came (in the drain, or after a reload removed its
//! upstream server), or a binary upgrade takes its pair.
//!
//! One task per worker ([`Hub::start`]) follows the shutdown phase and the removals;
//! each relay holds a slot in its worker's hub ([`Events`]) and is woken only when one
//! of them changed. A relay's events so cost it a slot taken and given back: no
//! allocation and no registration with a channel. Before, each relay registered on the
//! shutdown channel three times and on the removals once, with three boxed futures in a
//! `FuturesUnordered`: about 2 % of the worker's CPU per connect–upgrade–close cycle.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use slab::Slab;
use tokio::sync::watch;
use tokio::time::Sleep;

use super::Turns;
use super::removed::{Removals, Removed};
use crate::shutdown::{Phase, ShutdownRx};

/// What the worker may tell a relay, besides its traffic ([`Events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEvent {
    /// The shutdown reached `Stop`: end now.
    Stop,
    /// This pair's turn in a drain (or after a reload removed its server): close it.
    Turn,
    /// A binary upgrade takes the pair: pause at the next quiet moment.
    Handing,
}

/// One worker's view of the shutdown phase and the removed servers, and the relays
/// that wait for them to change.
#[derive(Debug)]
pub struct Hub {
    state: RefCell<State>,
}

#[derive(Debug)]
struct State {
    /// Counts the changes: a relay that saw this one has nothing new to look at.
    changes: u64,
    phase: Phase,
    removed: Arc<Removed>,
    /// The relays' wakers (`None` until a relay first waits).
    waiting: Slab<Option<Waker>>,
}

impl Hub {
    /// Starts following `shutdown` and `removals` on the current runtime, in a task
    /// that lives while their senders do (the process's life).
    pub fn start(shutdown: ShutdownRx, removals: &Removals) -> Rc<Self> {
        let announced = removals.subscribe();
        let state =
            State { changes: 0, phase: shutdown.phase(), removed: announced.borrow().clone(), waiting: Slab::new() };
        let hub = Rc::new(Self { state: RefCell::new(state) });
        tokio_uring::spawn(follow(hub.clone(), shutdown, announced));
        hub
    }

    /// Relays (and accept loops) waiting on this hub.
    #[cfg(test)]
    fn relays(&self) -> usize {
        self.state.borrow().waiting.len()
    }

    /// A watch on the phase (for a worker's accept loops).
    pub fn phases(&self) -> Phases<'_> {
        Phases(Slot::new(self))
    }
}

/// A waiter's place in a [`Hub`], given back when dropped.
struct Slot<'a> {
    hub: &'a Hub,
    key: usize,
}

impl<'a> Slot<'a> {
    fn new(hub: &'a Hub) -> Self {
        Self { hub, key: hub.state.borrow_mut().waiting.insert(None) }
    }

    /// Be woken by the next change.
    fn wake_me(&self, st: &mut State, cx: &Context<'_>) {
        if let Some(waker) = st.waiting.get_mut(self.key)
            && !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            *waker = Some(cx.waker().clone());
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.hub.state.borrow_mut().waiting.remove(self.key);
    }
}

/// A watch on the shutdown phase through the worker's [`Hub`]: asking costs a
/// comparison, not a registration with the shutdown channel.
pub struct Phases<'a>(Slot<'a>);

impl Phases<'_> {
    /// Resolves with the phase once it is at least `phase`.
    pub fn reached(&mut self, phase: Phase) -> impl Future<Output = Phase> + '_ {
        poll_fn(move |cx| {
            let mut st = self.0.hub.state.borrow_mut();
            if st.phase >= phase {
                return Poll::Ready(st.phase);
            }
            self.0.wake_me(&mut st, cx);
            Poll::Pending
        })
    }
}

/// Takes each change of the phase or of the removals into `hub` and wakes its relays.
/// A channel whose sender is gone (the process exits) is followed no further.
async fn follow(hub: Rc<Hub>, mut shutdown: ShutdownRx, mut announced: watch::Receiver<Arc<Removed>>) {
    let (mut phases, mut removals) = (true, true);
    while phases || removals {
        tokio::select! {
            open = shutdown.changed(), if phases => phases = open,
            open = announced.changed(), if removals => removals = open.is_ok(),
        }
        let wake: Vec<Waker> = {
            let mut st = hub.state.borrow_mut();
            st.changes += 1;
            st.phase = shutdown.phase();
            st.removed = announced.borrow_and_update().clone();
            st.waiting.iter_mut().filter_map(|(_, w)| w.take()).collect()
        };
        wake.into_iter().for_each(Waker::wake);
    }
}

/// One relay's events: its slot in the worker's [`Hub`], and its turn's timer once the
/// turn is known. Without `turns` (no pacer) only `Stop` comes.
pub struct Events<'a> {
    slot: Slot<'a>,
    /// The hub's change last looked at (`None`: none yet).
    seen: Option<u64>,
    turns: Option<Turns<'a>>,
    /// The turn in the drain and the turn after the server's removal, once known.
    drain_turn: Option<Pin<Box<Sleep>>>,
    removal_turn: Option<Pin<Box<Sleep>>>,
    /// `Turn` and `Handing` come at most once.
    turned: bool,
    handed: bool,
    /// The hub's change at which the last ask found nothing and left this relay's
    /// waker in its slot, with no timer of its own to look at ([`Events::quiet`]).
    waiting_at: Option<u64>,
}

impl<'a> Events<'a> {
    pub fn new(hub: &'a Hub, turns: Option<Turns<'a>>) -> Self {
        Self {
            slot: Slot::new(hub),
            seen: None,
            turns,
            drain_turn: None,
            removal_turn: None,
            turned: false,
            handed: false,
            waiting_at: None,
        }
    }

    /// Nothing can be told before the hub's next change, which wakes this relay:
    /// asking again now would find nothing. A relay polled on every wake of its task
    /// (its traffic's too) skips asking then. The relay must be polled by one task
    /// only: the waker left in the slot is the one of the last ask.
    pub fn quiet(&self) -> bool {
        self.waiting_at.is_some_and(|at| at == self.slot.hub.state.borrow().changes)
    }

    /// The next event. Dropping the future loses nothing: a relay asks again at each
    /// pass of its loop, which costs a comparison until something changed.
    pub fn told(&mut self) -> impl Future<Output = WorkerEvent> + '_ {
        poll_fn(move |cx| self.poll_next(cx))
    }

    /// Polls for the next event (see [`Events::told`]).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<WorkerEvent> {
        self.waiting_at = None;
        let changes = {
            let mut st = self.slot.hub.state.borrow_mut();
            if st.phase >= Phase::Stop {
                return Poll::Ready(WorkerEvent::Stop);
            }
            if self.seen != Some(st.changes) {
                self.seen = Some(st.changes);
                self.look(&st);
            }
            if !self.handed
                && st.phase == Phase::Handing
                && self.turns.and_then(|t| t.upgrade).is_some_and(crate::upgrade::Upgrade::passing)
            {
                self.handed = true;
                return Poll::Ready(WorkerEvent::Handing);
            }
            self.slot.wake_me(&mut st, cx);
            // A phase `Handing` whose upgrade did not pass yet is looked at each time.
            (self.handed || st.phase != Phase::Handing).then_some(st.changes)
        };
        if self.turned {
            self.waiting_at = changes;
            return Poll::Pending;
        }
        let mut due = |t: &mut Option<Pin<Box<Sleep>>>| t.as_mut().is_some_and(|s| s.as_mut().poll(cx).is_ready());
        if due(&mut self.drain_turn) {
            self.turned = true;
            return Poll::Ready(WorkerEvent::Turn);
        }
        if due(&mut self.removal_turn) {
            self.turned = true;
            if let Some(removal) = self.turns.and_then(|t| t.removal) {
                removal.fire();
            }
            return Poll::Ready(WorkerEvent::Turn);
        }
        if self.drain_turn.is_none() && self.removal_turn.is_none() {
            self.waiting_at = changes;
        }
        Poll::Pending
    }

    /// Starts the turns' timers that the hub's state now calls for: the drain's at the
    /// pacer's next slot, the removal's at its reload's next slot.
    fn look(&mut self, st: &State) {
        let Some(turns) = self.turns.filter(|_| !self.turned) else { return };
        if st.phase >= Phase::Draining && self.drain_turn.is_none() {
            self.drain_turn = Some(Box::pin(tokio::time::sleep_until(turns.pacer.slot().into())));
        }
        if self.removal_turn.is_none()
            && let Some(plan) = turns.removal.and_then(|r| st.removed.turns_of(r.server()))
        {
            self.removal_turn = Some(Box::pin(tokio::time::sleep_until(plan.next().into())));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::DrainConfig;
    use crate::drain::Pacer;
    use crate::shutdown::{self, Phase};

    /// Whether `events` tells something within `within` (and what).
    async fn told(events: &mut Events<'_>, within: Duration) -> Option<WorkerEvent> {
        tokio::time::timeout(within, events.told()).await.ok()
    }

    /// A relay that found nothing need not ask again until the hub changes (which
    /// wakes it), nor while it waits for a turn of its own or for an upgrade to pass.
    #[test]
    fn a_relay_is_quiet_only_between_changes_with_nothing_of_its_own_to_wait_for() {
        tokio_uring::start(async {
            let cfg = DrainConfig { window: Duration::from_secs(30), jitter: 0.0, ..DrainConfig::default() };
            let (tx, rx) = shutdown::channel();
            let hub = Hub::start(rx, &Removals::new(&cfg));
            let pacer = Pacer::new(&cfg, 1);
            let mut events = Events::new(&hub, Some(Turns { pacer: &pacer, removal: None, upgrade: None }));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(!events.quiet(), "quiet before it was asked");
            assert!(events.poll_next(&mut cx).is_pending());
            assert!(events.quiet(), "not quiet after finding nothing");
            // A change ends the quiet (the hub's task takes it in).
            tx.set(Phase::Draining);
            let start = std::time::Instant::now();
            while events.quiet() && start.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(!events.quiet(), "quiet after the phase changed");
            // Its turn in the drain is a timer of its own: asked each time until it comes.
            assert!(events.poll_next(&mut cx).is_pending(), "a turn 15 s away came at once");
            assert!(!events.quiet(), "quiet while its turn's timer runs");
            // An event that was told leaves it not quiet either.
            tx.set(Phase::Stop);
            assert_eq!(told(&mut events, Duration::from_secs(5)).await, Some(WorkerEvent::Stop));
            assert!(!events.quiet());
            // Without a turn to wait for, `Handing` (a binary upgrade) is looked at on
            // every ask: whether the upgrade passes pairs is not a change of the hub.
            let (tx, rx) = shutdown::channel();
            let hub = Hub::start(rx, &Removals::new(&cfg));
            let mut bare = Events::new(&hub, None);
            tx.set(Phase::Handing);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(bare.poll_next(&mut cx).is_pending());
            assert!(!bare.quiet(), "quiet in Handing");
        });
    }

    /// The drain's turns come one per relay, at the pacer's slots, only once the drain
    /// started (also to a relay that starts in it), then `Stop`; each relay's slot in
    /// the hub goes with it.
    #[test]
    fn relays_are_told_their_turn_then_the_stop() {
        tokio_uring::start(async {
            let cfg = DrainConfig { window: Duration::from_millis(200), jitter: 0.0, ..DrainConfig::default() };
            let (tx, rx) = shutdown::channel();
            let hub = Hub::start(rx, &Removals::new(&cfg));
            let pacer = Pacer::new(&cfg, 1);
            let turns = Some(Turns { pacer: &pacer, removal: None, upgrade: None });
            let (mut a, mut b) = (Events::new(&hub, turns), Events::new(&hub, None));
            assert_eq!(hub.relays(), 2);
            assert_eq!(told(&mut a, Duration::from_millis(100)).await, None, "told something while running");

            let start = std::time::Instant::now();
            tx.set(Phase::Draining);
            assert_eq!(told(&mut a, Duration::from_secs(5)).await, Some(WorkerEvent::Turn));
            let mut late = Events::new(&hub, turns);
            assert_eq!(told(&mut late, Duration::from_secs(5)).await, Some(WorkerEvent::Turn));
            // One planned relay in a 200 ms window: slots at 100 ms, then the window's end.
            assert!(start.elapsed() >= Duration::from_millis(190), "turns came before their slots");
            // A turn comes once; without a pacer there is none.
            assert_eq!(told(&mut a, Duration::from_millis(100)).await, None);
            assert_eq!(told(&mut b, Duration::from_millis(100)).await, None);

            tx.set(Phase::Stop);
            for events in [&mut a, &mut b, &mut late] {
                assert_eq!(told(events, Duration::from_secs(5)).await, Some(WorkerEvent::Stop));
            }
            drop((a, b, late));
            assert_eq!(hub.relays(), 0, "a relay's slot outlived it");
        });
    }
}
