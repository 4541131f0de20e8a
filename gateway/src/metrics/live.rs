//! The live view of open WebSockets: each worker sends an event when one opens,
//! starts its userspace relay, is handed to the kernel splice, or closes (with its
//! final byte counts); the admin thread folds the events into its table when it is
//! asked for the view (and every second, so the queue stays short). Bytes of open
//! WebSockets are read at that moment: of spliced pairs from the kernel counters, of
//! userspace-relayed ones from the [`RelayBytes`] their relay stores into.
//!
//! The worker's side is one unbounded channel send per event and, per message, two
//! relaxed stores into its own [`RelayBytes`]: it must never wait for the admin
//! thread, nor send or allocate anything per message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::worker::ActiveMode;
use crate::splice::{LiveSlot, Splicer};

/// A WebSocket that just got its 101.
#[derive(Debug, Clone)]
pub struct Opened {
    pub client: SocketAddr,
    pub upstream: SocketAddr,
    pub route: usize,
    /// Nanoseconds from the process's connection epoch to the accept.
    pub started_ns: u64,
}

/// What a userspace relay has moved so far, shared with the live view. The relay is
/// the only writer (plain relaxed stores, no read-modify-write); the admin thread
/// loads. Allocated once per relay (40 bytes with its `Arc`), when the live view is on.
#[derive(Debug, Default)]
pub struct RelayBytes {
    /// Client → upstream, upstream → client.
    moved: [AtomicU64; 2],
    /// Connection clock (see [`super::id_of`]) of the last bytes either way; 0: none yet.
    last_ns: AtomicU64,
}

impl RelayBytes {
    /// `n` more bytes moved in `direction` (0: to the upstream, 1: to the client) at
    /// `at`. Only the relay that owns these counters may call this.
    pub fn add(&self, direction: usize, n: u64, at: Instant) {
        let c = &self.moved[direction & 1];
        c.store(c.load(Relaxed) + n, Relaxed);
        self.last_ns.store(super::id_of(at), Relaxed);
    }

    /// Bytes moved so far (client → upstream, upstream → client).
    pub fn moved(&self) -> [u64; 2] {
        [self.moved[0].load(Relaxed), self.moved[1].load(Relaxed)]
    }
}

/// What a worker tells the live view.
#[derive(Debug)]
pub enum Event {
    Open {
        worker: usize,
        id: u64,
        opened: Opened,
    },
    /// Handed to the kernel splice after moving `before` (client → upstream,
    /// upstream → client) bytes in userspace.
    Spliced {
        worker: usize,
        id: u64,
        slot: LiveSlot,
        before: [u64; 2],
    },
    /// The userspace relay starts and publishes what it moves in `bytes`.
    Relaying {
        worker: usize,
        id: u64,
        bytes: Arc<RelayBytes>,
    },
    /// Ended, having moved `bytes` (client → upstream, upstream → client) in all.
    Closed {
        worker: usize,
        id: u64,
        bytes: [u64; 2],
    },
}

#[derive(Debug)]
struct Entry {
    opened: Opened,
    mode: ActiveMode,
    slot: Option<LiveSlot>,
    /// Bytes counted before the current relay's (the kernel splice's or the
    /// userspace relay's) own counters.
    before: [u64; 2],
    /// The userspace relay's counters, while it relays.
    relay: Option<Arc<RelayBytes>>,
}

/// What an entry has moved now, and whether the counts are live.
struct Now {
    bytes: [u64; 2],
    live: bool,
    /// Since the last byte, when known.
    idle: Option<Duration>,
    over_budget: bool,
}

impl Entry {
    fn now(&self, splicer: Option<&Splicer>, now_ns: u64) -> Now {
        let [up, down] = self.before;
        if let Some(slot) = self.slot {
            return match splicer.and_then(|sp| sp.live_bytes(slot)) {
                Some(k) => Now {
                    bytes: [up + k.to_upstream, down + k.to_client],
                    live: true,
                    idle: Some(k.idle),
                    over_budget: k.over_budget,
                },
                None => Now { bytes: self.before, live: false, idle: None, over_budget: false },
            };
        }
        match &self.relay {
            Some(relay) => {
                let moved = relay.moved();
                let last = relay.last_ns.load(Relaxed);
                let since = if last == 0 { self.opened.started_ns } else { last };
                let idle = Some(Duration::from_nanos(now_ns.saturating_sub(since)));
                Now { bytes: [up + moved[0], down + moved[1]], live: true, idle, over_budget: false }
            }
            None => Now { bytes: self.before, live: false, idle: None, over_budget: false },
        }
    }
}

/// One row of `/connections`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnView {
    pub worker: usize,
    pub id: u64,
    pub client: SocketAddr,
    pub upstream: SocketAddr,
    pub route: String,
    pub upstream_group: String,
    pub age_seconds: f64,
    pub mode: &'static str,
    /// Client → upstream bytes so far, live from the relay's counters (the kernel
    /// splice's, or the userspace relay's).
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
    /// Whether the byte counts are live (false between the 101 and the relay's start).
    pub bytes_live: bool,
    /// Seconds since the last byte either way (since the accept when none moved yet),
    /// when the counts are live.
    pub idle_seconds: Option<f64>,
}

/// The live view's totals.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// Bytes moved (client → upstream, upstream → client) by every WebSocket the view
    /// has seen: those that ended, in full, and those open, live.
    pub bytes: [u64; 2],
    /// Spliced pairs with a direction over its budget.
    pub over_budget: u64,
}

/// What `/connections` may filter on.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub route: Option<String>,
    pub upstream: Option<String>,
    /// Prefix of the client's `ip:port`.
    pub client: Option<String>,
}

/// The admin thread's table of open WebSockets.
#[derive(Debug)]
pub struct Table {
    events: Receiver<Event>,
    entries: HashMap<(usize, u64), Entry>,
    /// Bytes of the WebSockets that ended.
    closed: [u64; 2],
}

impl Table {
    pub fn new(events: Receiver<Event>) -> Self {
        Self { events, entries: HashMap::new(), closed: [0; 2] }
    }

    /// Applies every event queued so far.
    pub fn catch_up(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            match e {
                Event::Open { worker, id, opened } => {
                    self.entries.insert(
                        (worker, id),
                        Entry { opened, mode: ActiveMode::Userspace, slot: None, before: [0; 2], relay: None },
                    );
                }
                Event::Relaying { worker, id, bytes } => {
                    if let Some(entry) = self.entries.get_mut(&(worker, id)) {
                        // A relay after another one (a handover that did not take) adds on.
                        if let Some(old) = entry.relay.replace(bytes) {
                            let [a, b] = old.moved();
                            entry.before = [entry.before[0] + a, entry.before[1] + b];
                        }
                    }
                }
                Event::Spliced { worker, id, slot, before } => {
                    if let Some(entry) = self.entries.get_mut(&(worker, id)) {
                        entry.mode = ActiveMode::Splice;
                        entry.slot = Some(slot);
                        // Counts everything the userspace relay moved.
                        entry.before = before;
                        entry.relay = None;
                    }
                }
                Event::Closed { worker, id, bytes } => {
                    self.entries.remove(&(worker, id));
                    self.closed = [self.closed[0] + bytes[0], self.closed[1] + bytes[1]];
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the WebSockets seen have moved (ended ones in full, open ones so far),
    /// and how many spliced pairs are over budget.
    pub fn totals(&self, splicer: Option<&Splicer>) -> Totals {
        let mut sum = Totals { bytes: self.closed, over_budget: 0 };
        for e in self.entries.values() {
            let now = e.now(splicer, 0);
            sum.bytes[0] += now.bytes[0];
            sum.bytes[1] += now.bytes[1];
            sum.over_budget += u64::from(now.over_budget);
        }
        sum
    }

    /// The rows matching `filter`, oldest first, `offset` rows skipped, at most `limit`;
    /// and how many matched in all. `now_ns` is the connection clock now.
    pub fn view(
        &self,
        filter: &Filter,
        labels: &[super::RouteLabel],
        splicer: Option<&Splicer>,
        now_ns: u64,
        (offset, limit): (usize, usize),
    ) -> (usize, Vec<ConnView>) {
        let label = |route: usize| labels.get(route).cloned().unwrap_or_default();
        let mut matched: Vec<(&(usize, u64), &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                let l = label(e.opened.route);
                filter.route.as_ref().is_none_or(|r| *r == l.route)
                    && filter.upstream.as_ref().is_none_or(|u| *u == l.upstream)
                    && filter.client.as_ref().is_none_or(|c| e.opened.client.to_string().starts_with(c.as_str()))
            })
            .collect();
        let total = matched.len();
        matched.sort_unstable_by_key(|(k, e)| (e.opened.started_ns, **k));
        let rows = matched
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(&(worker, id), e)| {
                let l = label(e.opened.route);
                let now = e.now(splicer, now_ns);
                ConnView {
                    worker,
                    id,
                    client: e.opened.client,
                    upstream: e.opened.upstream,
                    route: l.route,
                    upstream_group: l.upstream,
                    age_seconds: Duration::from_nanos(now_ns.saturating_sub(e.opened.started_ns)).as_secs_f64(),
                    mode: e.mode.as_str(),
                    bytes_to_upstream: now.bytes[0],
                    bytes_to_client: now.bytes[1],
                    bytes_live: now.live,
                    idle_seconds: now.idle.map(|d| d.as_secs_f64()),
                }
            })
            .collect();
        (total, rows)
    }
}
