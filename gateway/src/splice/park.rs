//! Parked pairs: an idle spliced pair is a row of its worker's table, not a task.
//!
//! Once a pair is in the kernel, nothing happens in userspace until a side
//! closes or fails, the idle timeout or the drain signal ends it, or a
//! direction goes over budget. So [`SplicedPair::park`] stores just the two
//! sockets, the bytes forwarded during the handover and the caller's finish
//! callback (what the access log needs), arms one close-only poll per socket
//! on the worker's poll ring with a token naming the row, and returns: no task,
//! future, waker, timer or buffer exists for the pair.
//!
//! A row is resumed into a supervision task ([`SplicedPair::supervise`]) when a
//! poll fires, or when the sweeper (`sweep`) finds it idle, draining, or with
//! bytes passed to userspace. The task runs to the pair's end (a resumed pair
//! is not parked again) and hands the outcome to the finish callback.
//!
//! Must never touch a socket of a parked pair except to arm and cancel its polls.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::time::Duration;

use slab::Slab;

use super::backpressure::needs_userspace;
use super::handover::Inserted;
use super::splicer::{Local, Splicer};
use super::supervise::{SpliceOutcome, SplicedPair};
use super::sweep::{self, Swept};
use crate::readiness;
use crate::shutdown::{Phase, ShutdownRx};

/// Token bits: row key (32), side (1), generation (29).
const SIDE_SHIFT: u32 = 32;
const GEN_SHIFT: u32 = 33;
const GEN_MASK: u32 = (1 << 29) - 1;

/// What a parked pair keeps, boxed once; `F` is the caller's finish callback.
struct Parked<F: ?Sized> {
    client: OwnedFd,
    upstream: OwnedFd,
    /// Socket cookies (client, upstream): the keys of the pair's links.
    cookies: [u64; 2],
    early: u64,
    finish: F,
}

/// A parked pair with its callback type erased.
trait Resume {
    /// The client's and the upstream's fd.
    fn fds(&self) -> (RawFd, RawFd);
    /// Turns the row back into a supervision task that ends with the callback.
    fn resume(self: Box<Self>, local: Rc<Local>, slot: u32, start: Option<Swept>, policy: &Policy);
}

impl<F: FnOnce(SpliceOutcome) + 'static> Resume for Parked<F> {
    fn fds(&self) -> (RawFd, RawFd) {
        (self.client.as_raw_fd(), self.upstream.as_raw_fd())
    }

    fn resume(self: Box<Self>, local: Rc<Local>, slot: u32, start: Option<Swept>, policy: &Policy) {
        let Parked { client, upstream, cookies: [client_cookie, upstream_cookie], early, finish } = *self;
        let ins = Inserted { slot, client_cookie, upstream_cookie };
        let pair = SplicedPair::new(local, client, upstream, ins, early);
        let (idle, shutdown) = (policy.idle, policy.shutdown.clone());
        tokio_uring::spawn(async move {
            let outcome = pair.supervise(start, idle, shutdown).await;
            finish(outcome);
        });
    }
}

/// One row: the kernel slot inline (the sweeper reads it for every row) and the rest boxed.
struct Row {
    slot: u32,
    generation: u32,
    pair: Box<dyn Resume>,
}

/// How this worker's pairs end: the idle timeout and the drain signal.
struct Policy {
    idle: Option<Duration>,
    shutdown: ShutdownRx,
}

/// One worker's parked pairs, a field of its [`Local`].
pub(super) struct Table {
    policy: Policy,
    idle_ns: u64,
    rows: Slab<Row>,
    next_generation: u32,
}

impl Table {
    pub(super) fn new(splicer: &Splicer, idle: Option<Duration>, shutdown: ShutdownRx) -> Self {
        Self {
            policy: Policy { idle, shutdown },
            idle_ns: idle.map_or(u64::MAX, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            // Reserved, not touched: rows cost memory only as pairs are parked, and
            // the table never moves a million rows to grow.
            rows: Slab::with_capacity(splicer.capacity() as usize),
            next_generation: 0,
        }
    }

    /// Parked pairs.
    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }
}

/// Makes the worker's poll ring deliver its token completions to this table. The
/// handler holds the worker's state weakly: the ring is one of its fields.
pub(super) fn listen(local: &Rc<Local>) {
    let weak: Weak<Local> = Rc::downgrade(local);
    local.ring.set_token_handler(Rc::new(move |token, result| {
        if let Some(local) = weak.upgrade() {
            on_token(&local, token, result);
        }
    }));
}

fn token(key: usize, side: u64, generation: u32) -> u64 {
    key as u64 | side << SIDE_SHIFT | u64::from(generation) << GEN_SHIFT
}

/// See [`SplicedPair::park`].
pub(super) fn park(pair: SplicedPair, finish: impl FnOnce(SpliceOutcome) + 'static) {
    let (local, client, upstream, ins, early) = pair.into_parts();
    let slot = ins.slot;
    let cookies = [ins.client_cookie, ins.upstream_cookie];
    let parked: Box<dyn Resume> = Box::new(Parked { client, upstream, cookies, early, finish });
    let (c, u) = parked.fds();
    {
        let mut table = local.table.borrow_mut();
        let generation = table.next_generation;
        table.next_generation = (generation + 1) & GEN_MASK;
        let entry = table.rows.vacant_entry();
        let key = entry.key();
        local.ring.arm(c, readiness::CLOSED, token(key, 0, generation));
        local.ring.arm(u, readiness::CLOSED, token(key, 1, generation));
        entry.insert(Row { slot, generation, pair: parked });
    }
    sweep::ensure_running(&local);
}

/// Why a row is resumed.
#[derive(Clone, Copy)]
enum Wake {
    /// A poll fired (close or error) or bytes were passed to userspace.
    Event,
    Swept(Swept),
}

/// Removes row `key` and resumes it as a task.
fn resume(local: &Rc<Local>, table: &mut Table, key: usize, wake: Wake) {
    let row = table.rows.remove(key);
    local.ring.disarm(token(key, 0, row.generation));
    local.ring.disarm(token(key, 1, row.generation));
    let start = match wake {
        Wake::Event => None,
        Wake::Swept(why) => Some(why),
    };
    row.pair.resume(local.clone(), row.slot, start, &table.policy);
}

/// The poll ring's token handler: a close-only poll of a parked pair fired.
fn on_token(local: &Rc<Local>, token: u64, _result: i32) {
    let key = (token & u64::from(u32::MAX)) as usize;
    let generation = ((token >> GEN_SHIFT) as u32) & GEN_MASK;
    let mut table = local.table.borrow_mut();
    // A completion for a row already resumed (its cancelled poll) or reused is stale.
    if table.rows.get(key).is_some_and(|r| r.generation == generation) {
        resume(local, &mut table, key, Wake::Event);
    }
}

/// One sweep over this worker's parked pairs (no syscall per row): resumes those that
/// are idle, must close for the drain, or have bytes passed to userspace. Returns how
/// many rows remain.
pub(super) fn sweep(local: &Rc<Local>, now_ns: u64) -> usize {
    let mut table = local.table.borrow_mut();
    let stop = table.policy.shutdown.phase() == Phase::Stop;
    let inner = &local.splicer.inner;
    let due: Vec<(usize, Wake)> = table
        .rows
        .iter()
        .filter_map(|(key, row)| {
            if stop {
                return Some((key, Wake::Swept(Swept::Drain)));
            }
            let last = inner.last_active(row.slot).load(Ordering::Relaxed);
            if now_ns.saturating_sub(last) >= table.idle_ns {
                return Some((key, Wake::Swept(Swept::Idle)));
            }
            (0..2).any(|dir| needs_userspace(inner, row.slot, dir)).then_some((key, Wake::Event))
        })
        .collect();
    for (key, wake) in due {
        resume(local, &mut table, key, wake);
    }
    table.rows.len()
}
