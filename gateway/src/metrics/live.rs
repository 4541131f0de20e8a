//! The live view of open WebSockets: each worker sends an event when one opens,
//! is handed to the kernel splice, or closes; the admin thread folds the events
//! into its table when it is asked for the view (and every second, so the queue
//! stays short). Bytes of spliced pairs are read from the kernel counters at that
//! moment, not sent by the worker.
//!
//! The worker's side is one unbounded channel send per event: it must never wait
//! for the admin thread, nor send anything per message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::time::Duration;

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
    Closed {
        worker: usize,
        id: u64,
    },
}

#[derive(Debug)]
struct Entry {
    opened: Opened,
    mode: ActiveMode,
    slot: Option<LiveSlot>,
    before: [u64; 2],
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
    /// Client → upstream bytes so far (for a pair still in the userspace relay: those
    /// that came with the request head; its relay reports at close).
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
    /// Whether the byte counts are live (read from the kernel splice's counters now).
    pub bytes_live: bool,
    /// Seconds since the last byte either way, when known (spliced pairs).
    pub idle_seconds: Option<f64>,
}

/// The spliced pairs open now, summed.
#[derive(Debug, Default, Clone, Copy)]
pub struct SplicedNow {
    /// Bytes moved (client → upstream, upstream → client), before the splice included.
    pub bytes: [u64; 2],
    /// Pairs with a direction over its budget.
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
}

impl Table {
    pub fn new(events: Receiver<Event>) -> Self {
        Self { events, entries: HashMap::new() }
    }

    /// Applies every event queued so far.
    pub fn catch_up(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            match e {
                Event::Open { worker, id, opened } => {
                    self.entries.insert(
                        (worker, id),
                        Entry { opened, mode: ActiveMode::Userspace, slot: None, before: [0; 2] },
                    );
                }
                Event::Spliced { worker, id, slot, before } => {
                    if let Some(entry) = self.entries.get_mut(&(worker, id)) {
                        entry.mode = ActiveMode::Splice;
                        entry.slot = Some(slot);
                        entry.before = before;
                    }
                }
                Event::Closed { worker, id } => {
                    self.entries.remove(&(worker, id));
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

    /// What the spliced pairs open now have moved, summed, and how many are over budget.
    pub fn spliced(&self, splicer: Option<&Splicer>) -> SplicedNow {
        let mut sum = SplicedNow::default();
        let Some(splicer) = splicer else { return sum };
        for e in self.entries.values() {
            if let Some(b) = e.slot.and_then(|s| splicer.live_bytes(s)) {
                sum.bytes[0] += e.before[0] + b.to_upstream;
                sum.bytes[1] += e.before[1] + b.to_client;
                sum.over_budget += u64::from(b.over_budget);
            }
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
                let live = e.slot.and_then(|s| splicer.and_then(|sp| sp.live_bytes(s)));
                let (up, down) = live.map_or((0, 0), |b| (b.to_upstream, b.to_client));
                ConnView {
                    worker,
                    id,
                    client: e.opened.client,
                    upstream: e.opened.upstream,
                    route: l.route,
                    upstream_group: l.upstream,
                    age_seconds: Duration::from_nanos(now_ns.saturating_sub(e.opened.started_ns)).as_secs_f64(),
                    mode: e.mode.as_str(),
                    bytes_to_upstream: e.before[0] + up,
                    bytes_to_client: e.before[1] + down,
                    bytes_live: live.is_some(),
                    idle_seconds: live.map(|b| b.idle.as_secs_f64()),
                }
            })
            .collect();
        (total, rows)
    }
}
