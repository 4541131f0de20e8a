//! One target's measurements (its load report and the proxy's /proc samples) and the
//! figures derived from them: per-connection memory, CPU per unit, the steady phase.
//!
//! Pure arithmetic: it never runs or reads anything.

use wsbench::report::Report;

use super::procfs::Mem;
use wsbench::load::Scenario;

/// One target's measurements.
#[derive(Debug)]
pub(super) struct Row {
    pub(super) name: String,
    /// What `wsbench load` reported.
    pub(super) report: Report,
    /// CPU seconds of the proxy processes during the load (None for direct).
    pub(super) proxy_cpu: Option<f64>,
    pub(super) machine_busy: f64,
    pub(super) before: Mem,
    pub(super) peak: Mem,
    /// The held connections once settled (see [`Sampled::settled`]).
    pub(super) settled: Mem,
    /// Anonymous RSS per added connection, bytes (see [`Sampled::marginal_anon`]).
    pub(super) marginal_anon: Option<f64>,
    /// The whole machine's steady-phase CPU per operation above direct's in the same
    /// round, µs, for every round, sorted (empty for direct or without a timeline).
    pub(super) above_direct: Vec<f64>,
}

impl Row {
    pub(super) fn held(&self) -> f64 {
        (self.report.peak_open as f64).max(1.0)
    }

    /// The scenario's headline figure (higher is better).
    pub(super) fn headline(&self, s: Scenario) -> f64 {
        match s {
            Scenario::Hold => self.report.counts.verified as f64,
            Scenario::Echo => self.report.messages_per_sec,
            Scenario::Bulk => self.report.mb_per_sec,
            Scenario::Handshake => self.report.handshakes_per_sec,
        }
    }

    pub(super) fn rss_per_conn(&self) -> f64 {
        self.peak.rss.saturating_sub(self.before.rss) as f64 / self.held()
    }

    /// [`Self::rss_per_conn`], KiB, or `None` when the peak is not above the start: many
    /// instances' start-up memory, returned once they settle, can exceed all that the
    /// connections add, and then the difference says nothing per connection.
    pub(super) fn peak_rss_kib_per_conn(&self) -> Option<f64> {
        (self.peak.rss > self.before.rss).then(|| self.rss_per_conn())
    }

    /// The whole machine's CPU per operation (message, handshake) in the steady phase
    /// alone, µs: from the load's timeline, starting 1.5 s after the ramp (once
    /// `splice_after` has moved connections to the kernel) to the end of the phase.
    pub(super) fn steady_machine_us_per_op(&self) -> Option<f64> {
        let ramp = self.report.ramp_secs?;
        let duration = self.report.duration_secs;
        let samples: Vec<(f64, f64, f64)> = self
            .report
            .timeline
            .iter()
            .map(|s| (s.t, s.snap.ops as f64, s.machine_busy_secs))
            .filter(|(t, ..)| *t >= ramp + 1.5 && *t <= ramp + duration - 0.25)
            .collect();
        let (first, last) = (samples.first()?, samples.last()?);
        let ops = last.1 - first.1;
        (ops > 0.0 && last.2 > first.2).then(|| (last.2 - first.2) / ops * 1e6)
    }

    /// The median round's machine CPU per operation above direct's, µs.
    pub(super) fn median_above_direct(&self) -> Option<f64> {
        self.above_direct.get(self.above_direct.len() / 2).copied()
    }

    /// Userspace memory per idle held connection once settled, bytes: anonymous RSS
    /// growth at the end of the hold (fixed costs of the run included).
    pub(super) fn idle_bytes_per_conn(&self) -> f64 {
        self.settled.anon.saturating_sub(self.before.anon) as f64 * 1024.0 / self.held()
    }

    /// Userspace memory per held connection: growth of the anonymous RSS.
    pub(super) fn anon_per_conn(&self) -> f64 {
        self.peak.anon.saturating_sub(self.before.anon) as f64 / self.held()
    }

    pub(super) fn kernel_per_conn(&self) -> f64 {
        self.peak.slab.saturating_sub(self.before.slab) as f64 / self.held()
    }

    /// Proxy CPU per unit of the scenario: µs per handshake / per echoed message, s per GB.
    pub(super) fn cpu_per_unit(&self, s: Scenario) -> Option<f64> {
        let cpu = self.proxy_cpu?;
        let per = |n: f64| if n > 0.0 { Some(cpu / n) } else { None };
        match s {
            Scenario::Handshake => per(self.report.counts.connected as f64).map(|x| x * 1e6),
            Scenario::Echo => per(self.report.counts.received as f64).map(|x| x * 1e6),
            Scenario::Bulk => per(self.report.counts.bytes_received as f64 / 1e9),
            Scenario::Hold => per(self.held()).map(|x| x * 1e6),
        }
    }
}
