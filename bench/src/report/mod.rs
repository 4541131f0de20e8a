//! The result of a load run as people and programs read it: a table on the terminal, a JSON
//! file, and SVG plots next to it (connections over time, latency distribution).
//!
//! A report states misses as they are: failures and verification errors are printed even
//! when zero, and `clean` is false whenever any of them is not.

pub mod merge;
pub mod png;
pub mod svg;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::load::progress::Sample;
use crate::load::ramp::Summary;
use crate::load::stats::{Counts, Histograms, Latency};

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Target addresses.
    pub targets: Vec<String>,
    /// Source addresses (empty: chosen by the kernel).
    pub sources: Vec<String>,
    /// Connections (or handshake loops) planned: this shard's share in a shard's report.
    pub conns: u64,
    /// `I/N` in the report of shard I of N.
    #[serde(default)]
    pub shard: Option<String>,
    /// Shards merged into this report (1: one run).
    #[serde(default = "one")]
    pub shards: u64,
    /// Wall-clock start, Unix seconds (to line up the timelines of shards).
    #[serde(default)]
    pub started_unix: f64,
    /// The latency histograms themselves, so that reports merge exactly.
    #[serde(default)]
    pub histograms: Option<Histograms>,
    /// Worker processes.
    pub procs: u64,
    /// Threads per process.
    pub threads: u64,
    /// Payload bytes per message.
    pub size: u64,
    /// Planned steady duration, seconds.
    pub duration_secs: f64,
    /// Wall time of the whole run, seconds.
    pub elapsed_secs: f64,
    /// Seconds until every planned connection was opened or had failed.
    pub ramp_secs: Option<f64>,
    /// Most connections open at once (as sampled).
    pub peak_open: u64,
    /// Counters.
    pub counts: Counts,
    /// Round trips of echoes and heartbeats, µs.
    pub latency_us: Latency,
    /// Connect + upgrade times, µs.
    pub handshake_us: Latency,
    /// (percentile, µs) of the round trips.
    pub latency_distribution: Vec<[f64; 2]>,
    /// (percentile, µs) of the handshakes (connect + upgrade).
    #[serde(default)]
    pub handshake_distribution: Vec<[f64; 2]>,
    /// Handshakes completed per second of the run.
    pub handshakes_per_sec: f64,
    /// Echoes received per second of the run.
    pub messages_per_sec: f64,
    /// Payload megabytes (10^6) echoed back per second of the run.
    pub mb_per_sec: f64,
    /// Connections over time.
    pub timeline: Vec<Sample>,
    /// The run was cut off at its time limit.
    pub timed_out: bool,
    /// No loss, corruption, reordering, early close or failed connection.
    pub clean: bool,
    /// How the connections were ramped up, and the limit that stopped the ramp if one did.
    #[serde(default)]
    pub ramp: Summary,
    /// The client's TLS settings (None: plain connections).
    #[serde(default)]
    pub tls: Option<String>,
}

fn one() -> u64 {
    1
}

impl Report {
    /// Reads a report written by [`Report::write`].
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a wsbench report", path.display()))
    }

    /// Prints the final table.
    pub fn print_table(&self) {
        let c = &self.counts;
        let l = &self.latency_us;
        let h = &self.handshake_us;
        let shards = match (&self.shard, self.shards) {
            (Some(s), _) => format!(", shard {s}"),
            (None, n) if n > 1 => format!(", {n} shards merged"),
            _ => String::new(),
        };
        println!(
            "wsbench load {}: {} connections ({} procs × {} threads{shards}) → {}",
            self.scenario,
            self.conns,
            self.procs,
            self.threads,
            self.targets.join(",")
        );
        if let Some(tls) = &self.tls {
            println!("  tls           {tls}: {} TLS handshakes, {} resumed", c.tls_handshakes, c.tls_resumed);
        }
        let ramp = self.ramp_secs.map_or_else(|| "-".into(), |r| format!("{r:.2} s"));
        println!("  {:<13} {:>10} {:>10} {:>10} {:>12}", "connections", "opened", "failed", "peak", "ramp");
        println!(
            "  {:<13} {:>10} {:>10} {:>10} {:>12}",
            "",
            c.connected,
            c.connect_failed + c.handshake_failed,
            self.peak_open,
            ramp
        );
        println!(
            "  {:<13} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12}",
            "messages", "sent", "received", "lost", "mismatched", "out-of-order", "closed-early"
        );
        println!(
            "  {:<13} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12}",
            "", c.sent, c.received, c.lost, c.mismatched, c.out_of_order, c.closed_early
        );
        if c.pings > 0 || c.verified > 0 {
            println!(
                "  {:<13} {:>10} {:>10} {:>10} {:>12} {:>12}",
                "hold", "pings", "pongs", "missing", "late", "verified"
            );
            println!(
                "  {:<13} {:>10} {:>10} {:>10} {:>12} {:>12}",
                "", c.pings, c.pongs, c.pongs_missing, c.pongs_late, c.verified
            );
        }
        println!(
            "  {:<13} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12}",
            "µs", "p50", "p90", "p99", "p99.9", "max", "count"
        );
        println!(
            "  {:<13} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12}",
            "round trip", l.p50, l.p90, l.p99, l.p999, l.max, l.count
        );
        println!(
            "  {:<13} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12}",
            "handshake", h.p50, h.p90, h.p99, h.p999, h.max, h.count
        );
        println!(
            "  rates         {:.0} handshakes/s  {:.0} messages/s  {:.1} MB/s  over {:.1} s",
            self.handshakes_per_sec, self.messages_per_sec, self.mb_per_sec, self.elapsed_secs
        );
        if self.ramp.adaptive {
            println!(
                "  ramp          closed loop: peak {:.0} conn/s, {:.0} conn/s at the end, {} back-offs",
                self.ramp.peak_rate, self.ramp.final_rate, self.ramp.backoffs
            );
        }
        if let Some(s) = &self.ramp.stopped {
            println!(
                "  STOPPED EARLY at {:.1} s, {} of {} opened: {}: {}",
                s.at_secs,
                c.connected,
                self.conns,
                s.limit.name(),
                s.detail
            );
        }
        if self.timed_out {
            println!("  TIMED OUT: the run hit its time limit; counts are partial");
        }
        println!("  verdict       {}", if self.clean { "clean" } else { "NOT CLEAN (see counts above)" });
    }

    /// Paths of the plots written next to a report file (SVG; each has a PNG copy
    /// with the extension `png`): connections over time, latency, memory.
    pub fn plot_paths(json: &Path) -> [PathBuf; 3] {
        ["connections", "latency", "memory"].map(|name| json.with_extension(format!("{name}.svg")))
    }

    /// The plots' paths, for a line of text.
    pub fn plots_text(json: &Path) -> String {
        Self::plot_paths(json).iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")
    }

    /// Writes the JSON report and its plots, as SVG and PNG.
    pub fn write(&self, json: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(json, text).with_context(|| format!("cannot write {}", json.display()))?;
        let plots = [svg::connections(self), svg::latency(self), svg::memory(self)];
        let fonts = png::fonts();
        for (path, plot) in Self::plot_paths(json).iter().zip(plots) {
            std::fs::write(path, &plot).with_context(|| format!("cannot write {}", path.display()))?;
            let png = path.with_extension("png");
            let bytes = png::render(&plot, &fonts).with_context(|| format!("cannot render {}", png.display()))?;
            std::fs::write(&png, bytes).with_context(|| format!("cannot write {}", png.display()))?;
        }
        Ok(())
    }
}
