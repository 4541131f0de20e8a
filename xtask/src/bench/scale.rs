//! `cargo xtask bench scale --conns N`: the many-connection hold, spread over several
//! wsgate, echo and load processes when the open-files limit requires it.
//!
//! It refuses a count the machine's memory cannot hold rather than push the machine
//! into the OOM killer, and it never leaves a process it started behind.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::json;

use wsbench::load::Scenario as LoadScenario;

use super::load::{LoadArgs, run_load};
use super::procfs::{cpu_secs, mem_now, meminfo_kib};
use super::procs::{Proc, free_port, nofile_hard, start_echo, start_wsgate, wsgate_bin};
use super::row::Row;
use super::sampler::{Sampled, Sampler};
use super::sides::{self, Cost};
use super::{Options, defaults};

/// The processes of a scale run and how they were laid out.
pub(super) struct Layout {
    pub(super) procs: Vec<Proc>,
    pub(super) gate_pids: Vec<u32>,
    pub(super) echo_addrs: Vec<SocketAddr>,
    pub(super) echo_procs: usize,
    pub(super) instances: u64,
    pub(super) target: SocketAddr,
    pub(super) sources: String,
    pub(super) load_procs: u64,
    pub(super) limit: u64,
    pub(super) note: String,
}

/// Refuses a connection count the machine's memory cannot hold.
pub(super) fn check_memory(conns: u64, through_wsgate: bool) -> Result<()> {
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
pub(super) fn lay_out(opts: &Options, conns: u64, through_wsgate: bool, log: &Path) -> Result<Layout> {
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
            let p =
                start_wsgate(&wsgate_bin(), target, &echo_addrs, opts.workers, None, Some(per_proc / 2), None, log)?;
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

/// Says when heartbeats come no more often than the keepalive idle time (wsgate turns
/// TCP keepalive on for both its sockets): idle connections are then probed, and the
/// probes of the connections opened in the same second fire in the same timer tick. On
/// loopback each probe and its answer queue in the per-CPU backlog, which drops what
/// exceeds `net.core.netdev_max_backlog` (a global knob, 1000 by default, that a run in
/// its own namespace leaves alone); a connection whose probes are all dropped is reset.
fn warn_probes(heartbeat: f64) {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let (Some(idle), Some(backlog)) =
        (read("/proc/sys/net/ipv4/tcp_keepalive_time"), read("/proc/sys/net/core/netdev_max_backlog"))
    else {
        return;
    };
    let knob = tuning::profile::load(&tuning::shipped_profiles_dir(), "edge-1m")
        .ok()
        .and_then(|p| p.knobs.into_iter().find(|k| k.name == BACKLOG));
    if let Some(warning) = probe_warning(heartbeat, &idle, &backlog, knob.as_ref()) {
        eprintln!("bench scale: WARNING: {warning}");
    }
}

/// The per-CPU backlog's sysctl, which `edge-1m` raises.
const BACKLOG: &str = "net.core.netdev_max_backlog";

/// [`warn_probes`]'s judgement: `idle` and `backlog` are the sysctls' text, `knob` the
/// `edge-1m` profile's backlog knob (its want is the backlog a burst of probes needs).
fn probe_warning(heartbeat: f64, idle: &str, backlog: &str, knob: Option<&tuning::Knob>) -> Option<String> {
    let idle = idle.trim().parse::<f64>().ok()?;
    let actual = tuning::Actual::parse(backlog.trim()).ok()?;
    let knob = knob?;
    if heartbeat < idle || knob.compare.satisfied(&knob.want, &actual) {
        return None;
    }
    Some(format!(
        "--heartbeat {heartbeat} s is not shorter than the keepalive idle time ({idle} s): wsgate will probe idle \
         connections, the probes of connections opened together fire together, and the loopback backlog \
         ({BACKLOG} = {}; the edge-1m profile wants {}) drops a burst past it; connections whose probes are all \
         lost are reset. Use a heartbeat below {idle} s, or raise the backlog (`cargo xtask tune apply edge-1m`, \
         then revert).",
        backlog.trim(),
        knob.compare.describe(&knob.want),
    ))
}

pub(super) fn run(opts: &Options, out: &Path, wsgate_built: bool) -> Result<()> {
    let (conns, duration) = defaults(opts);
    let through_wsgate = opts.targets.iter().any(|t| t == "wsgate");
    if through_wsgate && !wsgate_built {
        bail!("the scale run needs wsgate, which did not build (or use --targets direct)");
    }
    check_memory(conns, through_wsgate)?;
    if through_wsgate {
        warn_probes(opts.heartbeat);
    }
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
    let echo_pids: Vec<u32> = lay.procs[..lay.echo_procs].iter().map(Proc::pid).collect();
    let sides_before = sides::before(&echo_pids);
    let echo_sampler = Sampler::start(echo_pids.clone());
    let load = LoadArgs {
        scenario: LoadScenario::Hold,
        targets: if through_wsgate { vec![lay.target] } else { lay.echo_addrs.clone() },
        sources: Some(lay.sources.clone()),
        conns,
        duration,
        procs: lay.load_procs,
        report: out.join("scale.json"),
        progress: true,
        extra: Vec::new(),
    };
    let (report, load_anon_kib) = match run_load(opts, &load) {
        Ok((r, anon)) => (Ok(r), anon),
        Err(e) => (Err(e), 0),
    };
    let Sampled { peak, settled, marginal_anon } = sampler.finish();
    let cpu = cpu_secs(&lay.gate_pids) - cpu0;
    let sides = sides::after(sides_before, &echo_pids, echo_sampler.finish().peak.anon, load_anon_kib);
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
    report_scale(&row, &lay, &sides, conns, through_wsgate, out)
}

/// wsgate's userspace memory per held connection, judged against the goal (≤ 256 B) by
/// the growth of its anonymous memory over the ramp per connection added: a figure that
/// the instances' fixed costs do not blur. (With ~100 instances, the memory each touches
/// at start and returns once settled can exceed all the connections add; the settled
/// total then reads below the start, and says nothing per connection.)
fn wsgate_memory(row: &Row) -> String {
    let idle = row.idle_bytes_per_conn();
    let settled = if row.settled.anon > row.before.anon {
        format!("{idle:.0} B per held connection at the end of the hold, every instance's fixed costs included")
    } else {
        "the settled total is below the instances' start-up memory, so it gives no figure per connection".into()
    };
    let peak = row.peak_rss_kib_per_conn().map_or_else(
        || "the peak RSS is not above the instances' start-up RSS, so it gives no figure per connection".into(),
        |kib| format!("{kib:.3} KiB RSS per connection at the peak"),
    );
    match row.marginal_anon {
        Some(m) => format!(
            "{m:.0} B userspace (anonymous RSS) per connection added over the ramp ({} goal ≤ 256 B); {settled}; {peak}",
            if m <= 256.0 { "met" } else { "MISS" },
        ),
        None => format!("no growth figure (too few samples over the ramp); {settled}; {peak}"),
    }
}

/// Prints and writes the outcome of a scale run.
pub(super) fn report_scale(
    row: &Row,
    lay: &Layout,
    sides: &Cost,
    conns: u64,
    through_wsgate: bool,
    out: &Path,
) -> Result<()> {
    let (before, peak) = (row.before, row.peak);
    let held = row.report.peak_open;
    let verified = row.report.counts.verified;
    let ramp = row.report.ramp_secs;
    println!();
    println!("bench scale: {conns} connections planned, {held} held, {verified} verified after the hold");
    let ramp_text =
        ramp.map_or_else(|| "did not finish".into(), |r| format!("{r:.1} s ({:.0} conn/s)", held as f64 / r));
    let r = &row.report.ramp;
    let control = if r.adaptive {
        format!(
            "closed loop up to --rate: peak {:.0} conn/s, {:.0} conn/s at the end, {} back-offs",
            r.peak_rate, r.final_rate, r.backoffs
        )
    } else {
        "fixed rate".into()
    };
    println!("  ramp          {ramp_text}; {control}");
    if let Some(stop) = &r.stopped {
        println!(
            "  STOPPED EARLY {}: {} (at {:.1} s, {held} of {conns} held)",
            stop.limit.name(),
            stop.detail,
            stop.at_secs
        );
    }
    if through_wsgate {
        println!("  wsgate memory {}", wsgate_memory(row));
    }
    println!(
        "  kernel        {:.2} KiB slab per connection (all sockets), TCP memory {:.2} KiB per connection",
        row.kernel_per_conn(),
        peak.tcp.saturating_sub(before.tcp) as f64 / held.max(1) as f64
    );
    let c = &row.report.counts;
    // What the echo and the client do in a hold: handshakes, heartbeats, one echo each.
    let ops = (c.connected + c.pings + c.sent).max(1) as f64;
    println!(
        "  client        {:.1} s CPU, {:.1} µs per operation ({} handshakes, {} heartbeats, {} echoes); {:.2} KiB \
         anonymous RSS per held connection ({} processes, fixed costs included)",
        sides.load_cpu,
        sides.load_cpu / ops * 1e6,
        c.connected,
        c.pings,
        c.sent,
        sides.load_anon_kib as f64 / held.max(1) as f64,
        lay.load_procs
    );
    println!(
        "  echo          {:.1} s CPU, {:.1} µs per operation; {:.2} KiB anonymous RSS per held connection",
        sides.echo_cpu,
        sides.echo_cpu / ops * 1e6,
        sides.echo_anon_kib as f64 / held.max(1) as f64
    );
    println!("  MemAvailable  {} MiB at the peak", peak.available / 1024);
    println!(
        "  clean         {} (failed connections {}, lost {}, mismatched {}, closed early {}, pongs missing {})",
        row.report.clean,
        c.connect_failed + c.handshake_failed,
        c.lost,
        c.mismatched,
        c.closed_early,
        c.pongs_missing
    );
    println!("  note          {}", lay.note);
    let summary = json!({
        "scenario": "scale", "conns": conns, "held": held, "verified": verified, "ramp_secs": ramp,
        "through_wsgate": through_wsgate, "wsgate_instances": lay.instances, "echo_processes": lay.echo_procs,
        "load_processes": lay.load_procs, "nofile_hard_limit": lay.limit, "note": lay.note,
        "wsgate_rss_kib_per_conn": through_wsgate.then(|| row.peak_rss_kib_per_conn()).flatten(),
        "wsgate_anon_kib_per_conn": through_wsgate.then(|| row.anon_per_conn()),
        "wsgate_marginal_anon_bytes_per_conn": through_wsgate.then_some(row.marginal_anon).flatten(),
        "wsgate_idle_anon_bytes_per_conn": through_wsgate.then(|| row.idle_bytes_per_conn()),
        "slab_kib_per_conn": row.kernel_per_conn(), "mem_available_kib_at_peak": peak.available,
        "client_cpu_secs": sides.load_cpu, "client_anon_kib_peak": sides.load_anon_kib,
        "echo_cpu_secs": sides.echo_cpu, "echo_anon_kib_growth": sides.echo_anon_kib,
        "client_and_echo_operations": ops,
        "report": row.report,
    });
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("reports, plots and summary: {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_backlog_knob() -> tuning::Knob {
        let profile = tuning::profile::load(&tuning::shipped_profiles_dir(), "edge-1m").expect("edge-1m loads");
        profile.knobs.into_iter().find(|k| k.name == BACKLOG).expect("edge-1m sets the backlog")
    }

    #[test]
    fn probes_are_warned_of_when_the_heartbeat_outlasts_keepalive_and_the_backlog_is_small() {
        let knob = shipped_backlog_knob();
        let warning = probe_warning(300.0, "120\n", "1000\n", Some(&knob)).expect("a warning");
        assert!(warning.contains("--heartbeat 300 s"), "{warning}");
        assert!(warning.contains(&format!("{BACKLOG} = 1000; the edge-1m profile wants >= 16384")), "{warning}");
        // As long as the idle time exactly: the first probe goes out with the heartbeat.
        assert!(probe_warning(120.0, "120", "1000", Some(&knob)).is_some());
    }

    #[test]
    fn no_probe_warning_with_a_short_heartbeat_a_tuned_backlog_or_nothing_to_judge_by() {
        let knob = shipped_backlog_knob();
        assert_eq!(probe_warning(100.0, "120", "1000", Some(&knob)), None);
        assert_eq!(probe_warning(300.0, "120", "16384", Some(&knob)), None);
        assert_eq!(probe_warning(300.0, "120", "1000", None), None);
        assert_eq!(probe_warning(300.0, "garbage", "1000", Some(&knob)), None);
    }
}
