//! Servers a reload removed from a group with `drain_removed = true`: the reload
//! announces them once ([`Removals::announce`]) and every WebSocket to one of them
//! gets its Close 1001 at its turn — a userspace or TLS relay told by its worker's
//! [`super::events::Hub`], an HTTP/2 stream by watching ([`Removal::turn`]), a spliced
//! pair by its worker, which follows the [`Announcements`] and asks [`Turns`] for each
//! pair's — the turns spread over
//! `drain.window` as in the SIGTERM drain (one schedule for all workers, planned with
//! the removed servers' live connections at the reload).
//!
//! A server is known by its live state (`upstream::ServerLive`), which a reload keeps
//! for a server that stays and makes anew for one added: a server removed and added
//! back later is another server. Only the servers a reload removes are announced; the
//! WebSockets of servers removed without the flag run to their natural end, even if a
//! later reload sets it. Never touches a socket.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rand::Rng as _;
use tokio::sync::watch;

use crate::config::DrainConfig;
use crate::upstream::ServerLive;

/// When the WebSockets of the servers removed by one reload close: `planned` turns
/// spread evenly over the window (no closer than `drain.rate` allows), each moved by a
/// random part (`drain.jitter`) of its share. Shared by all workers.
#[derive(Debug)]
struct Schedule {
    start: Instant,
    spacing: Duration,
    /// Where every turn ends at the latest (`None`: the rate cap stretches the plan).
    end: Option<Instant>,
    jitter: f64,
    next: AtomicU32,
}

impl Schedule {
    fn new(cfg: &DrainConfig, planned: u64, start: Instant) -> Self {
        let planned = u32::try_from(planned.max(1)).unwrap_or(u32::MAX);
        let min_spacing =
            if cfg.rate > 0.0 { Duration::from_secs_f64((1.0 / cfg.rate).min(3600.0)) } else { Duration::ZERO };
        let spacing = (cfg.window / planned).max(min_spacing);
        let end = min_spacing.is_zero().then(|| start + cfg.window);
        Self { start, spacing, end, jitter: cfg.jitter, next: AtomicU32::new(0) }
    }

    /// The next turn.
    fn slot(&self) -> Instant {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let offset = if self.jitter > 0.0 { self.jitter * rand::thread_rng().r#gen::<f64>() } else { 0.0 };
        let at = self.start + self.spacing * k + self.spacing.mul_f64((1.0 - self.jitter) / 2.0 + offset);
        self.end.map_or(at, |end| at.min(end))
    }
}

/// The removed servers whose WebSockets close, each with its reload's schedule.
#[derive(Debug, Default)]
pub struct Removed {
    /// Weak: the state goes when its last connection does (the allocation, and so the
    /// address compared, stays while this holds it).
    servers: Vec<(Weak<ServerLive>, Arc<Schedule>)>,
}

impl Removed {
    fn schedule_of(&self, server: &Arc<ServerLive>) -> Option<&Arc<Schedule>> {
        self.servers.iter().find(|(s, _)| std::ptr::eq(s.as_ptr(), Arc::as_ptr(server))).map(|(_, plan)| plan)
    }

    /// The turns of the WebSockets to `server`, if it is among these.
    pub fn turns_of(&self, server: &Arc<ServerLive>) -> Option<Turns> {
        self.schedule_of(server).cloned().map(Turns)
    }
}

/// The announcements of removed servers, shared by the reload (which sends) and every
/// relay (which watches).
#[derive(Debug, Clone)]
pub struct Removals {
    tx: Arc<watch::Sender<Arc<Removed>>>,
    /// The drain settings in force (`drain` keeps its start values until a restart).
    drain: Arc<DrainConfig>,
}

impl Removals {
    /// No server removed yet; turns follow `drain`.
    pub fn new(drain: &DrainConfig) -> Self {
        let (tx, _) = watch::channel(Arc::new(Removed::default()));
        Self { tx: Arc::new(tx), drain: Arc::new(drain.clone()) }
    }

    /// A reload removed `servers` (from groups with `drain_removed`): their WebSockets
    /// close over `drain.window` from now. Servers announced before whose connections
    /// still live stay announced (a relay that starts late still finds its server).
    /// Returns the live connections planned.
    pub fn announce(&self, servers: &[Arc<ServerLive>]) -> u64 {
        let planned: u64 = servers.iter().map(|s| s.active()).sum();
        let plan = Arc::new(Schedule::new(&self.drain, planned, Instant::now()));
        let before = self.tx.borrow().clone();
        let mut next =
            Removed { servers: before.servers.iter().filter(|(s, _)| s.strong_count() > 0).cloned().collect() };
        next.servers.extend(servers.iter().map(|s| (Arc::downgrade(s), plan.clone())));
        self.tx.send_replace(Arc::new(next));
        planned
    }

    /// The turns of the WebSockets to `server`, if a reload removed it.
    pub fn turns_of(&self, server: &Arc<ServerLive>) -> Option<Turns> {
        self.tx.borrow().turns_of(server)
    }

    /// Every announcement, from the ones made so far on (for a worker's relays: see
    /// [`super::events::Hub`]).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Removed>> {
        self.tx.subscribe()
    }

    /// The removals announced from now on (for the spliced pairs, which no relay
    /// watches: their worker finds them when a server is removed).
    pub fn announcements(&self) -> Announcements {
        let rx = self.tx.subscribe();
        let known = rx.borrow().clone();
        Announcements { rx, known }
    }

    /// What a relay to `server` watches.
    pub fn watch(&self, server: Arc<ServerLive>) -> Removal {
        Removal { tx: self.tx.clone(), server, fired: Cell::new(false) }
    }
}

/// The turns of one reload's removal: each call is the next WebSocket's.
#[derive(Debug, Clone)]
pub struct Turns(Arc<Schedule>);

impl Turns {
    /// When the next WebSocket to ask closes.
    pub fn next(&self) -> Instant {
        self.0.slot()
    }
}

/// Removals as reloads announce them.
#[derive(Debug)]
pub struct Announcements {
    rx: watch::Receiver<Arc<Removed>>,
    known: Arc<Removed>,
}

impl Announcements {
    /// The servers the next reloads removed (each with its reload's turns), once there
    /// are any; `None` once nothing can be announced any more.
    pub async fn next(&mut self) -> Option<Vec<(Arc<ServerLive>, Turns)>> {
        loop {
            self.rx.changed().await.ok()?;
            let now = self.rx.borrow_and_update().clone();
            let fresh: Vec<_> = now
                .servers
                .iter()
                .filter(|(s, _)| !self.known.servers.iter().any(|(k, _)| Weak::ptr_eq(k, s)))
                .filter_map(|(s, plan)| Some((s.upgrade()?, Turns(plan.clone()))))
                .collect();
            self.known = now;
            if !fresh.is_empty() {
                return Some(fresh);
            }
        }
    }
}

/// One WebSocket's watch on the removal of its upstream server: what its relay asks
/// its worker's [`super::events::Hub`] about, or waits on itself ([`Removal::turn`]).
#[derive(Debug)]
pub struct Removal {
    tx: Arc<watch::Sender<Arc<Removed>>>,
    server: Arc<ServerLive>,
    fired: Cell<bool>,
}

impl Removal {
    /// Resolves at this WebSocket's turn once a reload removed its server (at once
    /// checks the removals announced before it started watching).
    pub async fn turn(&self) {
        let mut rx = self.tx.subscribe();
        loop {
            let plan = rx.borrow_and_update().turns_of(&self.server);
            if let Some(plan) = plan {
                tokio::time::sleep_until(plan.next().into()).await;
                self.fire();
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The server watched.
    pub fn server(&self) -> &Arc<ServerLive> {
        &self.server
    }

    /// Records that this WebSocket's turn came from the removal of its server.
    pub fn fire(&self) {
        self.fired.set(true);
    }

    /// Whether this WebSocket's turn came from the removal of its server.
    pub fn fired(&self) -> bool {
        self.fired.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(window_ms: u64, rate: f64) -> DrainConfig {
        DrainConfig { window: Duration::from_millis(window_ms), rate, jitter: 0.0, ..DrainConfig::default() }
    }

    #[test]
    fn turns_spread_over_the_window_and_the_rate_cap_stretches_them() {
        let start = Instant::now();
        let even = Schedule::new(&cfg(1000, 0.0), 4, start);
        let at: Vec<_> = (0..5).map(|_| even.slot() - start).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(at, [ms(125), ms(375), ms(625), ms(875), ms(1000)], "one past the plan: at the window's end");
        let capped = Schedule::new(&cfg(1000, 2.0), 4, start);
        let at: Vec<_> = (0..4).map(|_| capped.slot() - start).collect();
        assert_eq!(at, [ms(250), ms(750), ms(1250), ms(1750)]);
    }
}
