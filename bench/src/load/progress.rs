//! Live progress of a run: gauges and counters shared by all threads of a process (atomics,
//! no locks), sampled into a timeline and shown as one progress line while the run goes.
//!
//! Sampling happens on the process's main thread; the load threads only bump atomics. The
//! sampler never blocks a load thread and stops when told to.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::live_p99::{self, BUCKETS};

/// Shared counters of one process.
#[derive(Debug, Default)]
pub struct Progress {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections upgraded so far.
    pub connected: AtomicU64,
    /// Connections that failed to open so far.
    pub failed: AtomicU64,
    /// Messages verified or handshakes completed so far.
    pub ops: AtomicU64,
    /// Handshake times, for the live line's p99.
    pub handshakes: super::live_p99::Live,
    /// Set when the load threads have finished.
    pub done: AtomicBool,
}

/// A point-in-time copy of [`Progress`].
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Snap {
    /// Connections open.
    pub open: u64,
    /// Connections upgraded so far.
    pub connected: u64,
    /// Connections failed so far.
    pub failed: u64,
    /// Messages or handshakes so far.
    pub ops: u64,
    /// Handshake times so far in the live line's buckets (worker to parent only: not kept
    /// in the timeline).
    #[serde(default, skip_serializing_if = "no_handshakes")]
    pub handshakes: [u64; BUCKETS],
}

fn no_handshakes(h: &[u64; BUCKETS]) -> bool {
    h.iter().all(|c| *c == 0)
}

impl Snap {
    /// Sum of two snapshots (of different processes).
    #[must_use]
    pub fn plus(self, o: Snap) -> Snap {
        Snap {
            open: self.open + o.open,
            connected: self.connected + o.connected,
            failed: self.failed + o.failed,
            ops: self.ops + o.ops,
            handshakes: std::array::from_fn(|i| self.handshakes[i] + o.handshakes[i]),
        }
    }
}

impl Progress {
    /// Reads all counters.
    pub fn snap(&self) -> Snap {
        Snap {
            open: self.open.load(Relaxed),
            connected: self.connected.load(Relaxed),
            failed: self.failed.load(Relaxed),
            ops: self.ops.load(Relaxed),
            handshakes: self.handshakes.counts(),
        }
    }
}

/// One timeline point.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    /// The counters then.
    #[serde(flatten)]
    pub snap: Snap,
    /// The whole machine's busy CPU seconds then ([`crate::machine::busy_secs`]), so CPU
    /// per message can be taken over the steady phase alone.
    #[serde(default)]
    pub machine_busy_secs: f64,
    /// The machine's memory in use then (`MemTotal` − `MemAvailable`), KiB: with the
    /// open connections, the memory each one costs, all processes and the kernel.
    #[serde(default)]
    pub mem_used_kib: u64,
}

/// What the sampler saw over the run.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    /// Samples, every [`SAMPLE_EVERY`].
    pub samples: Vec<Sample>,
    /// Seconds until every planned connection had been attempted (opened or failed).
    pub ramp_secs: Option<f64>,
}

/// Sampling period.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// How the sampler shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Nothing.
    Quiet,
    /// A human progress line on stderr, once a second.
    Line,
    /// A JSON line on stdout every sample (worker processes talking to their parent).
    Json,
}

/// Samples `read` until `done` returns true; `planned` is the number of connections to open.
pub fn sample(read: impl Fn() -> Snap, done: impl Fn() -> bool, planned: u64, show: Show) -> Timeline {
    let start = Instant::now();
    let mut tl = Timeline::default();
    let mut last_line = start;
    let mut last = Snap::default();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        let finished = done();
        let s = read();
        let t = start.elapsed().as_secs_f64();
        let kept = Snap { handshakes: [0; BUCKETS], ..s };
        tl.samples.push(Sample {
            t,
            snap: kept,
            machine_busy_secs: crate::machine::busy_secs(),
            mem_used_kib: crate::machine::mem_used_kib(),
        });
        if tl.ramp_secs.is_none() && s.connected + s.failed >= planned {
            tl.ramp_secs = Some(t);
        }
        match show {
            Show::Json => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", serde_json::json!({ "progress": s }));
                let _ = out.flush();
            }
            Show::Line if last_line.elapsed() >= Duration::from_secs(1) || finished => {
                let dt = last_line.elapsed().as_secs_f64().max(1e-3);
                let rate = (s.ops - last.ops) as f64 / dt;
                let conn_rate = (s.connected - last.connected) as f64 / dt;
                let bar = bar(s.connected + s.failed, planned);
                let avail = crate::load::ramp::mem_available_kib() / 1024;
                let p99 = live_p99::p99_between(&last.handshakes, &s.handshakes)
                    .map_or_else(|| "-".to_string(), |us| format!("≤{:.1} ms", us / 1000.0));
                let line = format!(
                    "[{t:7.1}s] {bar} open {}/{planned} (+{conn_rate:.0}/s)  p99 handshake {p99}  failed {}  \
                     ops {} ({rate:.0}/s)  MemAvailable {avail} MiB",
                    s.open, s.failed, s.ops
                );
                if tty {
                    eprint!("\r{line}\x1b[K");
                } else {
                    eprintln!("{line}");
                }
                last_line = Instant::now();
                last = s;
            }
            _ => {}
        }
        if finished {
            if show == Show::Line && tty {
                eprintln!();
            }
            return tl;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
}

fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 20;
    let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(WIDTH);
    format!("[{}{}]", "#".repeat(filled as usize), ".".repeat((WIDTH - filled) as usize))
}

/// A handle for the load threads of this process.
pub type Shared = Arc<Progress>;
