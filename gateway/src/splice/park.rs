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

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use slab::Slab;

use super::backpressure::needs_userspace;
use super::handover::Inserted;
use super::splicer::Splicer;
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
    fn resume(self: Box<Self>, splicer: Splicer, slot: u32, start: Option<Swept>, policy: &Policy);
}

impl<F: FnOnce(SpliceOutcome) + 'static> Resume for Parked<F> {
    fn fds(&self) -> (RawFd, RawFd) {
        (self.client.as_raw_fd(), self.upstream.as_raw_fd())
    }

    fn resume(self: Box<Self>, splicer: Splicer, slot: u32, start: Option<Swept>, policy: &Policy) {
        let Parked { client, upstream, cookies: [client_cookie, upstream_cookie], early, finish } = *self;
        let ins = Inserted { slot, client_cookie, upstream_cookie };
        let pair = SplicedPair::new(splicer, client, upstream, ins, early);
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

struct Table {
    splicer: Splicer,
    policy: Policy,
    idle_ns: u64,
    rows: Slab<Row>,
    next_generation: u32,
}

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// See [`Splicer::init_worker`].
pub(super) fn init_worker(splicer: &Splicer, idle: Option<Duration>, shutdown: ShutdownRx) -> io::Result<()> {
    readiness::set_token_handler(on_token)?;
    let idle_ns = idle.map_or(u64::MAX, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    sweep::shorten_tick(idle);
    TABLE.with(|t| {
        *t.borrow_mut() = Some(Table {
            splicer: splicer.clone(),
            policy: Policy { idle, shutdown },
            idle_ns,
            // Reserved, not touched: rows cost memory only as pairs are parked, and
            // the table never moves a million rows to grow.
            rows: Slab::with_capacity(splicer.capacity() as usize),
            next_generation: 0,
        });
    });
    Ok(())
}

/// Whether this thread was prepared with [`Splicer::init_worker`].
pub(super) fn ready() -> bool {
    TABLE.with(|t| t.borrow().is_some())
}

/// Parked pairs on this thread (tests and diagnostics).
pub fn parked_here() -> usize {
    TABLE.with(|t| t.borrow().as_ref().map_or(0, |t| t.rows.len()))
}

fn token(key: usize, side: u64, generation: u32) -> u64 {
    key as u64 | side << SIDE_SHIFT | u64::from(generation) << GEN_SHIFT
}

/// See [`SplicedPair::park`].
pub(super) fn park(pair: SplicedPair, finish: impl FnOnce(SpliceOutcome) + 'static) {
    let (splicer, client, upstream, ins, early) = pair.into_parts();
    let slot = ins.slot;
    let cookies = [ins.client_cookie, ins.upstream_cookie];
    let parked: Box<dyn Resume> = Box::new(Parked { client, upstream, cookies, early, finish });
    let (c, u) = parked.fds();
    let refused = TABLE.with(|t| {
        let mut t = t.borrow_mut();
        let Some(table) = t.as_mut() else { return Err((parked, None)) };
        let generation = table.next_generation;
        table.next_generation = (generation + 1) & GEN_MASK;
        let entry = table.rows.vacant_entry();
        let key = entry.key();
        let armed = readiness::arm(c, readiness::CLOSED, token(key, 0, generation))
            .and_then(|()| readiness::arm(u, readiness::CLOSED, token(key, 1, generation)));
        if let Err(e) = armed {
            let _ = readiness::disarm(token(key, 0, generation));
            tracing::warn!(error = %e, "spliced pair supervised by a task: its polls could not be armed");
            let policy = Policy { idle: table.policy.idle, shutdown: table.policy.shutdown.clone() };
            return Err((parked, Some(policy)));
        }
        entry.insert(Row { slot, generation, pair: parked });
        Ok(())
    });
    match refused {
        Ok(()) => sweep::ensure_running(),
        Err((parked, Some(policy))) => parked.resume(splicer, slot, None, &policy),
        Err((parked, None)) => {
            // `splice` refuses pairs on unprepared threads, and a pair cannot change threads.
            tracing::error!("spliced pair parked on a thread without a table; supervised without idle timeout");
            let (_tx, shutdown) = crate::shutdown::channel();
            parked.resume(splicer, slot, None, &Policy { idle: None, shutdown });
        }
    }
}

/// Why a row is resumed.
#[derive(Clone, Copy)]
enum Wake {
    /// A poll fired (close or error) or bytes were passed to userspace.
    Event,
    Swept(Swept),
}

/// Removes row `key` and resumes it as a task.
fn resume(table: &mut Table, key: usize, wake: Wake) {
    let row = table.rows.remove(key);
    let _ = readiness::disarm(token(key, 0, row.generation));
    let _ = readiness::disarm(token(key, 1, row.generation));
    let start = match wake {
        Wake::Event => None,
        Wake::Swept(why) => Some(why),
    };
    row.pair.resume(table.splicer.clone(), row.slot, start, &table.policy);
}

/// The poll ring's token handler: a close-only poll of a parked pair fired.
fn on_token(token: u64, _result: i32) {
    let key = (token & u64::from(u32::MAX)) as usize;
    let generation = ((token >> GEN_SHIFT) as u32) & GEN_MASK;
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        let Some(table) = t.as_mut() else { return };
        // A completion for a row already resumed (its cancelled poll) or reused is stale.
        if table.rows.get(key).is_some_and(|r| r.generation == generation) {
            resume(table, key, Wake::Event);
        }
    });
}

/// One sweep over this thread's parked pairs (no syscall per row): resumes those that
/// are idle, must close for the drain, or have bytes passed to userspace. Returns how
/// many rows remain.
pub(super) fn sweep(now_ns: u64) -> usize {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        let Some(table) = t.as_mut() else { return 0 };
        let stop = table.policy.shutdown.phase() == Phase::Stop;
        let inner = &table.splicer.inner;
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
            resume(table, key, wake);
        }
        table.rows.len()
    })
}
