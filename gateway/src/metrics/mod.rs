//! What the data plane counts for the admin plane: per-worker atomic counters and
//! histograms ([`WorkerMetrics`]), the live view's events ([`live`]), and each
//! worker's answer to the health ping.
//!
//! The data plane counts through its worker's [`Recorder`] (a field of the worker,
//! no thread-local) and the [`Conn`] guard of each connection. Nothing here locks,
//! blocks or makes a system call on a worker: the admin thread sums the workers'
//! counters when it is scraped. An empty recorder (tests, the set-up) counts nothing.

pub mod histogram;
pub mod live;
mod recorder;
pub mod reloads;
mod worker;

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

pub use recorder::{Conn, Recorder};
pub use worker::{ActiveMode, CLOSE_REASONS, RouteCounters, WorkerMetrics};

use crate::splice::Splicer;

/// A health ping: the worker's loop answers on the sender.
pub type Ping = oneshot::Sender<()>;

/// Test-only hook: `WORKER:MILLIS` makes that worker block its thread for MILLIS ms
/// when it gets its first health ping (so `/healthz` can be shown to fail).
pub const STALL_ENV: &str = "WSGATE_TEST_STALL_WORKER";

/// The labels of one route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteLabel {
    /// `host` + path prefix (no host: the prefix alone).
    pub route: String,
    /// Its upstream group.
    pub upstream: String,
}

/// Every worker's counters, and what the admin thread needs to read them.
#[derive(Debug)]
pub struct Metrics {
    pub workers: Vec<Arc<WorkerMetrics>>,
    pub routes: Vec<RouteLabel>,
    /// The live view, when the admin plane is on (else no event is sent).
    pub live: Option<Mutex<live::Table>>,
    /// Configuration reloads and the generation in force.
    pub reloads: reloads::Reloads,
    pings: Vec<mpsc::Sender<Ping>>,
}

/// What one worker takes to [`Recorder::start`].
#[derive(Debug)]
pub struct WorkerSlot {
    metrics: Arc<WorkerMetrics>,
    events: Option<Sender<live::Event>>,
    pings: mpsc::Receiver<Ping>,
}

impl Metrics {
    /// Counters for `workers` workers and `routes`; `live_view` turns the live view on.
    pub fn new(workers: usize, routes: Vec<RouteLabel>, live_view: bool) -> (Arc<Self>, Vec<WorkerSlot>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut slots = Vec::new();
        let mut pings = Vec::new();
        let mut all = Vec::new();
        for w in 0..workers {
            let m = Arc::new(WorkerMetrics::new(w, routes.len()));
            let (ping_tx, ping_rx) = mpsc::channel(4);
            pings.push(ping_tx);
            all.push(m.clone());
            slots.push(WorkerSlot { metrics: m, events: live_view.then(|| tx.clone()), pings: ping_rx });
        }
        let live = live_view.then(|| Mutex::new(live::Table::new(rx)));
        (Arc::new(Self { workers: all, routes, live, reloads: reloads::Reloads::default(), pings }), slots)
    }

    /// Pings every worker through its own loop; `Ok` when all answered within `deadline`,
    /// else the workers that did not.
    pub async fn ping_workers(&self, deadline: Duration) -> Result<(), Vec<usize>> {
        let mut waiting = Vec::new();
        let mut silent = Vec::new();
        for (w, tx) in self.pings.iter().enumerate() {
            let (reply, answer) = oneshot::channel();
            // A full queue means earlier pings are still unanswered: that worker is stuck.
            match tx.try_send(reply) {
                Ok(()) => waiting.push((w, answer)),
                Err(_) => silent.push(w),
            }
        }
        let until = tokio::time::Instant::now() + deadline;
        for (w, answer) in waiting {
            if !matches!(tokio::time::timeout_at(until, answer).await, Ok(Ok(()))) {
                silent.push(w);
            }
        }
        silent.sort_unstable();
        if silent.is_empty() { Ok(()) } else { Err(silent) }
    }

    /// The live view's totals (bytes of the WebSockets it has seen, open ones live;
    /// spliced pairs over budget).
    pub fn live_totals(&self, splicer: Option<&Splicer>) -> live::Totals {
        self.live.as_ref().and_then(|t| t.lock().ok()).map_or_else(live::Totals::default, |mut t| {
            t.catch_up();
            t.totals(splicer)
        })
    }

    /// Connections ended, by reason ([`CLOSE_REASONS`]), summed over the workers.
    pub fn closed_by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CLOSE_REASONS.iter().enumerate().map(|(i, r)| (*r, self.workers.iter().map(|w| w.closed(i)).sum()))
    }

    /// [`Metrics::closed_by_reason`] as `reason=count` words, reasons never seen left out.
    pub fn closed_summary(&self) -> String {
        let words: Vec<String> =
            self.closed_by_reason().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r}={n}")).collect();
        words.join(" ")
    }
}

/// Nanoseconds from the connection epoch to `started`: a connection's id in the live
/// view, the same number a parked pair keeps as its start.
pub fn id_of(started: Instant) -> u64 {
    u64::try_from(started.saturating_duration_since(crate::conn::teardown::epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Connection clock now (see [`id_of`]).
pub fn now_ns() -> u64 {
    id_of(Instant::now())
}
