//! The closed-loop ramp: how fast a process opens its connections. Like a congestion
//! window, it raises its rate while handshakes stay fast and none fails, halves it when a
//! window of handshakes is slow (p90 above `--ramp-p90-ms`) or one fails, and never
//! exceeds `--rate`; handshakes in flight are bounded too, so a proxy whose accept queue
//! is full slows the ramp down at once instead of collecting SYN retransmissions.
//!
//! When the process cannot go on it stops opening connections and says which limit it
//! hit, with the figure: the memory guard (`MemAvailable`), CPU saturation (the rate at
//! its floor while the machine is busy), open files, ports, handshake failures, or the
//! ramp's time bound. The connections already open are held and verified as planned.
//!
//! It never blocks a load thread for long (one short mutex per connection opened) and
//! every wait in it is bounded by the ramp's time bound.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One evaluation period of the controller.
const WINDOW: Duration = Duration::from_millis(250);
/// The rate a process starts at and never goes under, connections per second.
const FLOOR: f64 = 10.0;
/// Windows in a row at the floor, slow, with the machine's CPU above [`BUSY`], before the
/// ramp stops for CPU saturation (20 s: a busy spell of a shared machine is not the limit).
const SATURATED_WINDOWS: u32 = 80;
/// The machine's busy fraction that counts as saturated.
const BUSY: f64 = 0.95;

/// Which limit stopped a ramp before it opened every planned connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// `MemAvailable` fell under `--min-available-mib`.
    Memory,
    /// The ramp sat at its floor with slow handshakes while every core was busy.
    Cpu,
    /// The process ran out of open files (EMFILE/ENFILE).
    Fds,
    /// The source addresses ran out of ports (EADDRNOTAVAIL).
    Ports,
    /// More handshakes failed than `--max-failures` allows.
    HandshakeFailures,
    /// The ramp took longer than `--ramp-max-secs`.
    RampTime,
}

impl Limit {
    /// How the limit reads in a report.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Memory => "memory guard",
            Limit::Cpu => "CPU saturation",
            Limit::Fds => "open files",
            Limit::Ports => "ports",
            Limit::HandshakeFailures => "handshake failures",
            Limit::RampTime => "ramp time",
        }
    }
}

/// Why and when a ramp stopped early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    /// The limit hit.
    pub limit: Limit,
    /// The figure, in words.
    pub detail: String,
    /// Seconds after the start.
    pub at_secs: f64,
    /// Connections this process had opened then.
    pub opened: u64,
}

/// What a ramp did, for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Closed loop (true) or the fixed `--rate` schedule.
    pub adaptive: bool,
    /// Highest rate the controller reached, connections per second (summed over processes).
    pub peak_rate: f64,
    /// Rate at the end of the ramp (summed over processes).
    pub final_rate: f64,
    /// Times the rate was cut.
    pub backoffs: u64,
    /// Why the ramp stopped before opening every connection, if it did.
    pub stopped: Option<Stop>,
}

impl Summary {
    /// Adds another process's summary (rates add up, the first stop is kept).
    pub fn add(&mut self, o: &Summary) {
        self.adaptive |= o.adaptive;
        self.peak_rate += o.peak_rate;
        self.final_rate += o.final_rate;
        self.backoffs += o.backoffs;
        if self.stopped.is_none() {
            self.stopped.clone_from(&o.stopped);
        }
    }
}

/// How a handshake the ramp admitted ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Upgraded after this many µs.
    Upgraded(u64),
    /// EMFILE or ENFILE.
    OutOfFiles,
    /// EADDRNOTAVAIL.
    OutOfPorts,
    /// Any other failure (refused, reset, timed out, bad response).
    Failed,
}

/// The settings of a ramp.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Closed loop; false: exactly `cap` connections per second.
    pub adaptive: bool,
    /// Upper bound of the rate, connections per second.
    pub cap: f64,
    /// Connections this process opens.
    pub planned: u64,
    /// A window whose p90 handshake is slower than this backs off.
    pub p90_limit: Duration,
    /// Failed handshakes tolerated before the ramp stops.
    pub max_failures: u64,
    /// Stop when `MemAvailable` falls under this, KiB (0: no guard).
    pub min_available_kib: u64,
    /// Time bound of the ramp.
    pub max_time: Duration,
    /// One of several worker processes: the hold starts when the parent says every
    /// worker's ramp is done ([`Ramp::release`]), not when this one's is, so that all
    /// connections are held at once.
    pub coordinated: bool,
}

/// An admitted connection; hand it back with [`Ramp::done`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    generation: u64,
}

impl Ticket {
    /// A ticket of the ramp's first generation (for tests that build futures by hand).
    #[cfg(test)]
    pub(crate) fn first() -> Self {
        Ticket { generation: 0 }
    }
}

/// One process's ramp, shared by its threads.
#[derive(Debug)]
pub struct Ramp {
    settings: Settings,
    t0: Instant,
    /// Nanoseconds after `t0` when the ramp ended (last connection admitted or stopped);
    /// `u64::MAX` while it goes on.
    end_ns: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rate: f64,
    slow_start: bool,
    next_at: Instant,
    admitted: u64,
    in_flight: u64,
    opened: u64,
    /// Bumped at each back-off: handshakes admitted before it do not judge the new rate.
    generation: u64,
    window_start: Instant,
    window: Vec<u64>,
    window_failures: u64,
    failures: u64,
    busy_at_window: f64,
    saturated: u32,
    summary: Summary,
}

impl Ramp {
    /// A ramp starting now.
    pub fn new(settings: Settings) -> Self {
        let now = Instant::now();
        let rate = if settings.adaptive { (FLOOR * 5.0).min(settings.cap) } else { settings.cap };
        let state = State {
            rate,
            slow_start: true,
            next_at: now,
            admitted: 0,
            in_flight: 0,
            opened: 0,
            generation: 0,
            window_start: now,
            window: Vec::with_capacity(1024),
            window_failures: 0,
            failures: 0,
            busy_at_window: crate::machine::busy_secs(),
            saturated: 0,
            summary: Summary { adaptive: settings.adaptive, peak_rate: rate, ..Summary::default() },
        };
        let end_ns = AtomicU64::new(if settings.planned == 0 { 0 } else { u64::MAX });
        Self { settings, t0: now, end_ns, state: Mutex::new(state) }
    }

    /// When the ramp ended, once it has.
    pub fn ended_at(&self) -> Option<Instant> {
        let ns = self.end_ns.load(Relaxed);
        (ns != u64::MAX).then(|| self.t0 + Duration::from_nanos(ns))
    }

    /// What the ramp did so far.
    pub fn summary(&self) -> Summary {
        let s = self.lock();
        Summary { final_rate: s.rate, ..s.summary.clone() }
    }

    /// Waits for the moment the next connection may start; `None` once the ramp stopped.
    pub async fn admit(&self) -> Option<Ticket> {
        loop {
            let (at, ticket) = {
                let mut s = self.lock();
                let now = Instant::now();
                self.evaluate(&mut s, now);
                if s.summary.stopped.is_some() || s.admitted >= self.settings.planned {
                    return None;
                }
                // Handshakes in flight: what the rate allows for twice the latency bound.
                let window = whole(s.rate * self.settings.p90_limit.as_secs_f64() * 2.0).max(16);
                if self.settings.adaptive && s.in_flight >= window {
                    (None, None)
                } else {
                    let at = s.next_at.max(now);
                    s.next_at = at + Duration::from_secs_f64(1.0 / s.rate);
                    s.admitted += 1;
                    s.in_flight += 1;
                    if s.admitted == self.settings.planned && !self.settings.coordinated {
                        self.end(at);
                    }
                    (Some(at), Some(Ticket { generation: s.generation }))
                }
            };
            match (at, ticket) {
                (Some(at), Some(t)) => {
                    tokio::time::sleep_until(at.into()).await;
                    return Some(t);
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Reports how an admitted handshake ended.
    pub fn finished(&self, t: Ticket, outcome: Outcome) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        let current = t.generation == s.generation;
        match outcome {
            Outcome::Upgraded(us) => {
                s.opened += 1;
                if current && s.window.len() < 65_536 {
                    s.window.push(us);
                }
            }
            Outcome::OutOfFiles => {
                let opened = s.opened;
                self.stop(&mut s, Limit::Fds, format!("out of open files with {opened} connections open here"));
            }
            Outcome::OutOfPorts => {
                let opened = s.opened;
                self.stop(&mut s, Limit::Ports, format!("out of source ports with {opened} connections open here"));
            }
            Outcome::Failed => {
                s.failures += 1;
                if current {
                    s.window_failures += 1;
                }
                if s.failures > self.settings.max_failures {
                    let detail =
                        format!("{} handshakes failed (at most {} allowed)", s.failures, self.settings.max_failures);
                    self.stop(&mut s, Limit::HandshakeFailures, detail);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn end(&self, at: Instant) {
        let ns = at.saturating_duration_since(self.t0).as_nanos() as u64;
        let _ = self.end_ns.compare_exchange(u64::MAX, ns, Relaxed, Relaxed);
    }

    fn stop(&self, s: &mut State, limit: Limit, detail: String) {
        if s.summary.stopped.is_none() {
            let now = Instant::now();
            let at_secs = now.duration_since(self.t0).as_secs_f64();
            s.summary.stopped = Some(Stop { limit, detail, at_secs, opened: s.opened });
            if !self.settings.coordinated {
                self.end(now);
            }
        }
    }

    /// Whether this process's ramp is over: every connection admitted, or stopped.
    pub fn done(&self) -> bool {
        let s = self.lock();
        s.admitted >= self.settings.planned || s.summary.stopped.is_some()
    }

    /// Every worker's ramp is over: the hold starts now.
    pub fn release(&self) {
        self.end(Instant::now());
    }

    /// Another worker process stopped for `why`: this one stops too, so that they hold
    /// their connections together.
    pub fn stop_with(&self, why: &Stop) {
        let mut s = self.lock();
        if s.admitted < self.settings.planned {
            let detail = format!("with another load process, which hit it: {}", why.detail);
            self.stop(&mut s, why.limit, detail);
        }
    }

    /// Judges the window that just ended and moves the rate.
    fn evaluate(&self, s: &mut State, now: Instant) {
        let elapsed = now.duration_since(s.window_start);
        if elapsed < WINDOW || s.summary.stopped.is_some() || s.admitted >= self.settings.planned {
            return;
        }
        let busy = crate::machine::busy_secs();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let busy_frac = (busy - s.busy_at_window) / (elapsed.as_secs_f64() * cpus);
        let p90 = p90(&mut s.window);
        let limit_us = self.settings.p90_limit.as_micros() as u64;
        if self.settings.min_available_kib > 0 {
            let avail = mem_available_kib();
            if avail > 0 && avail < self.settings.min_available_kib {
                let detail = format!(
                    "MemAvailable {} MiB under the guard's {} MiB with {} connections open here",
                    avail / 1024,
                    self.settings.min_available_kib / 1024,
                    s.opened
                );
                return self.stop(s, Limit::Memory, detail);
            }
        }
        if now.duration_since(self.t0) > self.settings.max_time {
            let detail = format!(
                "{} of {} opened here in {:.0} s (the ramp's time bound), {:.0} conn/s at the end, every core {:.0}% busy",
                s.opened,
                self.settings.planned,
                self.settings.max_time.as_secs_f64(),
                s.rate,
                busy_frac * 100.0
            );
            // A ramp that ran out of time on busy cores was held back by the CPU.
            let limit = if busy_frac >= BUSY { Limit::Cpu } else { Limit::RampTime };
            return self.stop(s, limit, detail);
        }
        if self.settings.adaptive {
            let slow = p90.is_some_and(|p| p > limit_us);
            if s.window_failures > 0 || slow {
                s.rate = (s.rate * 0.5).max(FLOOR);
                s.slow_start = false;
                s.generation += 1;
                s.summary.backoffs += 1;
                s.next_at = s.next_at.max(now);
                if s.rate <= FLOOR && busy_frac >= BUSY {
                    s.saturated += 1;
                } else {
                    s.saturated = 0;
                }
            } else if p90.is_some() {
                s.rate = if s.slow_start { s.rate * 1.5 } else { s.rate * 1.05 + 5.0 }.min(self.settings.cap);
                s.summary.peak_rate = s.summary.peak_rate.max(s.rate);
                s.saturated = 0;
            }
            if s.saturated >= SATURATED_WINDOWS {
                let detail = format!(
                    "every core {:.0}% busy and handshakes slower than {} ms at {FLOOR} conn/s, {} connections open here",
                    busy_frac * 100.0,
                    self.settings.p90_limit.as_millis(),
                    s.opened
                );
                return self.stop(s, Limit::Cpu, detail);
            }
        }
        s.window.clear();
        s.window_failures = 0;
        s.window_start = now;
        s.busy_at_window = busy;
    }
}

/// `x` (non-negative) rounded down; negative values give 0.
#[allow(clippy::cast_sign_loss)] // clamped to zero first
fn whole(x: f64) -> u64 {
    x.max(0.0) as u64
}

/// The 90th percentile of `v` (reordered), if it has values.
fn p90(v: &mut [u64]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let k = (v.len() * 9 / 10).min(v.len() - 1);
    Some(*v.select_nth_unstable(k).1)
}

/// `MemAvailable` in KiB; 0 when it cannot be read.
pub fn mem_available_kib() -> u64 {
    crate::machine::meminfo_kib("MemAvailable:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            adaptive: true,
            cap: 1e6,
            planned: 1_000_000,
            p90_limit: Duration::from_millis(100),
            max_failures: 5,
            min_available_kib: 0,
            max_time: Duration::from_mins(10),
            coordinated: false,
        }
    }

    fn window(r: &Ramp, latency_us: u64) {
        let t = Ticket { generation: r.lock().generation };
        r.lock().in_flight += 1;
        r.finished(t, Outcome::Upgraded(latency_us));
        let mut s = r.lock();
        s.window_start -= WINDOW;
        r.evaluate(&mut s, Instant::now());
    }

    #[test]
    fn fast_windows_raise_the_rate_and_slow_ones_halve_it() {
        let r = Ramp::new(settings());
        let start = r.lock().rate;
        window(&r, 1000);
        window(&r, 1000);
        let up = r.lock().rate;
        assert!((up - start * 2.25).abs() < 1e-6, "slow start multiplies by 1.5 per window: {start} → {up}");
        window(&r, 500_000);
        assert!((r.lock().rate - up / 2.0).abs() < 1e-6);
        window(&r, 1000);
        assert!((r.lock().rate - (up / 2.0 * 1.05 + 5.0)).abs() < 1e-6, "after a back-off it grows slowly");
        assert_eq!(r.summary().backoffs, 1);
    }

    #[test]
    fn the_rate_stays_within_floor_and_cap() {
        let r = Ramp::new(Settings { cap: 80.0, ..settings() });
        for _ in 0..10 {
            window(&r, 10);
        }
        assert!((r.lock().rate - 80.0).abs() < 1e-9);
        for _ in 0..10 {
            window(&r, 10_000_000);
        }
        assert!((r.lock().rate - FLOOR).abs() < 1e-9);
    }

    #[test]
    fn running_out_of_files_stops_with_the_figure() {
        let r = Ramp::new(settings());
        r.lock().in_flight += 2;
        r.finished(Ticket { generation: 0 }, Outcome::Upgraded(10));
        r.finished(Ticket { generation: 0 }, Outcome::OutOfFiles);
        let stop = r.summary().stopped.expect("stopped");
        assert_eq!(stop.limit, Limit::Fds);
        assert_eq!(stop.opened, 1);
        assert!(r.ended_at().is_some());
    }

    #[test]
    fn failures_past_the_allowance_stop_the_ramp() {
        let r = Ramp::new(settings());
        for _ in 0..5 {
            r.finished(Ticket { generation: 0 }, Outcome::Failed);
        }
        assert!(r.summary().stopped.is_none());
        r.finished(Ticket { generation: 0 }, Outcome::Failed);
        assert_eq!(r.summary().stopped.map(|s| s.limit), Some(Limit::HandshakeFailures));
    }
}
