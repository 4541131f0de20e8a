//! One worker's counters: relaxed atomics the worker alone writes and the admin
//! thread reads (and sums over workers) at scrape time.
//!
//! Must never hold a lock or make a system call on the data plane's side.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::histogram::{Histogram, LATENCY_BOUNDS, LIFETIME_BOUNDS};

/// Where a connection is in its life, for the active-connection gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveMode {
    /// Accepted; request head, admission, upstream exchange.
    Handshake,
    /// Relayed by the userspace relay.
    Userspace,
    /// Being handed to the kernel splice.
    Handover,
    /// In the kernel splice.
    Splice,
}

impl ActiveMode {
    pub const ALL: [ActiveMode; 4] =
        [ActiveMode::Handshake, ActiveMode::Userspace, ActiveMode::Handover, ActiveMode::Splice];

    pub fn as_str(self) -> &'static str {
        match self {
            ActiveMode::Handshake => "handshake",
            ActiveMode::Userspace => "userspace",
            ActiveMode::Handover => "handover",
            ActiveMode::Splice => "splice",
        }
    }
}

/// How connections end, as the access log names it (`close=`; `handed`: passed to a
/// new process by a binary upgrade); anything else is `other`.
pub const CLOSE_REASONS: [&str; 12] = [
    "client_fin",
    "upstream_fin",
    "client_reset",
    "upstream_reset",
    "idle_timeout",
    "shutdown",
    "drain",
    "removed",
    "error",
    "done",
    "handed",
    "other",
];

fn close_index(reason: &str) -> usize {
    CLOSE_REASONS.iter().position(|r| *r == reason).unwrap_or(CLOSE_REASONS.len() - 1)
}

/// Highest status code counted by code (others count as 0).
const STATUS_SLOTS: usize = 600;

/// Counters of one route (labelled with the route and its upstream group).
#[derive(Debug, Default)]
pub struct RouteCounters {
    /// Valid WebSocket upgrade requests routed here.
    pub upgrade_requests: AtomicU64,
    /// Of those, answered 101 and relayed.
    pub upgrades: AtomicU64,
}

/// Everything one worker counts.
#[derive(Debug)]
pub struct WorkerMetrics {
    pub index: usize,
    pub accepted: AtomicU64,
    active: [AtomicI64; 4],
    closed: [AtomicU64; CLOSE_REASONS.len()],
    statuses: Box<[AtomicU64]>,
    pub routes: Box<[RouteCounters]>,
    /// Bytes (client → upstream, upstream → client) of connections that ended and that
    /// the live view did not take (not upgraded, or the live view is off).
    pub closed_bytes: [AtomicU64; 2],
    pub handshake: Histogram,
    pub connect: Histogram,
    pub lifetime: Histogram,
    /// Pings answered by the worker's own loop (for `/healthz`).
    pub pings_answered: AtomicU64,
    /// Upstream TCP connections opened.
    pub upstream_opened: AtomicU64,
    /// Plain requests that went out on an idle connection from the worker's pool.
    pub pool_hits: AtomicU64,
    /// Plain requests to a pooled group that found no usable idle connection.
    pub pool_misses: AtomicU64,
}

impl WorkerMetrics {
    pub fn new(index: usize, routes: usize) -> Self {
        Self {
            index,
            accepted: AtomicU64::new(0),
            active: Default::default(),
            closed: Default::default(),
            statuses: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            routes: (0..routes).map(|_| RouteCounters::default()).collect(),
            closed_bytes: Default::default(),
            handshake: Histogram::new(LATENCY_BOUNDS),
            connect: Histogram::new(LATENCY_BOUNDS),
            lifetime: Histogram::new(LIFETIME_BOUNDS),
            pings_answered: AtomicU64::new(0),
            upstream_opened: AtomicU64::new(0),
            pool_hits: AtomicU64::new(0),
            pool_misses: AtomicU64::new(0),
        }
    }

    pub fn enter(&self, mode: ActiveMode) {
        self.active[mode as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self, mode: ActiveMode) {
        self.active[mode as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections in `mode` right now.
    pub fn active(&self, mode: ActiveMode) -> i64 {
        self.active[mode as usize].load(Ordering::Relaxed)
    }

    pub fn count_close(&self, reason: &str) {
        self.closed[close_index(reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections that ended with `CLOSE_REASONS[i]`.
    pub fn closed(&self, i: usize) -> u64 {
        self.closed[i].load(Ordering::Relaxed)
    }

    pub fn count_status(&self, status: u16) {
        let i = usize::from(status);
        self.statuses[if i < STATUS_SLOTS { i } else { 0 }].fetch_add(1, Ordering::Relaxed);
    }

    /// (status, count) of every status answered at least once.
    pub fn statuses(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.statuses.iter().enumerate().filter_map(|(i, c)| {
            let n = c.load(Ordering::Relaxed);
            (n > 0).then_some((i as u16, n))
        })
    }

    pub fn route(&self, route: usize) -> Option<&RouteCounters> {
        self.routes.get(route)
    }
}
