//! What the data plane counts for the admin plane: per-worker atomic counters and
//! histograms ([`WorkerMetrics`]), the live view's events ([`live`]), and each
//! worker's answer to the health ping.
//!
//! The data plane calls the free functions and the [`Conn`] guard of this module;
//! they reach the calling worker's own counters through a thread-local set by
//! [`install`]. Nothing here locks, blocks or makes a system call on a worker: the
//! admin thread sums the workers' counters when it is scraped. On a thread without
//! [`install`] (tests, the set-up) every hook does nothing.

pub mod histogram;
pub mod live;
mod worker;

use std::cell::OnceCell;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

pub use worker::{ActiveMode, CLOSE_REASONS, RouteCounters, WorkerMetrics};

use crate::accesslog::AccessRecord;
use crate::splice::{LiveSlot, Splicer};

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
    pings: Vec<mpsc::Sender<Ping>>,
}

/// What one worker takes to [`install`].
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
        (Arc::new(Self { workers: all, routes, live, pings }), slots)
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

    /// The spliced pairs open now (live bytes, pairs over budget), from the live view.
    pub fn spliced_now(&self, splicer: Option<&Splicer>) -> live::SplicedNow {
        self.live.as_ref().and_then(|t| t.lock().ok()).map_or_else(live::SplicedNow::default, |mut t| {
            t.catch_up();
            t.spliced(splicer)
        })
    }
}

struct Here {
    metrics: Arc<WorkerMetrics>,
    events: Option<Sender<live::Event>>,
}

thread_local! {
    static HERE: OnceCell<Here> = const { OnceCell::new() };
}

/// Makes this worker thread count into `slot`, and starts the task that answers the
/// health pings on the worker's loop. Call inside the worker's runtime.
pub fn install(slot: WorkerSlot) {
    let WorkerSlot { metrics, events, mut pings } = slot;
    let index = metrics.index;
    let stall = stall_for(index);
    let answered = metrics.clone();
    HERE.with(|h| {
        let _ = h.set(Here { metrics, events });
    });
    tokio::task::spawn_local(async move {
        let mut stall = stall;
        while let Some(reply) = pings.recv().await {
            if let Some(d) = stall.take() {
                tracing::warn!(worker = index, ms = d.as_millis() as u64, "{STALL_ENV}: blocking this worker");
                std::thread::sleep(d);
            }
            answered.pings_answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = reply.send(());
        }
    });
}

/// What [`STALL_ENV`] asks of worker `index`.
fn stall_for(index: usize) -> Option<Duration> {
    let v = std::env::var(STALL_ENV).ok()?;
    let (w, ms) = v.split_once(':')?;
    (w.trim().parse::<usize>().ok()? == index).then_some(Duration::from_millis(ms.trim().parse().ok()?))
}

fn with<R>(f: impl FnOnce(&Here) -> R) -> Option<R> {
    HERE.try_with(|h| h.get().map(f)).ok().flatten()
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

/// An upstream connection completed after `took`.
pub fn upstream_connected(took: Duration) {
    with(|h| h.metrics.connect.observe(took));
}

/// A valid WebSocket upgrade request was routed to `route`.
pub fn upgrade_requested(route: usize) {
    with(|h| {
        if let Some(r) = h.metrics.route(route) {
            r.upgrade_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
}

/// Counts one connection from accept to close: its mode in the active gauge, and
/// (once upgraded) its row in the live view. Dropped without [`closed`] (a panic, a
/// cancelled task) it still leaves the gauge.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    mode: ActiveMode,
    upgraded: bool,
    /// False for the empty guard [`Conn::take`] leaves behind.
    counted: bool,
}

impl Conn {
    /// A connection accepted at `started`.
    pub fn accepted(started: Instant) -> Self {
        with(|h| {
            h.metrics.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            h.metrics.enter(ActiveMode::Handshake);
        });
        Self { id: id_of(started), mode: ActiveMode::Handshake, upgraded: false, counted: true }
    }

    /// Moves the guard out, leaving one that counts nothing.
    #[must_use]
    pub fn take(&mut self) -> Self {
        std::mem::replace(self, Self { id: self.id, mode: self.mode, upgraded: false, counted: false })
    }

    /// Now in `mode`.
    pub fn set_mode(&mut self, mode: ActiveMode) {
        if mode != self.mode && self.counted {
            with(|h| {
                h.metrics.leave(self.mode);
                h.metrics.enter(mode);
            });
            self.mode = mode;
        }
    }

    /// The upstream answered 101 `handshake` after the accept; relayed from now on.
    pub fn upgraded(&mut self, route: usize, handshake: Duration, opened: live::Opened) {
        if !self.counted {
            return;
        }
        self.upgraded = true;
        with(|h| {
            if let Some(r) = h.metrics.route(route) {
                r.upgrades.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            h.metrics.count_status(101);
            h.metrics.handshake.observe(handshake);
            if let Some(tx) = &h.events {
                let _ = tx.send(live::Event::Open { worker: h.metrics.index, id: self.id, opened });
            }
        });
        self.set_mode(ActiveMode::Userspace);
    }

    /// Handed to the kernel splice after `before` bytes in userspace.
    pub fn spliced(&mut self, slot: LiveSlot, before: [u64; 2]) {
        self.set_mode(ActiveMode::Splice);
        if self.upgraded && self.counted {
            with(|h| {
                if let Some(tx) = &h.events {
                    let _ = tx.send(live::Event::Spliced { worker: h.metrics.index, id: self.id, slot, before });
                }
            });
        }
    }

    /// The pair is parked: it stays counted as spliced until [`parked_closed`].
    pub fn park(self) {
        std::mem::forget(self);
    }

    /// The connection ended as `record` says (the access log's line).
    pub fn closed(self, record: &AccessRecord) {
        let (upgraded, id, counted) = (self.upgraded, self.id, self.counted);
        // Leaves the gauge.
        drop(self);
        if counted {
            with(|h| count_end(h, record, upgraded, id));
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.counted {
            with(|h| h.metrics.leave(self.mode));
        }
    }
}

/// A parked spliced pair (its [`Conn`] parked with `id`) ended as `record` says.
pub fn parked_closed(id: u64, record: &AccessRecord) {
    with(|h| {
        h.metrics.leave(ActiveMode::Splice);
        count_end(h, record, true, id);
    });
}

fn count_end(h: &Here, record: &AccessRecord, upgraded: bool, id: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &h.metrics;
    m.count_close(record.close.as_str());
    m.closed_bytes[0].fetch_add(record.bytes_in, Relaxed);
    m.closed_bytes[1].fetch_add(record.bytes_out, Relaxed);
    if upgraded {
        m.lifetime.observe(Duration::try_from_secs_f64(record.request_time).unwrap_or_default());
        if let Some(tx) = &h.events {
            let _ = tx.send(live::Event::Closed { worker: m.index, id });
        }
    } else {
        m.count_status(record.status);
    }
}
