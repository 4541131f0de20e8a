//! `cargo xtask bench hold|echo|bulk|handshake`: one upstream, every target in turn
//! (direct first, the baseline), interleaved rounds, one table with ratios to direct.
//!
//! It never compares figures from different rounds' baselines, and a target that fails
//! is reported and left out, never given a made-up row.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::haproxy::start_haproxy;
use super::load::{LoadArgs, run_load};
use super::nginx::start_nginx;
use super::paired::{Figures, Paired, paired, print_paired};
use super::procfs::{cpu_secs, family, mem_now};
use super::procs::{Proc, SPLICE_MODES, free_port, load_procs_for, start_echo, start_wsgate, wsgate_bin};
use super::row::Row;
use super::sampler::{Sampled, Sampler};
use super::table::print_table;
use super::tls::TlsFiles;
use super::{Options, defaults};

pub(super) fn run(opts: &Options, out: &Path, wsgate_built: bool) -> Result<()> {
    let (conns, duration) = defaults(opts);
    let scenario = opts.scenario;
    let (mut echo, echo_addr) = start_echo("127.0.0.1:0".parse()?, opts.echo_threads)?;
    let tls = if opts.tls { Some(TlsFiles::make(out, &opts.tls_cipher)?) } else { None };
    let targets = if opts.tls { tls_targets(&opts.targets, wsgate_built)? } else { targets(opts, wsgate_built)? };
    let mut rounds: Vec<Vec<Row>> = Vec::new();
    for round in 1..=opts.rounds {
        let mut rows = Vec::new();
        for (name, splice) in &targets {
            echo.check_alive()?;
            let of = if opts.rounds > 1 { format!(", round {round} of {}", opts.rounds) } else { String::new() };
            eprintln!("bench: {} against {name} ({conns} connections, {duration} s{of}) …", scenario.name());
            let file = if opts.rounds > 1 { format!("{name}.r{round}") } else { name.clone() };
            let t =
                Target { name, file: &file, splice: splice.as_deref(), tls: tls.as_ref().filter(|_| name != "direct") };
            match run_target(opts, out, &t, echo_addr, conns, duration) {
                Ok(r) => rows.push(r),
                Err(e) => eprintln!("bench: {name} failed: {e:#}"),
            }
            // Let TIME_WAIT and slab settle between targets.
            std::thread::sleep(Duration::from_secs(1));
        }
        rounds.push(rows);
    }
    let figures: Vec<Vec<Figures<'_>>> =
        rounds.iter().map(|rows| rows.iter().map(|r| Figures::of(scenario.load(), r)).collect()).collect();
    let paired = paired(&figures);
    drop(figures);
    let rows = median_rounds(rounds);
    print_table(scenario.load(), &rows, conns, tls.as_ref().map(TlsFiles::describe).as_deref());
    print_paired(scenario.load(), &paired);
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
    let tls = tls.as_ref().map(TlsFiles::describe);
    let paired: Vec<Value> = paired.iter().map(Paired::to_json).collect();
    let doc = json!({ "scenario": scenario.name(), "tls": tls, "rows": summary, "paired": paired });
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    println!("reports, plots and summary: {}", out.display());
    Ok(())
}

/// The targets of a TLS run: `direct` (the plain echo, always first), `wsgate/tls` (its
/// userspace relay: TLS pairs are never spliced), `nginx/tls`, `haproxy/tls`.
fn tls_targets(names: &[String], wsgate_built: bool) -> Result<Vec<(String, Option<String>)>> {
    let mut targets = vec![("direct".to_string(), None)];
    for t in names {
        match t.as_str() {
            "direct" => {}
            "wsgate" | "wsgate/tls" | "wsgate/userspace" if !wsgate_built => {
                eprintln!("bench: skipping wsgate (not built)");
            }
            "wsgate" | "wsgate/tls" | "wsgate/userspace" => {
                targets.push(("wsgate/tls".into(), Some("userspace".into())));
            }
            "nginx" | "nginx/tls" => targets.push(("nginx/tls".into(), None)),
            "haproxy" | "haproxy/tls" => targets.push(("haproxy/tls".into(), None)),
            other => bail!("unknown target {other:?} with --tls: use direct, wsgate, nginx, haproxy"),
        }
    }
    Ok(targets)
}

/// The targets of a plain run, in the order asked, `direct` first if missing.
fn targets(opts: &Options, wsgate_built: bool) -> Result<Vec<(String, Option<String>)>> {
    let mut targets: Vec<(String, Option<String>)> = Vec::new();
    for t in &opts.targets {
        match t.as_str() {
            "direct" => targets.push(("direct".into(), None)),
            "nginx" => targets.push(("nginx".into(), None)),
            "haproxy" => targets.push(("haproxy".into(), None)),
            "wsgate" if !wsgate_built => eprintln!("bench: skipping wsgate (not built)"),
            "wsgate" => {
                for m in SPLICE_MODES {
                    targets.push((format!("wsgate/{m}"), Some(m.to_string())));
                }
            }
            mode @ ("wsgate/sockmap" | "wsgate/userspace" | "wsgate/auto") if wsgate_built => {
                targets.push((mode.into(), mode.strip_prefix("wsgate/").map(str::to_string)));
            }
            // The same with the admin plane on (its cost on the data plane).
            mode @ ("wsgate/sockmap+admin" | "wsgate/userspace+admin" | "wsgate/auto+admin") if wsgate_built => {
                targets.push((mode.into(), mode.strip_prefix("wsgate/").map(str::to_string)));
            }
            // The same relay in another build (`--baseline-bin`).
            mode @ ("baseline/sockmap" | "baseline/userspace" | "baseline/auto") => {
                if opts.baseline_bin.is_none() {
                    bail!("target {mode} needs --baseline-bin PATH (the wsgate binary to compare with)");
                }
                targets.push((mode.into(), mode.strip_prefix("baseline/").map(str::to_string)));
            }
            other => bail!(
                "unknown target {other:?}: use direct, wsgate (each splice mode), wsgate/MODE (auto, sockmap, userspace; MODE+admin with the admin plane on), baseline/MODE (with --baseline-bin), nginx, haproxy"
            ),
        }
    }
    if !targets.iter().any(|(n, _)| n == "direct") {
        targets.insert(0, ("direct".into(), None));
    }
    Ok(targets)
}

/// One row per target from several rounds: the round whose machine CPU above that
/// round's direct is the median (direct: its median machine CPU), carrying every
/// round's figure above direct. One round is returned as it is.
pub(super) fn median_rounds(rounds: Vec<Vec<Row>>) -> Vec<Row> {
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

/// One target of one round.
pub(super) struct Target<'a> {
    /// Its row's name.
    pub(super) name: &'a str,
    /// The stem of its report files.
    pub(super) file: &'a str,
    /// wsgate's `--splice` mode.
    pub(super) splice: Option<&'a str>,
    /// The proxy terminates TLS with these files, and the load connects with TLS.
    pub(super) tls: Option<&'a TlsFiles>,
}

pub(super) fn run_target(
    opts: &Options,
    out: &Path,
    t: &Target<'_>,
    echo_addr: SocketAddr,
    conns: u64,
    duration: f64,
) -> Result<Row> {
    let Target { name, file, splice, tls } = *t;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let file = file.replace('/', "-");
    let tmp = out.join(format!("{file}-tmp"));
    let proxy = match name {
        "direct" => None,
        "nginx" | "nginx/tls" => Some(start_nginx(&tmp, listen, echo_addr, opts.workers, tls)?),
        "haproxy" | "haproxy/tls" => Some(start_haproxy(&tmp, listen, echo_addr, opts.workers, tls)?),
        _ => {
            let log = out.join(format!("{file}.log"));
            let bin = match &opts.baseline_bin {
                Some(b) if name.starts_with("baseline/") => b.clone(),
                _ => wsgate_bin(),
            };
            Some(start_wsgate(&bin, listen, &[echo_addr], opts.workers, splice, None, tls, &log)?)
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
        progress: false,
        extra: tls.map(TlsFiles::load_args).unwrap_or_default(),
    };
    let report = run_load(opts, &load).map(|(r, _)| r);
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
