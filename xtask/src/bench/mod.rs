//! `cargo xtask bench`: the benchmarks, always against a baseline in the same run.
//!
//! `cargo xtask bench SCENARIO` starts a `wsbench echo` upstream, then for each target —
//! `direct` (no proxy), `wsgate` (once per relay: userspace and the sockmap splice), `nginx`
//! (Debian's package, configured like the nginx WebSocket recipe) and, when asked, `haproxy`
//! (Debian's package, configured alike) — runs `wsbench load
//! SCENARIO` against it while sampling the proxy's RSS and CPU, kernel slab and TCP memory,
//! and prints one table with ratios to direct. `cargo xtask bench scale --conns N` is the
//! many-connection hold, spread over several wsgate, echo and load processes when the
//! open-files limit requires it.
//!
//! It only ever sends traffic over loopback, every process it starts is killed when it
//! returns, every run is bounded in time by `wsbench load`'s own limits, and a load is
//! stopped if `MemAvailable` falls under 1.5 GiB. It never hides
//! a miss: a goal wsgate does not meet is printed as MISS.

mod compare;
mod haproxy;
mod load;
mod netns;
mod nginx;
mod paired;
mod procfs;
mod procs;
mod row;
mod sampler;
mod scale;
mod sides;
mod table;
mod tls;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use wsbench::load::Scenario as LoadScenario;

use crate::exec::workspace_root;

/// What to measure: one of wsbench's load scenarios (`hold`, `echo`, `bulk`,
/// `handshake`, compared across targets), or `scale`, the many-connection hold. The
/// names and their help come from [`LoadScenario`]: there is no second list to keep in
/// step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A `wsbench load` scenario against every target.
    Load(LoadScenario),
    /// The many-connection run: ramp to --conns, hold with heartbeats, verify.
    Scale,
}

impl Scenario {
    /// The `wsbench load` scenario it runs (`scale` is a large `hold`).
    pub(super) fn load(self) -> LoadScenario {
        match self {
            Scenario::Load(s) => s,
            Scenario::Scale => LoadScenario::Hold,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Scenario::Load(s) => s.name(),
            Scenario::Scale => "scale",
        }
    }
}

impl clap::ValueEnum for Scenario {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: std::sync::LazyLock<Vec<Scenario>> = std::sync::LazyLock::new(|| {
            LoadScenario::value_variants().iter().map(|s| Scenario::Load(*s)).chain([Scenario::Scale]).collect()
        });
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        match self {
            Scenario::Load(s) => s.to_possible_value(),
            Scenario::Scale => Some(
                clap::builder::PossibleValue::new("scale")
                    .help("The many-connection run: ramp to --conns, hold with heartbeats, verify"),
            ),
        }
    }
}

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Scenario to run against every target.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Targets in order (direct is the baseline): direct, wsgate (sockmap and userspace),
    /// wsgate/sockmap, wsgate/userspace, wsgate/auto (what the default picks), nginx, haproxy;
    /// `wsgate/MODE+admin` runs wsgate with its admin plane on; `baseline/MODE` runs
    /// `--baseline-bin`.
    #[arg(long, value_delimiter = ',', default_value = "direct,wsgate,nginx")]
    pub targets: Vec<String>,
    /// Connections (default: hold 5000, echo 1000, bulk 8, handshake 16, scale 100000).
    #[arg(long)]
    pub conns: Option<u64>,
    /// Seconds of steady state per target (default: 10; echo and scale 30).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Ramp rate in connections per second: the upper bound of the closed-loop ramp of
    /// hold and scale (which finds the rate the machine sustains), the exact rate of the
    /// other scenarios.
    #[arg(long, default_value_t = 3000.0)]
    pub rate: f64,
    /// Echo scenario: milliseconds between messages of one connection.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Payload bytes per message (default: wsbench's, echo 64, bulk 65536, else 32).
    #[arg(long)]
    pub size: Option<usize>,
    /// Heartbeat period of held connections, seconds.
    #[arg(long, default_value_t = 25.0)]
    pub heartbeat: f64,
    /// Proxy worker threads (wsgate `--workers`, nginx `worker_processes`, HAProxy
    /// `nbthread`).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Threads of the echo upstream.
    #[arg(long, default_value_t = 1)]
    pub echo_threads: usize,
    /// Threads of each load process.
    #[arg(long, default_value_t = 1)]
    pub load_threads: usize,
    /// Directory for the reports and plots (default: target/bench/SCENARIO).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run inside a new network namespace tuned with the `edge-1m` profile's
    /// per-namespace knobs (listen backlog, SYN backlog, port range, …), as on a tuned
    /// edge node; the machine's own settings stay as they are. The scale run does this by
    /// default when it may (root); this flag makes it an error when it cannot.
    #[arg(long, conflicts_with = "no_netns")]
    pub netns: bool,
    /// Scale run: stay in this network namespace (with this machine's own sysctls).
    #[arg(long)]
    pub no_netns: bool,
    /// Runs of every target, interleaved (direct, A, B, direct, A, B, …) so that a slow
    /// spell of a shared machine hits all of them; the table shows each target's median
    /// round (the upper one of an even count), judged by machine CPU above the same
    /// round's direct, and the spread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub rounds: u32,
    /// wsgate, nginx and HAProxy terminate TLS (wss://) with the same throwaway certificate
    /// (ECDSA P-256, made under --out), nginx with the recipe's `ssl` lines, HAProxy with
    /// `bind … ssl crt`; the client pins
    /// --tls-cipher and does a full handshake per connection. TLS pairs are relayed in
    /// userspace, so `wsgate` is one target; `direct` stays the plain echo (no TLS).
    #[arg(long)]
    pub tls: bool,
    /// The one cipher suite of --tls (rustls's name; nginx and HAProxy get the same suite).
    #[arg(long, default_value = "TLS13_AES_128_GCM_SHA256", requires = "tls")]
    pub tls_cipher: String,
    /// Another wsgate binary (the release build of an earlier commit, say), measured in
    /// the same run as the targets `baseline/MODE` (auto, sockmap, userspace): a change's
    /// before and after side by side, against the same direct.
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
}

pub fn run(opts: &Options) -> Result<()> {
    if (opts.netns || opts.scenario == Scenario::Scale)
        && let netns::Placed::Done = netns::place(opts.no_netns, opts.netns)?
    {
        return Ok(());
    }
    let out = opts.out.clone().unwrap_or_else(|| {
        let target = procs::bin_dir().parent().map_or_else(|| workspace_root().join("target"), Path::to_path_buf);
        target.join("bench").join(opts.scenario.name())
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    // Absolute: nginx resolves paths in its configuration against its own prefix.
    let out = std::fs::canonicalize(&out).with_context(|| format!("cannot resolve {}", out.display()))?;
    let want_wsgate = opts.targets.iter().any(|t| t.starts_with("wsgate"));
    let built = procs::build(want_wsgate)?;
    if opts.scenario == Scenario::Scale {
        return scale::run(opts, &out, built);
    }
    compare::run(opts, &out, built)
}

fn defaults(opts: &Options) -> (u64, f64) {
    let conns = opts.conns.unwrap_or(match opts.scenario {
        Scenario::Load(LoadScenario::Hold) => 5000,
        Scenario::Load(LoadScenario::Echo) => 1000,
        Scenario::Load(LoadScenario::Bulk) => 8,
        Scenario::Load(LoadScenario::Handshake) => 16,
        Scenario::Scale => 100_000,
    });
    let duration =
        opts.duration.unwrap_or(if matches!(opts.scenario, Scenario::Scale | Scenario::Load(LoadScenario::Echo)) {
            30.0
        } else {
            10.0
        });
    (conns, duration)
}
