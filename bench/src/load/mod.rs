//! `wsbench load`: the load generator. Scenarios `hold`, `echo`, `bulk` and `handshake`;
//! every echoed payload verified; latencies in `HdrHistogram`; spread over worker processes,
//! source addresses and targets to go past one process's open-files limit and one address
//! pair's ports.
//!
//! Every loop here is bounded in count and time: a run stops by itself at its planned end
//! and is cut off at `--max-time` whatever happens.

pub mod bulk;
pub mod client;
pub mod deadlines;
pub mod echo;
pub mod handshake;
pub mod hold;
pub mod link;
pub mod live_p99;
pub mod payload;
pub mod plan;
pub mod procs;
pub mod progress;
pub mod ramp;
pub mod receiver;
pub mod runner;
pub mod start;
pub mod stats;
pub mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use anyhow::Result;

use crate::report::Report;
use progress::{Progress, Show};
use ramp::{Ramp, Summary};
use stats::{Histograms, Latency, Recorder};

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Open N connections at the ramp rate, hold them with heartbeats, verify each echoes.
    Hold,
    /// N connections, one small message every interval, round-trip histogram.
    Echo,
    /// Few connections, large binary messages, throughput.
    Bulk,
    /// Connect + upgrade + close loops, handshakes per second.
    Handshake,
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Hold => "hold",
            Scenario::Echo => "echo",
            Scenario::Bulk => "bulk",
            Scenario::Handshake => "handshake",
        }
    }

    /// Payload bytes per message when `--size` is not given.
    pub fn default_size(self) -> usize {
        match self {
            Scenario::Echo => 64,
            Scenario::Bulk => 64 * 1024,
            Scenario::Hold | Scenario::Handshake => 32,
        }
    }
}

/// Options of `wsbench load`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Target addresses (comma-separated or repeated); connections are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9001")]
    pub target: Vec<SocketAddr>,
    /// Source addresses or ranges (127.0.0.2-127.0.0.9), bound with `IP_BIND_ADDRESS_NO_PORT`.
    #[arg(long, value_delimiter = ',')]
    pub source: Vec<String>,
    /// Connections (bulk: connections; handshake: concurrent loops).
    #[arg(long, default_value_t = 100)]
    pub conns: u64,
    /// Ramp rate, connections per second (all processes together): the upper bound of
    /// the hold's closed-loop ramp, the exact rate of the other scenarios.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Hold: open at exactly --rate instead of the closed-loop ramp (which raises its rate
    /// while handshakes stay fast and none fails, and backs off when they do not).
    #[arg(long)]
    pub fixed_rate: bool,
    /// Closed-loop ramp: a quarter second whose p90 handshake is slower than this many
    /// milliseconds halves the rate.
    #[arg(long, default_value_t = 100.0)]
    pub ramp_p90_ms: f64,
    /// Failed connections tolerated before the ramp stops (default: 0.1% of --conns, at
    /// least 10).
    #[arg(long)]
    pub max_failures: Option<u64>,
    /// The ramp stops (and holds what it opened) when `MemAvailable` falls under this many
    /// MiB; 0: no guard.
    #[arg(long, default_value_t = 2048)]
    pub min_available_mib: u64,
    /// Time bound of the ramp, seconds (default: 10× --conns/--rate, at least 120, for
    /// the closed loop; the planned ramp + 60 at a fixed rate).
    #[arg(long)]
    pub ramp_max_secs: Option<f64>,
    /// Seconds of steady state after the ramp (hold time, message time).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Echo: milliseconds between two messages of a connection.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Payload bytes per message (default: echo 64, bulk 65536, else 32; at least 24).
    #[arg(long)]
    pub size: Option<usize>,
    /// Hold: seconds between heartbeat pings.
    #[arg(long, default_value_t = 25.0)]
    pub heartbeat: f64,
    /// Echo: milliseconds to wait for outstanding echoes after the last send.
    #[arg(long, default_value_t = 3000)]
    pub drain_ms: u64,
    /// Seconds allowed for connect + upgrade.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Threads per process (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Worker processes (each re-executes this binary); use more than one past ~19000
    /// connections, the open-files limit of one process here.
    #[arg(long, default_value_t = 1)]
    pub procs: u64,
    /// Request path of the upgrade.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// `Host` header (default: the target address).
    #[arg(long)]
    pub host: Option<String>,
    /// Write the JSON report here, and the plots next to it (.connections.svg, .latency.svg).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Hard limit of the whole run in seconds (default: ramp + duration + 60).
    #[arg(long)]
    pub max_time: Option<f64>,
    /// Run shard I of N (from 0): this generator opens its share of --conns (the same
    /// --conns and --rate on every shard are the totals) from every Nth --source address,
    /// starting at the Ith. Merge the shards' reports with `wsbench report merge`.
    #[arg(long)]
    pub shard: Option<plan::Shard>,
    /// Start at this wall-clock time (Unix seconds, such as `$(( $(date +%s) + 30 ))`), so
    /// that shards on several machines ramp together.
    #[arg(long)]
    pub start_at: Option<f64>,
    /// Start once this file exists (a barrier on a shared file system), waiting at most
    /// 10 minutes.
    #[arg(long)]
    pub barrier: Option<PathBuf>,
    /// TLS (wss://) settings.
    #[command(flatten)]
    pub tls: crate::tls::TlsOptions,
    /// Internal: run as worker process INDEX of --procs, talking JSON lines on stdout.
    #[arg(long, hide = true)]
    pub worker: Option<u64>,
    /// Test only: worker process 0 starts its ramp this many milliseconds late, so that
    /// the workers' ramps end far apart (what proves that they hold together).
    #[arg(long, hide = true, default_value_t = 0)]
    pub slow_worker_ms: u64,
}

/// Runs the load; returns the report (already printed and written).
pub fn run(opts: &Options) -> Result<Report> {
    crate::limits::raise_nofile();
    if let Some(index) = opts.worker {
        procs::worker_main(opts, index)?;
        std::process::exit(0);
    }
    start::wait(opts.start_at, opts.barrier.as_deref())?;
    let started_unix = start::unix_now();
    let started = Instant::now();
    let show = if opts.quiet { Show::Quiet } else { Show::Line };
    let procs = opts.procs.max(1);
    let (rec, timeline, timed_out, threads, ramp) = if procs == 1 {
        let plan = Arc::new(plan::Plan::new(opts, 0, 1)?);
        let threads = plan.threads as u64;
        let progress = Arc::new(Progress::default());
        let ramp = Arc::new(Ramp::new(plan.ramp));
        let (rec, timeline, cut) = std::thread::scope(|s| -> Result<_> {
            let (p, r) = (Arc::clone(&progress), Arc::clone(&ramp));
            let load = s.spawn(move || runner::run(&plan, &p, &r));
            let timeline = progress::sample(|| progress.snap(), || progress.done.load(Relaxed), opts.conns, show);
            let (rec, cut) = load.join().map_err(|_| anyhow::anyhow!("the load panicked"))??;
            Ok((rec, timeline, cut))
        })?;
        (rec, timeline, cut, threads, ramp.summary())
    } else {
        let out = procs::run_workers(opts, procs, show)?;
        (out.rec, out.timeline, out.timed_out, out.threads, out.ramp)
    };
    let elapsed = started.elapsed().as_secs_f64();
    let mut report = build_report(opts, &rec, timeline, timed_out, elapsed, procs, threads, ramp)?;
    report.started_unix = started_unix;
    if !opts.quiet {
        report.print_table();
    }
    if let Some(path) = &opts.report {
        report.write(path)?;
        if !opts.quiet {
            println!("  report        {}  plots {} (and .png)", path.display(), Report::plots_text(path));
        }
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    opts: &Options,
    rec: &Recorder,
    timeline: progress::Timeline,
    timed_out: bool,
    elapsed: f64,
    procs: u64,
    threads: u64,
    ramp: Summary,
) -> Result<Report> {
    let secs = elapsed.max(1e-9);
    let size = opts.size.unwrap_or(opts.scenario.default_size()).max(payload::HEADER);
    let shard = opts.shard.unwrap_or_default();
    let sources = shard.sources(plan::parse_sources(&opts.source)?)?;
    Ok(Report {
        scenario: opts.scenario.name().into(),
        targets: plan::describe(&opts.target),
        sources: sources.iter().map(ToString::to_string).collect(),
        conns: plan::share(opts.conns, shard, procs),
        shard: opts.shard.map(|s| s.to_string()),
        shards: 1,
        started_unix: 0.0,
        histograms: Some(Histograms::of(rec)?),
        procs,
        threads,
        size: size as u64,
        duration_secs: opts.duration,
        elapsed_secs: elapsed,
        ramp_secs: timeline.ramp_secs.or(ramp.stopped.as_ref().map(|s| s.at_secs)),
        peak_open: timeline.samples.iter().map(|s| s.snap.open).max().unwrap_or(0),
        counts: rec.counts.clone(),
        latency_us: Latency::of(&rec.rtt),
        handshake_us: Latency::of(&rec.handshake),
        latency_distribution: stats::distribution(&rec.rtt),
        handshake_distribution: stats::distribution(&rec.handshake),
        handshakes_per_sec: rec.counts.connected as f64 / secs,
        messages_per_sec: rec.counts.received as f64 / secs,
        mb_per_sec: rec.counts.bytes_received as f64 / 1e6 / secs,
        timeline: timeline.samples,
        timed_out,
        clean: rec.counts.clean() && !timed_out,
        ramp,
        tls: opts.tls.describe(),
    })
}
