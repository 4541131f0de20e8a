//! The data plane's side of the metrics: a worker's [`Recorder`] (a field of
//! `conn::Worker`, made by [`Recorder::start`]) and the [`Conn`] guard each of its
//! connections holds, which clones the recorder (one pointer per connection).
//!
//! Every hook is a relaxed atomic on the worker's own counters or one unbounded
//! channel send to the live view; nothing here locks, blocks, allocates per message
//! or makes a system call. An empty recorder ([`Recorder::default`]: tests, the
//! set-up) counts nothing.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::live::{self, RelayBytes};
use super::worker::{ActiveMode, WorkerMetrics};
use super::{STALL_ENV, WorkerSlot, id_of};
use crate::accesslog::AccessRecord;
use crate::splice::LiveSlot;

/// One worker's handle on its counters and the live view's queue.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Option<Rc<Here>>);

#[derive(Debug)]
struct Here {
    metrics: Arc<WorkerMetrics>,
    events: Option<Sender<live::Event>>,
}

impl Recorder {
    /// The recorder of the worker that owns `slot`, and the task that answers the
    /// health pings on the worker's loop. Call inside the worker's runtime.
    pub fn start(slot: WorkerSlot) -> Self {
        let WorkerSlot { metrics, events, mut pings } = slot;
        let index = metrics.index;
        let mut stall = stall_for(index);
        let answered = metrics.clone();
        tokio::task::spawn_local(async move {
            while let Some(reply) = pings.recv().await {
                if let Some(d) = stall.take() {
                    tracing::warn!(worker = index, ms = d.as_millis() as u64, "{STALL_ENV}: blocking this worker");
                    std::thread::sleep(d);
                }
                answered.pings_answered.fetch_add(1, Relaxed);
                let _ = reply.send(());
            }
        });
        Self(Some(Rc::new(Here { metrics, events })))
    }

    fn with(&self, f: impl FnOnce(&Here)) {
        if let Some(h) = &self.0 {
            f(h);
        }
    }

    /// An upstream connection completed after `took`.
    pub fn upstream_connected(&self, took: Duration) {
        self.with(|h| {
            h.metrics.connect.observe(took);
            h.metrics.upstream_opened.fetch_add(1, Relaxed);
        });
    }

    /// A plain request went out on a pooled upstream connection.
    pub fn pool_hit(&self) {
        self.with(|h| {
            h.metrics.pool_hits.fetch_add(1, Relaxed);
        });
    }

    /// A plain request to a pooled group found no usable idle connection.
    pub fn pool_miss(&self) {
        self.with(|h| {
            h.metrics.pool_misses.fetch_add(1, Relaxed);
        });
    }

    /// A valid WebSocket upgrade request was routed to `route`.
    pub fn upgrade_requested(&self, route: usize) {
        self.with(|h| {
            if let Some(r) = h.metrics.route(route) {
                r.upgrade_requests.fetch_add(1, Relaxed);
            }
        });
    }

    /// A connection accepted at `started`: counted from now until its guard ends.
    pub fn accepted(&self, started: Instant) -> Conn {
        self.with(|h| {
            h.metrics.accepted.fetch_add(1, Relaxed);
            h.metrics.enter(ActiveMode::Handshake);
        });
        Conn { recorder: self.clone(), id: id_of(started), mode: ActiveMode::Handshake, upgraded: false, counted: true }
    }

    /// A parked spliced pair (its [`Conn`] parked with `id`) ended as `record` says.
    pub fn parked_closed(&self, id: u64, record: &AccessRecord) {
        self.with(|h| {
            h.metrics.leave(ActiveMode::Splice);
            h.count_end(record, true, id);
        });
    }
}

/// What [`STALL_ENV`] asks of worker `index`.
fn stall_for(index: usize) -> Option<Duration> {
    let v = std::env::var(STALL_ENV).ok()?;
    let (w, ms) = v.split_once(':')?;
    (w.trim().parse::<usize>().ok()? == index).then_some(Duration::from_millis(ms.trim().parse().ok()?))
}

impl Here {
    fn send(&self, event: live::Event) -> bool {
        self.events.as_ref().is_some_and(|tx| tx.send(event).is_ok())
    }

    fn count_end(&self, record: &AccessRecord, upgraded: bool, id: u64) {
        let m = &self.metrics;
        m.count_close(record.close.as_str());
        if upgraded {
            m.lifetime.observe(Duration::try_from_secs_f64(record.request_time).unwrap_or_default());
        } else {
            m.count_status(record.status);
        }
        // An upgraded connection's bytes go to the live view with its end, so that its
        // row and its total change in one step (the relayed-bytes counter never counts
        // them twice, nor goes back).
        let bytes = [record.bytes_in, record.bytes_out];
        if !(upgraded && self.send(live::Event::Closed { worker: m.index, id, bytes })) {
            m.closed_bytes[0].fetch_add(bytes[0], Relaxed);
            m.closed_bytes[1].fetch_add(bytes[1], Relaxed);
        }
    }
}

/// Counts one connection from accept to close: its mode in the active gauge, and
/// (once upgraded) its row in the live view. Dropped without [`Conn::closed`] (a panic,
/// a cancelled task) it still leaves the gauge.
#[derive(Debug)]
pub struct Conn {
    recorder: Recorder,
    id: u64,
    mode: ActiveMode,
    upgraded: bool,
    /// False for the empty guard [`Conn::take`] leaves behind.
    counted: bool,
}

impl Conn {
    /// Moves the guard out, leaving one that counts nothing.
    #[must_use]
    pub fn take(&mut self) -> Self {
        let empty =
            Self { recorder: Recorder::default(), id: self.id, mode: self.mode, upgraded: false, counted: false };
        std::mem::replace(self, empty)
    }

    /// Now in `mode`.
    pub fn set_mode(&mut self, mode: ActiveMode) {
        if mode != self.mode && self.counted {
            self.recorder.with(|h| {
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
        let id = self.id;
        self.recorder.with(|h| {
            if let Some(r) = h.metrics.route(route) {
                r.upgrades.fetch_add(1, Relaxed);
            }
            h.metrics.count_status(101);
            h.metrics.handshake.observe(handshake);
            h.send(live::Event::Open { worker: h.metrics.index, id, opened });
        });
        self.set_mode(ActiveMode::Userspace);
    }

    /// The userspace relay starts on this WebSocket: the counters it publishes what it
    /// moves in, shared with the live view (`None` when the live view is off).
    pub fn relaying(&self) -> Option<Arc<RelayBytes>> {
        let h = self.recorder.0.as_ref().filter(|_| self.upgraded && self.counted)?;
        let bytes = Arc::new(RelayBytes::default());
        h.send(live::Event::Relaying { worker: h.metrics.index, id: self.id, bytes: bytes.clone() }).then_some(bytes)
    }

    /// Handed to the kernel splice after `before` bytes in userspace.
    pub fn spliced(&mut self, slot: LiveSlot, before: [u64; 2]) {
        self.set_mode(ActiveMode::Splice);
        if self.upgraded && self.counted {
            let id = self.id;
            self.recorder.with(|h| {
                h.send(live::Event::Spliced { worker: h.metrics.index, id, slot, before });
            });
        }
    }

    /// The pair is parked: it stays counted as spliced until [`Recorder::parked_closed`].
    pub fn park(mut self) {
        self.counted = false;
    }

    /// One request of a kept-alive connection ended as `record` says (its access-log
    /// line); the connection goes on, so its close is not counted yet.
    pub fn exchanged(&self, record: &AccessRecord) {
        if !self.counted {
            return;
        }
        self.recorder.with(|h| {
            h.metrics.count_status(record.status);
            h.metrics.closed_bytes[0].fetch_add(record.bytes_in, Relaxed);
            h.metrics.closed_bytes[1].fetch_add(record.bytes_out, Relaxed);
        });
    }

    /// A kept-alive connection ended between requests, as `close` says.
    pub fn ended_idle(mut self, close: &str) {
        if !self.counted {
            return;
        }
        self.counted = false;
        self.recorder.with(|h| {
            h.metrics.leave(self.mode);
            h.metrics.count_close(close);
        });
    }

    /// The connection ended as `record` says (the access log's line).
    pub fn closed(mut self, record: &AccessRecord) {
        if !self.counted {
            return;
        }
        self.counted = false;
        let (upgraded, id) = (self.upgraded, self.id);
        self.recorder.with(|h| {
            h.metrics.leave(self.mode);
            h.count_end(record, upgraded, id);
        });
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.counted {
            self.recorder.with(|h| h.metrics.leave(self.mode));
        }
    }
}
