//! Parked pairs: an idle spliced pair is a row of its worker's table, not a task.
//!
//! Once a pair is in the kernel, nothing happens in userspace until a side
//! closes or fails, the idle timeout or the drain signal ends it, or a
//! direction goes over budget. So a parked pair is just a row: the two sockets,
//! the bytes forwarded during the handover and the caller's finish callback (what
//! the access log needs), named by a token for the close-only polls its owner
//! (`worker`) arms on the poll ring. No task, future, waker, timer or buffer
//! exists for it.
//!
//! The table is data with rules: [`Table::insert`] says which polls to arm,
//! [`Table::take`] and [`Table::due`] hand rows back as [`Taken`] (to be resumed
//! into supervision by the owner) when a poll fired, or when a row is idle,
//! draining, or has bytes passed to userspace. Must never touch a socket, arm or
//! cancel a poll, or spawn anything itself.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use slab::Slab;

use super::backpressure::needs_userspace;
use super::kernel::{Inner, Inserted, Pair};
use super::supervise::SpliceOutcome;
use super::sweep::{Swept, idle_ns};

/// Token bits: row key (32), side (1), generation (29).
const SIDE_SHIFT: u32 = 32;
const GEN_SHIFT: u32 = 33;
const GEN_MASK: u32 = (1 << 29) - 1;

/// The callback that receives a pair's outcome.
pub(super) type Finish = Box<dyn FnOnce(SpliceOutcome)>;

/// What a parked pair keeps, boxed once; `F` is the caller's finish callback.
struct Parked<F> {
    client: OwnedFd,
    upstream: OwnedFd,
    /// Socket cookies (client, upstream): the keys of the pair's links.
    cookies: [u64; 2],
    early: u64,
    /// The caller's key for the pair ([`Table::owned_by`]; 0: none).
    owner: usize,
    finish: F,
}

/// A parked pair with its callback type erased.
trait Unpark {
    /// The client's and the upstream's fd.
    fn fds(&self) -> (RawFd, RawFd);
    /// The caller's key for the pair.
    fn owner(&self) -> usize;
    /// The pair and its callback again (the callback boxed on this cold path).
    fn unpark(self: Box<Self>, slot: u32) -> (Pair, Finish);
}

impl<F: FnOnce(SpliceOutcome) + 'static> Unpark for Parked<F> {
    fn fds(&self) -> (RawFd, RawFd) {
        (self.client.as_raw_fd(), self.upstream.as_raw_fd())
    }

    fn owner(&self) -> usize {
        self.owner
    }

    fn unpark(self: Box<Self>, slot: u32) -> (Pair, Finish) {
        let Parked { client, upstream, cookies: [client_cookie, upstream_cookie], early, owner: _, finish } = *self;
        let ins = Inserted { slot, client_cookie, upstream_cookie };
        (Pair { client, upstream, ins, early }, Box::new(finish))
    }
}

/// One row: the kernel slot inline (the sweep reads it for every row) and the rest boxed.
struct Row {
    slot: u32,
    generation: u32,
    pair: Box<dyn Unpark>,
}

/// A row handed back: the pair, its callback and the tokens of its polls (which
/// the owner cancels).
pub(super) struct Taken {
    pub pair: Pair,
    pub finish: Finish,
    pub tokens: [u64; 2],
    /// The caller's key for the pair (it goes on with the pair into supervision).
    pub owner: usize,
}

/// One worker's parked pairs.
pub(super) struct Table {
    idle_ns: u64,
    rows: Slab<Row>,
    next_generation: u32,
}

impl Table {
    /// A table for at most `capacity` pairs whose idle limit is `idle`.
    pub(super) fn new(capacity: u32, idle: Option<Duration>) -> Self {
        Self {
            idle_ns: idle_ns(idle),
            // Reserved, not touched: rows cost memory only as pairs are parked, and
            // the table never moves a million rows to grow.
            rows: Slab::with_capacity(capacity as usize),
            next_generation: 0,
        }
    }

    /// Parked pairs.
    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Parks `pair`, which the caller knows by `owner`; returns the close-only polls to
    /// arm (fd, token), one per socket. The first token also names the row.
    pub(super) fn insert(
        &mut self,
        pair: Pair,
        owner: usize,
        finish: impl FnOnce(SpliceOutcome) + 'static,
    ) -> [(RawFd, u64); 2] {
        let Pair { client, upstream, ins, early } = pair;
        let cookies = [ins.client_cookie, ins.upstream_cookie];
        let parked: Box<dyn Unpark> = Box::new(Parked { client, upstream, cookies, early, owner, finish });
        let (c, u) = parked.fds();
        let generation = self.next_generation;
        self.next_generation = (generation + 1) & GEN_MASK;
        let key = self.rows.insert(Row { slot: ins.slot, generation, pair: parked });
        [(c, token(key, 0, generation)), (u, token(key, 1, generation))]
    }

    /// The row a poll with `token` fired for, unless that completion is stale (its row
    /// was already taken, and maybe reused).
    pub(super) fn take(&mut self, token: u64) -> Option<Taken> {
        let key = (token & u64::from(u32::MAX)) as usize;
        let generation = ((token >> GEN_SHIFT) as u32) & GEN_MASK;
        self.rows.get(key).is_some_and(|r| r.generation == generation).then(|| self.remove(key))
    }

    /// One pass over the rows at `now_ns` (no syscall per row): takes those that are
    /// idle, must close for the drain (`stop`), or have bytes passed to userspace;
    /// each with why the sweep ended it (`None`: it only needs its supervisor).
    pub(super) fn due(&mut self, inner: &Inner, now_ns: u64, stop: bool) -> Vec<(Taken, Option<Swept>)> {
        let idle_ns = self.idle_ns;
        let due: Vec<(usize, Option<Swept>)> = self
            .rows
            .iter()
            .filter_map(|(key, row)| {
                if stop {
                    return Some((key, Some(Swept::Drain)));
                }
                let last = inner.last_active(row.slot).load(Ordering::Relaxed);
                if now_ns.saturating_sub(last) >= idle_ns {
                    return Some((key, Some(Swept::Idle)));
                }
                (0..2).any(|dir| needs_userspace(inner, row.slot, dir)).then_some((key, None))
            })
            .collect();
        due.into_iter().map(|(key, why)| (self.remove(key), why)).collect()
    }

    /// Takes any one row (the drain's next close).
    /// The rows of the pairs the caller knows by `owner`: (token, slot) each.
    pub(super) fn owned_by(&self, owner: usize) -> Vec<(u64, u32)> {
        self.rows
            .iter()
            .filter(|(_, row)| row.pair.owner() == owner)
            .map(|(key, row)| (token(key, 0, row.generation), row.slot))
            .collect()
    }

    pub(super) fn take_any(&mut self) -> Option<Taken> {
        let key = self.rows.iter().next().map(|(key, _)| key)?;
        Some(self.remove(key))
    }

    fn remove(&mut self, key: usize) -> Taken {
        let row = self.rows.remove(key);
        let tokens = [token(key, 0, row.generation), token(key, 1, row.generation)];
        let owner = row.pair.owner();
        let (pair, finish) = row.pair.unpark(row.slot);
        Taken { pair, finish, tokens, owner }
    }
}

fn token(key: usize, side: u64, generation: u32) -> u64 {
    key as u64 | side << SIDE_SHIFT | u64::from(generation) << GEN_SHIFT
}
