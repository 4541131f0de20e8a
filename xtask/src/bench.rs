//! `cargo xtask bench`: the benchmarks, always against a baseline in the same run.
//!
//! `cargo xtask bench SCENARIO` starts a `wsbench echo` upstream, then for each target —
//! `direct` (no proxy), `wsgate` (once per splice mode its `--help` offers) and `nginx`
//! (Debian's package, configured like the nginx WebSocket recipe) — runs `wsbench load
//! SCENARIO` against it while sampling the proxy's RSS and CPU, kernel slab and TCP memory,
//! and prints one table with ratios to direct. `cargo xtask bench scale --conns N` is the
//! many-connection hold, spread over several wsgate, echo and load processes when the
//! open-files limit requires it.
//!
//! It only ever sends traffic over loopback, every process it starts is killed when it
//! returns, every run is bounded in time by `wsbench load`'s own limits, and a load is
//! stopped if `MemAvailable` falls under 1.5 GiB. It never hides
//! a miss: a goal wsgate does not meet is printed as MISS.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use wsbench::load::Scenario as LoadScenario;

use crate::exec::{cargo, describe, exec, workspace_root};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Idle connections held with heartbeats: memory per connection.
    Hold,
    /// Small messages on many connections: latency and CPU per message.
    Echo,
    /// 64 KiB messages on a few connections: throughput and CPU per GB.
    Bulk,
    /// Connect + upgrade + close loops: handshakes per second and CPU per handshake.
    Handshake,
    /// The many-connection run: ramp to --conns, hold with heartbeats, verify.
    Scale,
}

impl Scenario {
    /// The `wsbench load` scenario it runs (`scale` is a large `hold`).
    fn load(self) -> LoadScenario {
        match self {
            Scenario::Hold | Scenario::Scale => LoadScenario::Hold,
            Scenario::Echo => LoadScenario::Echo,
            Scenario::Bulk => LoadScenario::Bulk,
            Scenario::Handshake => LoadScenario::Handshake,
        }
    }

    fn name(self) -> &'static str {
        if self == Scenario::Scale { "scale" } else { self.load().name() }
    }
}

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Scenario to run against every target.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Targets in order (direct is the baseline): direct, wsgate (sockmap and userspace),
    /// wsgate/sockmap, wsgate/userspace, wsgate/auto (what the default picks), nginx.
    #[arg(long, value_delimiter = ',', default_value = "direct,wsgate,nginx")]
    pub targets: Vec<String>,
    /// Connections (default: hold 5000, echo 1000, bulk 8, handshake 16, scale 100000).
    #[arg(long)]
    pub conns: Option<u64>,
    /// Seconds of steady state per target (default: 10; echo and scale 30).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Ramp rate in connections per second.
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
    /// Proxy worker threads (wsgate `--workers`, nginx `worker_processes`).
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
    /// Scale run: run everything inside a new network namespace tuned with the `edge-1m`
    /// profile's per-namespace knobs (listen backlog, SYN backlog, port range, …), as on
    /// a tuned edge node; the machine's own settings stay as they are. Needs root.
    #[arg(long)]
    pub netns: bool,
    /// Runs of every target, interleaved (direct, A, B, direct, A, B, …) so that a slow
    /// spell of a shared machine hits all of them; the table shows each target's median
    /// round (the upper one of an even count), judged by machine CPU above the same
    /// round's direct, and the spread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub rounds: u32,
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.netns {
        return run_in_tuned_netns();
    }
    let out = opts.out.clone().unwrap_or_else(|| {
        let target = bin_dir().parent().map_or_else(|| workspace_root().join("target"), Path::to_path_buf);
        target.join("bench").join(opts.scenario.name())
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    // Absolute: nginx resolves paths in its configuration against its own prefix.
    let out = std::fs::canonicalize(&out).with_context(|| format!("cannot resolve {}", out.display()))?;
    let want_wsgate = opts.targets.iter().any(|t| t.starts_with("wsgate"));
    let built = build(want_wsgate)?;
    if opts.scenario == Scenario::Scale {
        return scale(opts, &out, built);
    }
    compare(opts, &out, built)
}

/// Creates a network namespace, tunes it with `edge-1m`, runs this same command inside it
/// (without `--netns`), and deletes the namespace again, whatever happened.
fn run_in_tuned_netns() -> Result<()> {
    let name = format!("wsgate-bench-{}", std::process::id());
    exec(Command::new("ip").args(["netns", "add", &name])).context("creating the network namespace (needs root)")?;
    let result = (|| -> Result<()> {
        exec(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
        let me = std::env::current_exe().context("finding xtask's own binary")?;
        let state = std::env::temp_dir().join(format!("{name}.tuning-state.json"));
        exec(Command::new(&me).args(["tune", "apply", "edge-1m", "--netns", &name]).arg("--state").arg(&state))?;
        let _ = std::fs::remove_file(&state);
        let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--netns").collect();
        eprintln!("bench: running inside network namespace {name}, tuned with edge-1m");
        exec(Command::new("ip").args(["netns", "exec", &name]).arg(&me).args(&args))
    })();
    let deleted = exec(Command::new("ip").args(["netns", "del", &name]));
    result.and(deleted)
}

// ---------------------------------------------------------------------------------------
// Building and starting processes.
// ---------------------------------------------------------------------------------------

/// Where `cargo build --release` puts binaries (respects `CARGO_TARGET_DIR`).
fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
    target.join("release")
}

/// Builds wsbench (required) and wsgate (when wanted); returns whether wsgate is usable.
fn build(want_wsgate: bool) -> Result<bool> {
    eprintln!("bench: building wsbench …");
    exec(cargo().args(["build", "--quiet", "--release", "-p", "wsbench"]))?;
    if !want_wsgate {
        return Ok(false);
    }
    eprintln!("bench: building wsgate …");
    match exec(cargo().args(["build", "--quiet", "--release", "-p", "wsgate"])) {
        Ok(()) => Ok(true),
        Err(e) => {
            eprintln!("bench: wsgate is left out of this run: {e:#}");
            Ok(false)
        }
    }
}

/// A child process, killed and reaped on drop.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn spawn(cmd: &mut Command, name: &str) -> Result<Self> {
        let child = cmd.spawn().with_context(|| format!("failed to start `{}`", describe(cmd)))?;
        Ok(Self { child, name: name.into() })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process already exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    /// SIGTERM first, so a master process (nginx) takes its workers down with it; SIGKILL
    /// after 5 s.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `wsbench echo` and waits for its ready line; returns it with its address.
fn start_echo(listen: SocketAddr, threads: usize) -> Result<(Proc, SocketAddr)> {
    let mut cmd = Command::new(bin_dir().join("wsbench"));
    cmd.args(["echo", "--listen", &listen.to_string(), "--threads", &threads.to_string()])
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    let mut p = Proc::spawn(&mut cmd, "wsbench echo")?;
    let stdout = p.child.stdout.take().context("echo stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).context("wsbench echo did not report ready within 10 s")?;
    let addr = line
        .strip_prefix("wsbench echo: listening on ")
        .with_context(|| format!("unexpected first line from wsbench echo: {line:?}"))?
        .parse()?;
    Ok((p, addr))
}

/// A free loopback port (bound and released; the race with other programs is accepted).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` accepts TCP connections.
fn wait_port(addr: SocketAddr, p: &mut Proc) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        p.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} did not listen on {addr} within 15 s", p.name)
}

/// wsgate's splice modes worth benchmarking, from its `--help`; `None` if it has no
/// `--splice` flag.
fn wsgate_splice_modes() -> Result<Option<Vec<String>>> {
    let out = Command::new(bin_dir().join("wsgate")).arg("--help").output().context("cannot run wsgate --help")?;
    let help = String::from_utf8_lossy(&out.stdout);
    let Some(at) = help.find("--splice") else {
        return Ok(None);
    };
    let section = &help[at..];
    // The flag's own help ends where the next option starts.
    let end =
        ["\n  -", "\n      --"].iter().filter_map(|pat| section[1..].find(pat)).min().map_or(section.len(), |e| e + 1);
    let section = &section[..end];
    let modes = ["userspace", "sockmap"].iter().filter(|m| section.contains(*m)).map(|m| (*m).to_string()).collect();
    Ok(Some(modes))
}

fn start_wsgate(
    listen: SocketAddr,
    upstreams: &[SocketAddr],
    workers: usize,
    splice: Option<&str>,
    max_connections: Option<u64>,
    log: &Path,
) -> Result<Proc> {
    let mut cmd = Command::new(bin_dir().join("wsgate"));
    cmd.args(["--listen", &listen.to_string(), "--workers", &workers.to_string()]);
    if let Some(n) = max_connections {
        cmd.args(["--max-connections", &n.to_string()]);
    }
    for u in upstreams {
        cmd.args(["--upstream", &u.to_string()]);
    }
    if let Some(mode) = splice {
        cmd.args(["--splice", mode]);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let name = splice.map_or_else(|| "wsgate".to_string(), |m| format!("wsgate --splice {m}"));
    let mut p = Proc::spawn(&mut cmd, &name)?;
    wait_port(listen, &mut p)?;
    Ok(p)
}

/// The nginx WebSocket recipe, with its own prefix and temp directories.
fn nginx_conf(dir: &Path, listen: SocketAddr, upstream: SocketAddr, workers: usize) -> String {
    let d = dir.display();
    format!(
        r"# The nginx WebSocket proxying recipe (nginx.org/en/docs/http/websocket.html),
# with the long timeouts and unbuffered proxying it recommends. Generated by xtask bench.
worker_processes {workers};
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 19000;
}}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream websocket {{
        server {upstream};
    }}

    server {{
        listen {listen};
        location / {{
            proxy_pass http://websocket;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_buffering off;
        }}
    }}
}}
"
    )
}

fn ensure_nginx() -> Result<PathBuf> {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).is_file() {
            return Ok(p.into());
        }
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("nginx is not installed: apt-get install nginx-light");
    }
    eprintln!("bench: installing nginx-light …");
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "nginx-light"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok("/usr/sbin/nginx".into())
}

fn start_nginx(dir: &Path, listen: SocketAddr, upstream: SocketAddr, workers: usize) -> Result<Proc> {
    let nginx = ensure_nginx()?;
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, listen, upstream, workers))?;
    let err = dir.join("error.log");
    let base = |c: &mut Command| {
        c.arg("-p").arg(dir).arg("-c").arg(&conf).arg("-e").arg(&err);
    };
    let mut test = Command::new(&nginx);
    base(&mut test);
    test.arg("-t").stdout(Stdio::null()).stderr(Stdio::null());
    exec(&mut test).with_context(|| format!("nginx rejected {}; see {}", conf.display(), err.display()))?;
    let mut cmd = Command::new(&nginx);
    base(&mut cmd);
    cmd.stdin(Stdio::null());
    let mut p = Proc::spawn(&mut cmd, "nginx")?;
    wait_port(listen, &mut p)?;
    Ok(p)
}

// ---------------------------------------------------------------------------------------
// Sampling /proc.
// ---------------------------------------------------------------------------------------

/// `pid` and its direct children (nginx workers).
fn family(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(fields) = stat_fields(p)
                && fields.get(1).and_then(|s| s.parse::<u32>().ok()) == Some(pid)
            {
                pids.push(p);
            }
        }
    }
    pids
}

/// Fields of /proc/PID/stat after the command name (state is index 0, ppid 1, utime 11,
/// stime 12).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// CPU seconds (user + system) used so far by these processes.
fn cpu_secs(pids: &[u32]) -> f64 {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    pids.iter()
        .filter_map(|p| stat_fields(*p))
        .map(|f| {
            let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            (n(11) + n(12)) as f64 / tick
        })
        .sum()
}

/// Sum of one `/proc/PID/status` field (`VmRSS`, `RssAnon`, …) over `pids`, KiB.
fn status_kib(pids: &[u32], field: &str) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum()
}

fn rss_kib(pids: &[u32]) -> u64 {
    status_kib(pids, "VmRSS")
}

fn meminfo_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Below this much `MemAvailable` a running load is stopped, before the OOM killer acts.
const MEMORY_FLOOR_KIB: u64 = 1536 * 1024;

/// TCP sockets in use (/proc/net/sockstat).
fn tcp_inuse() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    s.lines().find(|l| l.starts_with("TCP:")).and_then(|l| l.split_whitespace().nth(2)?.parse().ok()).unwrap_or(0)
}

/// TCP memory in KiB from /proc/net/sockstat (`mem` is in pages).
fn tcp_mem_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages: u64 = s
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.iter().position(|x| *x == "mem").and_then(|i| w.get(i + 1)?.parse().ok())
        })
        .unwrap_or(0);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    pages * page / 1024
}

/// Memory figures at one moment, all in KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    /// RSS of the sampled processes.
    rss: u64,
    /// Their anonymous RSS: heap and stacks, the userspace memory proper. The rest of
    /// the RSS is mapped files and shared memory, such as the splice's mmap-ed BPF
    /// array (kernel memory that is also counted in the process's RSS once touched).
    anon: u64,
    /// Kernel slab (/proc/meminfo).
    slab: u64,
    /// TCP buffers (/proc/net/sockstat).
    tcp: u64,
    /// `MemAvailable`.
    available: u64,
}

fn mem_now(pids: &[u32]) -> Mem {
    Mem {
        rss: rss_kib(pids),
        anon: status_kib(pids, "RssAnon"),
        slab: meminfo_kib("Slab"),
        tcp: tcp_mem_kib(),
        available: meminfo_kib("MemAvailable"),
    }
}

/// Open descriptors of `pids` (two per proxied connection, plus a fixed few).
fn fd_count(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok()).map(|d| d.count() as u64).sum()
}

/// Least-squares slope of `y` over `x`; `None` unless `x` spans a range.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    (points.len() >= 4 && sxx > 0.0).then(|| sxy / sxx)
}

/// What a [`Sampler`] saw.
#[derive(Debug, Clone, Copy, Default)]
struct Sampled {
    /// The sample with the largest slab (the moment most connections were held),
    /// with the largest RSS seen.
    peak: Mem,
    /// The last sample of the plateau (connections within 1% of the most seen): the
    /// held connections after they settled (spliced and parked, transients freed).
    settled: Mem,
    /// Anonymous RSS growth per proxied connection over the ramp, bytes: the slope of
    /// anonymous RSS over connections (descriptors ÷ 2), so fixed costs do not count,
    /// but connections still in their handshake or first second do.
    marginal_anon: Option<f64>,
}

/// Samples memory every 250 ms on a thread until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Sampled>,
}

impl Sampler {
    fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peak = Mem::default();
            // (proxied connections ≈ descriptors ÷ 2, memory) per sample.
            let mut samples: Vec<(f64, Mem)> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let pids: Vec<u32> = pids.iter().flat_map(|p| family(*p)).collect();
                let m = mem_now(&pids);
                if !pids.is_empty() {
                    samples.push((fd_count(&pids) as f64 / 2.0, m));
                }
                if m.slab >= peak.slab {
                    peak = Mem { rss: m.rss.max(peak.rss), anon: m.anon.max(peak.anon), ..m };
                } else {
                    peak.rss = peak.rss.max(m.rss);
                    peak.anon = peak.anon.max(m.anon);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            // Only the ramp up to the peak: closing connections frees in another order.
            let top = samples.iter().enumerate().max_by(|a, b| a.1.0.total_cmp(&b.1.0)).map_or(0, |(i, _)| i);
            let most = samples.get(top).map_or(0.0, |p| p.0);
            let settled = samples.iter().rev().find(|p| p.0 >= most * 0.99).map(|p| p.1);
            let ramp: Vec<(f64, f64)> =
                samples.iter().take(top + 1).map(|(conns, m)| (*conns, m.anon as f64 * 1024.0)).collect();
            Sampled { peak, settled: settled.unwrap_or(peak), marginal_anon: slope(&ramp) }
        });
        Self { stop, handle }
    }

    fn finish(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// Running the load and comparing targets.
// ---------------------------------------------------------------------------------------

struct LoadArgs {
    scenario: LoadScenario,
    targets: Vec<SocketAddr>,
    sources: Option<String>,
    conns: u64,
    duration: f64,
    procs: u64,
    report: PathBuf,
}

fn run_load(opts: &Options, a: &LoadArgs) -> Result<Value> {
    let targets: Vec<String> = a.targets.iter().map(ToString::to_string).collect();
    let mut cmd = Command::new(bin_dir().join("wsbench"));
    cmd.args(["load", a.scenario.name(), "--quiet", "--target", &targets.join(",")])
        .args(["--conns", &a.conns.to_string(), "--duration", &a.duration.to_string()])
        .args(["--rate", &opts.rate.to_string(), "--interval-ms", &opts.interval_ms.to_string()])
        .args(["--heartbeat", &opts.heartbeat.to_string(), "--threads", &opts.load_threads.to_string()])
        .args(["--procs", &a.procs.to_string()])
        .arg("--report")
        .arg(&a.report)
        .stdin(Stdio::null());
    if let Some(size) = opts.size {
        cmd.args(["--size", &size.to_string()]);
    }
    if let Some(src) = &a.sources {
        cmd.args(["--source", src]);
    }
    // Its own process group, so the memory guard can stop the load and all its workers.
    cmd.process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("failed to start `{}`", describe(&cmd)))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let avail = meminfo_kib("MemAvailable");
        if avail < MEMORY_FLOOR_KIB {
            let open = tcp_inuse();
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait();
            bail!(
                "stopped the load: MemAvailable fell to {} MiB (floor {} MiB) with {open} TCP sockets in use; \
                 that is where this machine stops",
                avail / 1024,
                MEMORY_FLOOR_KIB / 1024
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Exit 2 means "ran, but not clean": the report says what went wrong.
    if !status.success() && status.code() != Some(2) {
        bail!("`{}` failed with {status}", describe(&cmd));
    }
    let text = std::fs::read_to_string(&a.report).with_context(|| format!("no report at {}", a.report.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// One target's measurements.
#[derive(Debug)]
struct Row {
    name: String,
    report: Value,
    /// CPU seconds of the proxy processes during the load (None for direct).
    proxy_cpu: Option<f64>,
    machine_busy: f64,
    before: Mem,
    peak: Mem,
    /// The held connections once settled (see [`Sampled::settled`]).
    settled: Mem,
    /// Anonymous RSS per added connection, bytes (see [`Sampled::marginal_anon`]).
    marginal_anon: Option<f64>,
    /// The whole machine's steady-phase CPU per operation above direct's in the same
    /// round, µs, for every round, sorted (empty for direct or without a timeline).
    above_direct: Vec<f64>,
}

impl Row {
    fn f(&self, key: &str) -> f64 {
        self.report.pointer(key).and_then(Value::as_f64).unwrap_or(0.0)
    }

    fn held(&self) -> f64 {
        self.f("/peak_open").max(1.0)
    }

    /// The scenario's headline figure (higher is better).
    fn headline(&self, s: Scenario) -> f64 {
        match s {
            Scenario::Hold | Scenario::Scale => self.f("/counts/verified"),
            Scenario::Echo => self.f("/messages_per_sec"),
            Scenario::Bulk => self.f("/mb_per_sec"),
            Scenario::Handshake => self.f("/handshakes_per_sec"),
        }
    }

    fn rss_per_conn(&self) -> f64 {
        self.peak.rss.saturating_sub(self.before.rss) as f64 / self.held()
    }

    /// The whole machine's CPU per operation (message, handshake) in the steady phase
    /// alone, µs: from the load's timeline, starting 1.5 s after the ramp (once
    /// `splice_after` has moved connections to the kernel) to the end of the phase.
    fn steady_machine_us_per_op(&self) -> Option<f64> {
        let ramp = self.report.get("ramp_secs").and_then(Value::as_f64)?;
        let duration = self.report.get("duration_secs").and_then(Value::as_f64)?;
        let samples: Vec<(f64, f64, f64)> = self
            .report
            .get("timeline")
            .and_then(Value::as_array)?
            .iter()
            .filter_map(|s| {
                Some((s.get("t")?.as_f64()?, s.get("ops")?.as_f64()?, s.get("machine_busy_secs")?.as_f64()?))
            })
            .filter(|(t, ..)| *t >= ramp + 1.5 && *t <= ramp + duration - 0.25)
            .collect();
        let (first, last) = (samples.first()?, samples.last()?);
        let ops = last.1 - first.1;
        (ops > 0.0 && last.2 > first.2).then(|| (last.2 - first.2) / ops * 1e6)
    }

    /// The median round's machine CPU per operation above direct's, µs.
    fn median_above_direct(&self) -> Option<f64> {
        self.above_direct.get(self.above_direct.len() / 2).copied()
    }

    /// Userspace memory per idle held connection once settled, bytes: anonymous RSS
    /// growth at the end of the hold (fixed costs of the run included).
    fn idle_bytes_per_conn(&self) -> f64 {
        self.settled.anon.saturating_sub(self.before.anon) as f64 * 1024.0 / self.held()
    }

    /// Userspace memory per held connection: growth of the anonymous RSS.
    fn anon_per_conn(&self) -> f64 {
        self.peak.anon.saturating_sub(self.before.anon) as f64 / self.held()
    }

    fn kernel_per_conn(&self) -> f64 {
        self.peak.slab.saturating_sub(self.before.slab) as f64 / self.held()
    }

    /// Proxy CPU per unit of the scenario: µs per handshake / per echoed message, s per GB.
    fn cpu_per_unit(&self, s: Scenario) -> Option<f64> {
        let cpu = self.proxy_cpu?;
        let per = |n: f64| if n > 0.0 { Some(cpu / n) } else { None };
        match s {
            Scenario::Handshake => per(self.f("/counts/connected")).map(|x| x * 1e6),
            Scenario::Echo => per(self.f("/counts/received")).map(|x| x * 1e6),
            Scenario::Bulk => per(self.f("/counts/bytes_received") / 1e9),
            Scenario::Hold | Scenario::Scale => per(self.held()).map(|x| x * 1e6),
        }
    }
}

fn defaults(opts: &Options) -> (u64, f64) {
    let conns = opts.conns.unwrap_or(match opts.scenario {
        Scenario::Hold => 5000,
        Scenario::Echo => 1000,
        Scenario::Bulk => 8,
        Scenario::Handshake => 16,
        Scenario::Scale => 100_000,
    });
    let duration =
        opts.duration.unwrap_or(if matches!(opts.scenario, Scenario::Scale | Scenario::Echo) { 30.0 } else { 10.0 });
    (conns, duration)
}

/// Load processes needed so that none passes its open-files limit (one file per
/// client connection).
fn load_procs_for(conns: u64) -> u64 {
    conns.div_ceil(nofile_hard().saturating_sub(500).max(1000)).max(1)
}

fn nofile_hard() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(_, hard)| hard)
}

fn compare(opts: &Options, out: &Path, wsgate_built: bool) -> Result<()> {
    let (conns, duration) = defaults(opts);
    let scenario = opts.scenario;
    let (mut echo, echo_addr) = start_echo("127.0.0.1:0".parse()?, opts.echo_threads)?;
    let mut targets: Vec<(String, Option<String>)> = Vec::new();
    for t in &opts.targets {
        match t.as_str() {
            "direct" => targets.push(("direct".into(), None)),
            "nginx" => targets.push(("nginx".into(), None)),
            "wsgate" if !wsgate_built => eprintln!("bench: skipping wsgate (not built)"),
            "wsgate" => match wsgate_splice_modes()? {
                None => targets.push(("wsgate".into(), None)),
                Some(modes) if modes.is_empty() => targets.push(("wsgate".into(), None)),
                Some(modes) => {
                    for m in modes {
                        targets.push((format!("wsgate/{m}"), Some(m)));
                    }
                }
            },
            mode @ ("wsgate/sockmap" | "wsgate/userspace" | "wsgate/auto") if wsgate_built => {
                targets.push((mode.into(), mode.strip_prefix("wsgate/").map(str::to_string)));
            }
            other => bail!(
                "unknown target {other:?}: use direct, wsgate (each splice mode), wsgate/MODE (auto, sockmap, userspace), nginx"
            ),
        }
    }
    if !targets.iter().any(|(n, _)| n == "direct") {
        targets.insert(0, ("direct".into(), None));
    }
    let mut rounds: Vec<Vec<Row>> = Vec::new();
    for round in 1..=opts.rounds {
        let mut rows = Vec::new();
        for (name, splice) in &targets {
            echo.check_alive()?;
            let of = if opts.rounds > 1 { format!(", round {round} of {}", opts.rounds) } else { String::new() };
            eprintln!("bench: {} against {name} ({conns} connections, {duration} s{of}) …", scenario.name());
            let file = if opts.rounds > 1 { format!("{name}.r{round}") } else { name.clone() };
            match run_target(opts, out, name, &file, splice.as_deref(), echo_addr, conns, duration) {
                Ok(r) => rows.push(r),
                Err(e) => eprintln!("bench: {name} failed: {e:#}"),
            }
            // Let TIME_WAIT and slab settle between targets.
            std::thread::sleep(Duration::from_secs(1));
        }
        rounds.push(rows);
    }
    let rows = median_rounds(rounds);
    print_table(scenario, &rows, conns);
    let summary: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "target": r.name, "proxy_cpu_secs": r.proxy_cpu, "machine_busy_secs": r.machine_busy,
                "rss_kib_before": r.before.rss, "rss_kib_peak": r.peak.rss,
                "anon_kib_before": r.before.anon, "anon_kib_peak": r.peak.anon,
                "marginal_anon_bytes_per_conn": r.marginal_anon,
                "anon_kib_settled": r.settled.anon, "rss_kib_settled": r.settled.rss,
                "slab_kib_before": r.before.slab, "slab_kib_peak": r.peak.slab,
                "tcp_mem_kib_before": r.before.tcp, "tcp_mem_kib_peak": r.peak.tcp,
                "machine_us_per_op_above_direct_rounds_sorted": r.above_direct, "report": r.report,
            })
        })
        .collect();
    let path = out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json!({ "scenario": scenario.name(), "rows": summary }))?)?;
    println!("reports, plots and summary: {}", out.display());
    Ok(())
}

/// One row per target from several rounds: the round whose machine CPU above that
/// round's direct is the median (direct: its median machine CPU), carrying every
/// round's figure above direct. One round is returned as it is.
fn median_rounds(rounds: Vec<Vec<Row>>) -> Vec<Row> {
    let mut by_target: Vec<Vec<(f64, Row)>> = Vec::new();
    for rows in rounds {
        let direct = rows.iter().find(|r| r.name == "direct").and_then(Row::steady_machine_us_per_op);
        for row in rows {
            let mach = row.steady_machine_us_per_op();
            let key = match (row.name.as_str(), mach, direct) {
                ("direct", Some(m), _) => m,
                (_, Some(m), Some(d)) => m - d,
                _ => f64::INFINITY,
            };
            match by_target.iter_mut().find(|t| t[0].1.name == row.name) {
                Some(t) => t.push((key, row)),
                None => by_target.push(vec![(key, row)]),
            }
        }
    }
    by_target
        .into_iter()
        .map(|mut runs| {
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            // The median among rounds that have the figure (the upper one of an even
            // count); rounds without it (their direct failed) only when none has it.
            let finite = runs.iter().filter(|r| r.0.is_finite()).count();
            let at = if finite > 0 { finite / 2 } else { runs.len() / 2 };
            let above: Vec<f64> =
                if runs[0].1.name == "direct" { Vec::new() } else { runs[..finite].iter().map(|r| r.0).collect() };
            let mut row = runs.swap_remove(at).1;
            row.above_direct = above;
            row
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn run_target(
    opts: &Options,
    out: &Path,
    name: &str,
    file: &str,
    splice: Option<&str>,
    echo_addr: SocketAddr,
    conns: u64,
    duration: f64,
) -> Result<Row> {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let file = file.replace('/', "-");
    let tmp = out.join(format!("{file}-tmp"));
    let proxy = match name {
        "direct" => None,
        "nginx" => Some(start_nginx(&tmp, listen, echo_addr, opts.workers)?),
        _ => {
            let log = out.join(format!("{file}.log"));
            Some(start_wsgate(listen, &[echo_addr], opts.workers, splice, None, &log)?)
        }
    };
    let target = if proxy.is_some() { listen } else { echo_addr };
    let pids: Vec<u32> = proxy.iter().map(Proc::pid).collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = mem_now(&pids.iter().flat_map(|p| family(*p)).collect::<Vec<_>>());
    let cpu0 = cpu_secs(&pids.iter().flat_map(|p| family(*p)).collect::<Vec<_>>());
    let busy0 = wsbench::machine::busy_secs();
    let sampler = Sampler::start(pids.clone());
    let load = LoadArgs {
        scenario: opts.scenario.load(),
        targets: vec![target],
        sources: None,
        conns,
        duration,
        procs: load_procs_for(conns),
        report: out.join(format!("{file}.json")),
    };
    let report = run_load(opts, &load);
    let Sampled { peak, settled, marginal_anon } = sampler.finish();
    let proxy_cpu = proxy.as_ref().map(|_| cpu_secs(&pids.iter().flat_map(|p| family(*p)).collect::<Vec<_>>()) - cpu0);
    let machine_busy = wsbench::machine::busy_secs() - busy0;
    drop(proxy);
    Ok(Row {
        name: name.into(),
        report: report?,
        proxy_cpu,
        machine_busy,
        before,
        peak,
        settled,
        marginal_anon,
        above_direct: Vec::new(),
    })
}

/// The goal wsgate has for this scenario: (description, met?).
fn goal(s: Scenario, row: &Row, direct: Option<&Row>) -> Option<(String, bool)> {
    if !row.name.starts_with("wsgate") {
        return None;
    }
    let ratio = direct.map_or(0.0, |d| row.headline(s) / d.headline(s).max(1e-9));
    let cpu = row.cpu_per_unit(s).unwrap_or(f64::INFINITY);
    Some(match s {
        Scenario::Hold | Scenario::Scale => ("≤ 256 B/idle conn userspace".into(), row.idle_bytes_per_conn() <= 256.0),
        Scenario::Handshake => ("≥ 0.75× direct, ≤ 40 µs".into(), ratio >= 0.75 && cpu <= 40.0),
        Scenario::Echo => {
            // The whole machine's CPU per message above direct's, in the steady phase.
            let above = row.median_above_direct().unwrap_or(f64::INFINITY);
            ("≤ 8 µs/msg own, ≤ 15 µs/msg machine above direct".into(), cpu <= 8.0 && above <= 15.0)
        }
        Scenario::Bulk => ("≥ 0.8× direct, ≤ 0.6 s/GB".into(), ratio >= 0.8 && cpu <= 0.6),
    })
}

fn print_table(s: Scenario, rows: &[Row], conns: u64) {
    let direct = rows.iter().find(|r| r.name == "direct");
    let (headline, cpu_unit) = match s {
        Scenario::Hold | Scenario::Scale => ("verified", "CPU µs/conn"),
        Scenario::Echo => ("msg/s", "CPU µs/msg"),
        Scenario::Bulk => ("MB/s", "CPU s/GB"),
        Scenario::Handshake => ("hs/s", "CPU µs/hs"),
    };
    // Memory per connection means something only when connections are held.
    let held = matches!(s, Scenario::Hold | Scenario::Scale);
    println!();
    println!("bench {}: {conns} connections; proxy CPU from /proc/PID/stat, proxy RSS, kernel slab", s.name());
    println!(
        "{:<18} {:>6} {:>11} {:>7} {:>9} {:>9} {:>9} {:>11} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8}  goal",
        "target",
        "clean",
        headline,
        "ratio",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        cpu_unit,
        "idle B/c",
        if held { "anon KiB/c" } else { "anon MiB" },
        if held { "RSS KiB/c" } else { "RSS MiB" },
        if held { "slab KiB/c" } else { "slab MiB+" },
        "mach µs/op",
        "+direct",
    );
    for r in rows {
        let ratio = direct.map_or(f64::NAN, |d| r.headline(s) / d.headline(s).max(1e-9));
        let latency = if s == Scenario::Handshake { "/handshake_us" } else { "/latency_us" };
        let [p50, p99, p999] = ["p50", "p99", "p999"].map(|p| r.f(&format!("{latency}/{p}")));
        let cpu = r.cpu_per_unit(s).map_or_else(|| "-".into(), |c| format!("{c:.2}"));
        let (anon, rss) = match (r.proxy_cpu.is_some(), held) {
            (false, _) => ("-".into(), "-".into()),
            (true, true) => (format!("{:.2}", r.anon_per_conn()), format!("{:.2}", r.rss_per_conn())),
            (true, false) => {
                (format!("{:.1}", r.peak.anon as f64 / 1024.0), format!("{:.1}", r.peak.rss as f64 / 1024.0))
            }
        };
        let slab = if held {
            format!("{:.2}", r.kernel_per_conn())
        } else {
            format!("{:.1}", r.peak.slab.saturating_sub(r.before.slab) as f64 / 1024.0)
        };
        let clean = r.report.get("clean").and_then(Value::as_bool).unwrap_or(false);
        let goal =
            goal(s, r, direct).map_or_else(String::new, |(g, ok)| format!("{} {g}", if ok { "met" } else { "MISS" }));
        println!(
            "{:<18} {:>6} {:>11.1} {:>6.2}× {:>9.0} {:>9.0} {:>9.0} {:>11} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8}  {}",
            r.name,
            if clean { "yes" } else { "NO" },
            r.headline(s),
            ratio,
            p50,
            p99,
            p999,
            cpu,
            if held && r.proxy_cpu.is_some() { format!("{:.0}", r.idle_bytes_per_conn()) } else { "-".into() },
            anon,
            rss,
            slab,
            r.steady_machine_us_per_op().map_or_else(|| "-".into(), |m| format!("{m:.2}")),
            r.median_above_direct().map_or_else(|| "-".into(), |m| format!("{m:+.2}")),
            goal
        );
    }
    for r in rows.iter().filter(|r| r.above_direct.len() > 1) {
        let all: Vec<String> = r.above_direct.iter().map(|a| format!("{a:+.1}")).collect();
        println!("{}: machine µs/op above direct by round, sorted: {}", r.name, all.join(" "));
    }
    println!(
        "(ratio: headline ÷ direct's; idle: proxy anonymous RSS (heap: its userspace memory) per held connection at \
         the end of the hold, fixed costs included; anon, RSS: anonymous and all RSS at the peak (per held \
         connection in hold, including connections still in their handshake or first second); slab: kernel slab \
         growth, all sockets of the path; mach: the whole machine's CPU (user, system, irq, softirq; not steal) per \
         message or handshake in the steady phase (from 1.5 s after the ramp); +direct: mach minus the same \
         round's direct (median round with --rounds); latencies: handshake for hs, round trip otherwise; \
         nginx as in the recipe, access log on)"
    );
}

// ---------------------------------------------------------------------------------------
// The scale run.
// ---------------------------------------------------------------------------------------

/// The processes of a scale run and how they were laid out.
struct Layout {
    procs: Vec<Proc>,
    gate_pids: Vec<u32>,
    echo_addrs: Vec<SocketAddr>,
    echo_procs: usize,
    instances: u64,
    target: SocketAddr,
    sources: String,
    load_procs: u64,
    limit: u64,
    note: String,
}

/// Refuses a connection count the machine's memory cannot hold.
fn check_memory(conns: u64, through_wsgate: bool) -> Result<()> {
    // ~19 KiB kernel per proxied connection (four sockets), ~10 direct, plus userspace;
    // refuse what cannot fit rather than push the machine into the OOM killer.
    let per_conn_kib = if through_wsgate { 24 } else { 13 };
    let avail = meminfo_kib("MemAvailable");
    let fits = avail.saturating_sub(2 << 20) / per_conn_kib;
    if conns > fits {
        bail!(
            "{conns} connections need ~{} MiB but {} MiB are available (keeping 2 GiB free): try --conns {fits}",
            conns * per_conn_kib / 1024,
            avail / 1024
        );
    }
    Ok(())
}

/// Starts echo processes (several addresses, several processes per address on one port)
/// and wsgate instances, sized by the open-files limit and the ports of an address pair.
fn lay_out(opts: &Options, conns: u64, through_wsgate: bool, log: &Path) -> Result<Layout> {
    let limit = nofile_hard();
    let per_proc = limit.saturating_sub(500).max(1000);
    // Each loopback address pair has ~28k ephemeral ports: spread over addresses.
    let pairs = conns.div_ceil(25_000).max(1);
    let port = free_port()?;
    let mut procs = Vec::new();
    let mut echo_addrs = Vec::new();
    let echo_per_addr = conns.div_ceil(pairs).div_ceil(per_proc).max(1);
    for a in 0..pairs {
        let addr: SocketAddr = format!("127.0.0.{}:{port}", 10 + a).parse()?;
        for _ in 0..echo_per_addr {
            procs.push(start_echo(addr, opts.echo_threads)?.0);
        }
        echo_addrs.push(addr);
    }
    let echo_procs = procs.len();
    let mut gate_pids = Vec::new();
    let mut instances = 0;
    let target = if through_wsgate {
        let target: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        // 10% headroom: SO_REUSEPORT spreads connections by hash, not evenly, and an
        // instance at its --max-connections answers 503.
        instances = (2 * conns + conns / 5).div_ceil(per_proc).max(1);
        for _ in 0..instances {
            // Each instance is sized (kernel maps, preflight) for its share of the
            // connections; two open files per proxied connection.
            let p = start_wsgate(target, &echo_addrs, opts.workers, None, Some(per_proc / 2), log)?;
            gate_pids.push(p.pid());
            procs.push(p);
        }
        target
    } else {
        echo_addrs[0]
    };
    let note = if through_wsgate && instances > 1 {
        format!(
            "{instances} wsgate instances share {target} through SO_REUSEPORT because the open-files hard limit is {limit} \
             (one tuned process would hold them all on an edge node)"
        )
    } else {
        format!("open-files hard limit {limit}")
    };
    Ok(Layout {
        procs,
        gate_pids,
        echo_addrs,
        echo_procs,
        instances,
        target,
        sources: format!("127.0.1.1-127.0.1.{}", pairs.min(250)),
        load_procs: conns.div_ceil(per_proc).max(1),
        limit,
        note,
    })
}

fn scale(opts: &Options, out: &Path, wsgate_built: bool) -> Result<()> {
    let (conns, duration) = defaults(opts);
    let through_wsgate = opts.targets.iter().any(|t| t == "wsgate");
    if through_wsgate && !wsgate_built {
        bail!("the scale run needs wsgate, which did not build (or use --targets direct)");
    }
    check_memory(conns, through_wsgate)?;
    let mut lay = lay_out(opts, conns, through_wsgate, &out.join("wsgate.log"))?;
    eprintln!(
        "bench scale: {conns} connections → {} ({}); {} echo processes on {} addresses, {} load processes from {}",
        if through_wsgate { "wsgate" } else { "echo directly" },
        lay.note,
        lay.echo_procs,
        lay.echo_addrs.len(),
        lay.load_procs,
        lay.sources
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = mem_now(&lay.gate_pids);
    let cpu0 = cpu_secs(&lay.gate_pids);
    let sampler = Sampler::start(lay.gate_pids.clone());
    let load = LoadArgs {
        scenario: LoadScenario::Hold,
        targets: if through_wsgate { vec![lay.target] } else { lay.echo_addrs.clone() },
        sources: Some(lay.sources.clone()),
        conns,
        duration,
        procs: lay.load_procs,
        report: out.join("scale.json"),
    };
    let report = run_load(opts, &load);
    let Sampled { peak, settled, marginal_anon } = sampler.finish();
    let cpu = cpu_secs(&lay.gate_pids) - cpu0;
    drop(std::mem::take(&mut lay.procs));
    let row = Row {
        name: if through_wsgate { "wsgate".into() } else { "direct".into() },
        report: report?,
        proxy_cpu: through_wsgate.then_some(cpu),
        machine_busy: 0.0,
        before,
        peak,
        settled,
        marginal_anon,
        above_direct: Vec::new(),
    };
    report_scale(&row, &lay, conns, through_wsgate, out)
}

/// Prints and writes the outcome of a scale run.
fn report_scale(row: &Row, lay: &Layout, conns: u64, through_wsgate: bool, out: &Path) -> Result<()> {
    let (before, peak) = (row.before, row.peak);
    let held = row.report.get("peak_open").and_then(Value::as_u64).unwrap_or(0);
    let verified = row.report.pointer("/counts/verified").and_then(Value::as_u64).unwrap_or(0);
    let ramp = row.report.get("ramp_secs").and_then(Value::as_f64);
    println!();
    println!("bench scale: {conns} connections planned, {held} held, {verified} verified after the hold");
    let ramp_text =
        ramp.map_or_else(|| "did not finish".into(), |r| format!("{r:.1} s ({:.0} conn/s)", held as f64 / r));
    println!("  ramp          {ramp_text}");
    if through_wsgate {
        let idle = row.idle_bytes_per_conn();
        println!(
            "  wsgate memory {idle:.0} B userspace (anonymous RSS) per held connection at the end of the hold, every \
             instance's fixed costs included ({} goal ≤ 256 B); {:.0} B per connection added over the ramp; {:.3} KiB \
             RSS per connection at the peak",
            if idle <= 256.0 { "met" } else { "MISS" },
            row.marginal_anon.unwrap_or(f64::NAN),
            row.rss_per_conn()
        );
    }
    println!(
        "  kernel        {:.2} KiB slab per connection (all sockets), TCP memory {:.2} KiB per connection",
        row.kernel_per_conn(),
        peak.tcp.saturating_sub(before.tcp) as f64 / held.max(1) as f64
    );
    println!("  MemAvailable  {} MiB at the peak", peak.available / 1024);
    println!("  clean         {}", row.report.get("clean").and_then(Value::as_bool).unwrap_or(false));
    println!("  note          {}", lay.note);
    let summary = json!({
        "scenario": "scale", "conns": conns, "held": held, "verified": verified, "ramp_secs": ramp,
        "through_wsgate": through_wsgate, "wsgate_instances": lay.instances, "echo_processes": lay.echo_procs,
        "load_processes": lay.load_procs, "nofile_hard_limit": lay.limit, "note": lay.note,
        "wsgate_rss_kib_per_conn": through_wsgate.then(|| row.rss_per_conn()),
        "wsgate_anon_kib_per_conn": through_wsgate.then(|| row.anon_per_conn()),
        "wsgate_marginal_anon_bytes_per_conn": through_wsgate.then_some(row.marginal_anon).flatten(),
        "wsgate_idle_anon_bytes_per_conn": through_wsgate.then(|| row.idle_bytes_per_conn()),
        "slab_kib_per_conn": row.kernel_per_conn(), "mem_available_kib_at_peak": peak.available,
        "report": row.report,
    });
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("reports, plots and summary: {}", out.display());
    Ok(())
}
