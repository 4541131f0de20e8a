//! `wsbench report merge A.json B.json …`: the reports of shards (one per load machine)
//! as one report. Counts add up; latency percentiles come from the merged histograms
//! (never an average of percentiles); timelines are lined up on the wall clock and
//! summed.
//!
//! It refuses what it cannot merge exactly: different scenarios, or a report without
//! its histograms.

use std::path::PathBuf;

use anyhow::{Result, bail};

use super::Report;
use crate::load::progress::{SAMPLE_EVERY, Sample, Snap};
use crate::load::ramp::Summary;
use crate::load::stats::{self, Histograms, Latency, Recorder};

/// Options of `wsbench report merge`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Reports of the shards (JSON written by `wsbench load --report`).
    #[arg(required = true, num_args = 1..)]
    pub reports: Vec<PathBuf>,
    /// Write the merged report here, and its plots next to it.
    #[arg(long, default_value = "merged.json")]
    pub out: PathBuf,
    /// No table on the terminal.
    #[arg(long)]
    pub quiet: bool,
}

/// Reads, merges, prints and writes.
pub fn run(opts: &Options) -> Result<Report> {
    let reports = opts.reports.iter().map(|p| Report::read(p)).collect::<Result<Vec<_>>>()?;
    let merged = merge(&reports)?;
    if !opts.quiet {
        merged.print_table();
    }
    merged.write(&opts.out)?;
    if !opts.quiet {
        println!("  report        {}  plots {} (and .png)", opts.out.display(), Report::plots_text(&opts.out));
    }
    Ok(merged)
}

/// One report of several.
pub fn merge(reports: &[Report]) -> Result<Report> {
    let Some(first) = reports.first() else { bail!("nothing to merge") };
    let mut rec = Recorder::default();
    let mut ramp = Summary::default();
    for (i, r) in reports.iter().enumerate() {
        if r.scenario != first.scenario {
            bail!("report {} is of scenario {:?}, report 1 of {:?}", i + 1, r.scenario, first.scenario);
        }
        let Some(h) = &r.histograms else {
            bail!("report {} carries no histograms (written by an older wsbench): it cannot merge exactly", i + 1)
        };
        rec.merge(&h.recorder(&r.counts)?);
        ramp.add(&r.ramp);
    }
    let t0 = reports.iter().map(|r| r.started_unix).fold(f64::INFINITY, f64::min);
    let offset = |r: &Report| r.started_unix - t0;
    let elapsed = reports.iter().map(|r| offset(r) + r.elapsed_secs).fold(0.0, f64::max);
    let ramp_secs =
        reports.iter().map(|r| r.ramp_secs.map(|s| offset(r) + s)).try_fold(0.0, |a: f64, s| s.map(|s| a.max(s)));
    let timeline = timelines(reports, t0, elapsed);
    let peak_open = timeline.iter().map(|s| s.snap.open).max().unwrap_or(0);
    let mut targets: Vec<String> = Vec::new();
    for t in reports.iter().flat_map(|r| &r.targets) {
        if !targets.contains(t) {
            targets.push(t.clone());
        }
    }
    let secs = elapsed.max(1e-9);
    let timed_out = reports.iter().any(|r| r.timed_out);
    Ok(Report {
        scenario: first.scenario.clone(),
        targets,
        sources: reports.iter().flat_map(|r| r.sources.iter().cloned()).collect(),
        conns: reports.iter().map(|r| r.conns).sum(),
        shard: None,
        shards: reports.iter().map(|r| r.shards).sum(),
        started_unix: t0,
        histograms: Some(Histograms::of(&rec)?),
        procs: reports.iter().map(|r| r.procs).sum(),
        threads: reports.iter().map(|r| r.threads).max().unwrap_or(0),
        size: first.size,
        duration_secs: first.duration_secs,
        elapsed_secs: elapsed,
        ramp_secs,
        peak_open,
        latency_us: Latency::of(&rec.rtt),
        handshake_us: Latency::of(&rec.handshake),
        latency_distribution: stats::distribution(&rec.rtt),
        handshake_distribution: stats::distribution(&rec.handshake),
        handshakes_per_sec: rec.counts.connected as f64 / secs,
        messages_per_sec: rec.counts.received as f64 / secs,
        mb_per_sec: rec.counts.bytes_received as f64 / 1e6 / secs,
        timeline,
        timed_out,
        clean: rec.counts.clean() && !timed_out,
        counts: rec.counts,
        ramp,
        tls: first.tls.clone(),
    })
}

/// The shards' timelines on one clock (seconds after the earliest start), summed on the
/// sampling grid: each shard counts with its latest sample at or before a grid point.
/// Machine CPU is summed as each machine's busy seconds since its own first sample, and
/// memory in use as each machine's own (shards run on machines of their own).
fn timelines(reports: &[Report], t0: f64, elapsed: f64) -> Vec<Sample> {
    let step = SAMPLE_EVERY.as_secs_f64();
    let points =
        (std::time::Duration::from_secs_f64(elapsed.max(0.0)).as_nanos() / SAMPLE_EVERY.as_nanos()) as usize + 2;
    (0..points.min(1_000_000))
        .map(|k| {
            let t = k as f64 * step;
            let mut snap = Snap::default();
            let mut busy = 0.0;
            let mut mem = 0;
            for r in reports {
                let shift = r.started_unix - t0;
                let base = r.timeline.first().map_or(0.0, |s| s.machine_busy_secs);
                if let Some(s) = r.timeline.iter().take_while(|s| s.t + shift <= t + 1e-9).last() {
                    snap = snap.plus(s.snap);
                    busy += s.machine_busy_secs - base;
                    mem += s.mem_used_kib;
                }
            }
            Sample { t, snap, machine_busy_secs: busy, mem_used_kib: mem }
        })
        .collect()
}
