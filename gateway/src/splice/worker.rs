//! One worker's spliced pairs, and the one owner of their state.
//!
//! A pair's life is a line of states, each held by exactly one thing and moved
//! only here: handing over (`handover::splice` returns a [`Pair`]) → parked (a row
//! of the [`Table`], the pair's polls armed on the worker's poll ring) →
//! supervised (a task running `supervise::supervise`) → ended (its
//! [`SpliceOutcome`] handed to the caller's callback). The handover, the table,
//! the sweeper and the supervisor return what happened (a pair, a row taken back,
//! a decision, an outcome); only this module arms and cancels polls, resumes rows,
//! spawns supervision and runs the sweep tick. Must never block, and never hold a
//! borrow of the table or the sweeper across an await or a callback.

use std::cell::{OnceCell, RefCell};
use std::os::fd::OwnedFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use tokio_uring::net::TcpStream;

use super::handover::{self, HandoverError};
use super::kernel::{Inner, Pair};
use super::park::{Table, Taken};
use super::supervise::{self, SpliceOutcome};
use super::sweep::{self, Registration, Sweeper, Swept};
use crate::drain::{FrameTracker, Pacer};
use crate::readiness::{self, Ring};
use crate::shutdown::{Phase, ShutdownRx};

/// How long a pair's turn in the drain waits for frames in progress and for the
/// peers' Close when no drain schedule was set (`drain.close_timeout`'s default).
const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Parked pairs a worker passes to the new process per sweep tick in a binary upgrade.
const HAND_PER_TICK: usize = 512;

/// A worker's splice state: the kernel side, its poll ring, its parked pairs, its
/// sweeper, and how its pairs end (idle timeout, drain signal).
pub(super) struct Local {
    inner: Arc<Inner>,
    ring: Ring,
    table: RefCell<Table>,
    sweeper: Rc<RefCell<Sweeper>>,
    idle: Option<Duration>,
    shutdown: ShutdownRx,
    /// The worker's drain schedule, once set: pairs close at their turn, not at `Stop`,
    /// each waiting up to the duration for its frames in progress and its Close.
    pacer: OnceCell<(Rc<Pacer>, Duration)>,
}

impl Local {
    /// The state of one worker, whose ring delivers its token completions here (the
    /// handler holds the state weakly: the ring is one of its fields).
    pub(super) fn start(inner: Arc<Inner>, ring: &Ring, idle: Option<Duration>, shutdown: ShutdownRx) -> Rc<Self> {
        let local = Rc::new(Self {
            table: RefCell::new(Table::new(inner.capacity, idle)),
            sweeper: Rc::new(RefCell::new(Sweeper::new(idle))),
            inner,
            ring: ring.clone(),
            idle,
            shutdown,
            pacer: OnceCell::new(),
        });
        let weak: Weak<Self> = Rc::downgrade(&local);
        local.ring.set_token_handler(Rc::new(move |token, _result| {
            if let Some(local) = weak.upgrade() {
                local.on_token(token);
            }
        }));
        local
    }

    /// Pairs close at their turn in `pacer`'s schedule when the drain begins.
    pub(super) fn pace_drain(&self, pacer: Rc<Pacer>, close_timeout: Duration) {
        let _ = self.pacer.set((pacer, close_timeout));
    }

    /// Ends the pairs whose turn in the drain has come, one per due close; parked
    /// ones first. They get a Close 1001 at a frame boundary (see `going_away`).
    fn drain_due(self: &Rc<Self>) {
        let Some((pacer, _)) = self.pacer.get() else { return };
        loop {
            let parked = self.table.borrow().len() > 0;
            if !parked && !self.sweeper.borrow().has_live() {
                return;
            }
            if !pacer.claim_due(std::time::Instant::now()) {
                return;
            }
            tracing::debug!("drain: a spliced pair's turn");
            let taken = self.table.borrow_mut().take_any();
            match taken {
                Some(taken) => self.resume(taken, Some(Swept::GoingAway)),
                None => {
                    self.sweeper.borrow_mut().drain_one();
                }
            }
        }
    }

    /// A binary upgrade took the maps: every parked pair goes to the new process. Its
    /// callback gets [`Close::Handed`](crate::close::Close::Handed) with the pair's
    /// sockets and kernel facts (`SpliceOutcome::handed`), and passes them on before
    /// it returns; this process then closes its descriptors (the sockets live on there).
    /// Supervised pairs (closing, under pressure) stay and end here. At most
    /// [`HAND_PER_TICK`] a tick: each is a blocking send to the new process. Stops as
    /// soon as the new process no longer takes pairs (its end failed them back to
    /// [`OWN`](super::kernel::OWN)).
    fn hand_parked(&self) {
        for _ in 0..HAND_PER_TICK {
            if self.inner.upgrade.load(std::sync::atomic::Ordering::Acquire) != super::kernel::HANDING {
                return;
            }
            let taken = self.table.borrow_mut().take_any();
            let Some(Taken { pair, finish, tokens, .. }) = taken else { return };
            for token in tokens {
                self.ring.disarm(token);
            }
            let (slot, early) = (pair.ins.slot, pair.early);
            let handed = super::supervise::Handed {
                client: std::os::fd::AsRawFd::as_raw_fd(&pair.client),
                upstream: std::os::fd::AsRawFd::as_raw_fd(&pair.upstream),
                kernel: PassedKernel {
                    slot,
                    client_cookie: pair.ins.client_cookie,
                    upstream_cookie: pair.ins.upstream_cookie,
                    early,
                },
            };
            // Its links and slot stay: the new process relays with them.
            self.inner.counters.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            finish(SpliceOutcome {
                to_upstream: early + super::backpressure::bytes(&self.inner, slot, super::shared::TO_UPSTREAM),
                to_client: super::backpressure::bytes(&self.inner, slot, super::shared::TO_CLIENT),
                reason: crate::close::Close::Handed,
                pressure_runs: 0,
                held_max: 0,
                trimmed: 0,
                handed: Some(handed),
            });
            drop(pair);
        }
    }

    /// The pairs the caller knows by `owner`, parked or supervised.
    pub(super) fn owned_by(&self, owner: usize) -> Vec<Owned> {
        let mut all: Vec<Owned> = self
            .table
            .borrow()
            .owned_by(owner)
            .into_iter()
            .map(|(row, slot)| Owned { row: Some(row), slot, owner })
            .collect();
        all.extend(self.sweeper.borrow().owned_by(owner).into_iter().map(|slot| Owned { row: None, slot, owner }));
        all
    }

    /// Ends `pair` as at its turn in the drain (a Close 1001 at a frame boundary, logged
    /// `close=removed`) if it still lives here; false if it ended.
    pub(super) fn remove_owned(self: &Rc<Self>, pair: Owned) -> bool {
        let taken = pair.row.and_then(|row| self.table.borrow_mut().take(row));
        if let Some(taken) = taken {
            self.resume(taken, Some(Swept::Removed));
            return true;
        }
        // Supervised since (bytes passed to userspace): the sweeper finds it by its slot.
        self.sweeper.borrow_mut().remove_owned(pair.slot, pair.owner)
    }

    /// Parked pairs.
    pub(super) fn parked(&self) -> usize {
        self.table.borrow().len()
    }

    /// A close-only poll of a parked pair fired (or a stale one completed).
    fn on_token(self: &Rc<Self>, token: u64) {
        let row = self.table.borrow_mut().take(token);
        if let Some(row) = row {
            self.resume(row, None);
        }
    }

    /// Turns a row taken back from the table into a supervision task that ends
    /// with the pair's callback; `swept` says the sweeper already ended it.
    fn resume(self: &Rc<Self>, taken: Taken, swept: Option<Swept>) {
        let Taken { pair, finish, tokens, owner } = taken;
        for token in tokens {
            self.ring.disarm(token);
        }
        // Registered now, not when the task first runs: from here on the sweeper (and
        // `owned_by`) knows the pair.
        let slot = pair.ins.slot;
        let registration = swept.is_none().then(|| self.watch(slot, owner));
        let local = self.clone();
        tokio_uring::spawn(async move {
            let watch = || registration.unwrap_or_else(|| local.watch(slot, owner));
            let close_timeout = local.pacer.get().map_or(DEFAULT_CLOSE_TIMEOUT, |(_, t)| *t);
            let outcome = supervise::supervise(&local.inner, &local.ring, pair, (swept, close_timeout), watch).await;
            finish(outcome);
        });
    }

    /// Registers a supervised pair with the sweeper, whose task then runs.
    fn watch(self: &Rc<Self>, slot: u32, owner: usize) -> Registration {
        let registration = sweep::watch_pair(&self.sweeper, (slot, owner), self.idle, self.shutdown.clone());
        self.ensure_sweeping();
        registration
    }

    /// Starts the sweep task unless it is running.
    fn ensure_sweeping(self: &Rc<Self>) {
        let mut sw = self.sweeper.borrow_mut();
        if !sw.running {
            sw.running = true;
            tokio::task::spawn_local(sweep_loop(self.clone()));
        }
    }
}

/// A pair the caller knows by its `owner` key, as found by
/// [`WorkerPairs::owned_by`](super::WorkerPairs::owned_by): its row while parked (the
/// token of its first poll; `None`: supervised), and its slot.
#[derive(Debug, Clone, Copy)]
pub struct Owned {
    row: Option<u64>,
    slot: u32,
    owner: usize,
}

/// What a parked pair passed in a binary upgrade keeps of the kernel side: its slot,
/// its sockets' cookies and the client bytes forwarded during its handover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PassedKernel {
    pub slot: u32,
    pub client_cookie: u64,
    pub upstream_cookie: u64,
    pub early: u64,
}

/// See [`WorkerPairs::adopt`](super::WorkerPairs::adopt).
pub(super) fn adopt(local: &Rc<Local>, client: OwnedFd, upstream: OwnedFd, kernel: PassedKernel) -> SplicedPair {
    let PassedKernel { slot, client_cookie, upstream_cookie, early } = kernel;
    let ins = super::kernel::Inserted { slot, client_cookie, upstream_cookie };
    // Counted as spliced here from now on (the old process stopped counting it).
    local.inner.counters.active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    SplicedPair { local: local.clone(), pair: Pair { client, upstream, ins, early } }
}

/// See [`WorkerPairs::splice`](super::WorkerPairs::splice).
pub(super) async fn splice(
    local: &Rc<Local>,
    client: TcpStream,
    upstream: TcpStream,
    client_early: Vec<u8>,
    frames: [FrameTracker; 2],
) -> Result<SplicedPair, HandoverError> {
    let pair = handover::splice(&local.inner, &local.ring, client, upstream, client_early, frames).await?;
    Ok(SplicedPair { local: local.clone(), pair })
}

/// The worker's sweep task, while it has pairs: every tick, resumes the parked pairs
/// the table finds due and lets the sweeper check the supervised ones.
async fn sweep_loop(local: Rc<Local>) {
    loop {
        let tick = local.sweeper.borrow().tick();
        tokio::time::sleep(tick).await;
        let now = crate::io::bpf::coarse_now_ns();
        let stop = local.shutdown.phase() == Phase::Stop;
        // Resumed rows become supervision tasks, which register when first polled.
        let (due, parked) = {
            let mut table = local.table.borrow_mut();
            let due = table.due(&local.inner, now, stop);
            (due, table.len())
        };
        for (taken, swept) in due {
            local.resume(taken, swept);
        }
        if local.shutdown.phase() == Phase::Draining {
            local.drain_due();
        }
        if local.shutdown.phase() == Phase::Handing
            && local.inner.upgrade.load(std::sync::atomic::Ordering::Acquire) == super::kernel::HANDING
        {
            local.hand_parked();
        }
        let mut sw = local.sweeper.borrow_mut();
        if sw.is_empty() && parked == 0 {
            sw.running = false;
            return;
        }
        sw.check(&local.inner, now);
    }
}

/// A connection whose sockets are in the kernel; hand it to [`SplicedPair::park`].
/// Not `Send`: it belongs to the worker thread that spliced it.
pub struct SplicedPair {
    local: Rc<Local>,
    pair: Pair,
}

impl std::fmt::Debug for SplicedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplicedPair")
            .field("client_cookie", &self.pair.ins.client_cookie)
            .field("upstream_cookie", &self.pair.ins.upstream_cookie)
            .finish_non_exhaustive()
    }
}

impl SplicedPair {
    /// Leaves the pair to the kernel and this worker's table; `finish` is called
    /// with the outcome when the pair ends. The pair costs no task while parked. The
    /// caller finds it again by `owner` (any key of its own; 0 for none) with
    /// [`WorkerPairs::owned_by`](super::WorkerPairs::owned_by).
    pub fn park(self, owner: usize, finish: impl FnOnce(SpliceOutcome) + 'static) -> Owned {
        let Self { local, pair } = self;
        let slot = pair.ins.slot;
        let polls = local.table.borrow_mut().insert(pair, owner, finish);
        for (fd, token) in polls {
            local.ring.arm(fd, readiness::CLOSED, token);
        }
        local.ensure_sweeping();
        Owned { row: Some(polls[0].1), slot, owner }
    }

    /// Socket cookies (client, upstream): their keys in the sockhash.
    pub fn cookies(&self) -> (u64, u64) {
        (self.pair.ins.client_cookie, self.pair.ins.upstream_cookie)
    }

    /// The kernel side, the pair's row of the shared array and the bytes forwarded during the handover.
    pub(super) fn row(&self) -> (&Inner, u32, u64) {
        (&self.local.inner, self.pair.ins.slot, self.pair.early)
    }
}
