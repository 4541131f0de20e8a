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

use super::load::{LoadArgs, run_load};
use super::nginx::start_nginx;
use super::procfs::{cpu_secs, family, mem_now};
use super::procs::{Proc, SPLICE_MODES, free_port, load_procs_for, start_echo, start_wsgate, wsgate_bin};
use super::row::Row;
use super::sampler::{Sampled, Sampler};
use super::table::print_table;
use super::{Options, defaults};

pub(super) fn run(opts: &Options, out: &Path, wsgate_built: bool) -> Result<()> {
    let (conns, duration) = defaults(opts);
    let scenario = opts.scenario;
    let (mut echo, echo_addr) = start_echo("127.0.0.1:0".parse()?, opts.echo_threads)?;
    let mut targets: Vec<(String, Option<String>)> = Vec::new();
    for t in &opts.targets {
        match t.as_str() {
            "direct" => targets.push(("direct".into(), None)),
            "nginx" => targets.push(("nginx".into(), None)),
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
                "unknown target {other:?}: use direct, wsgate (each splice mode), wsgate/MODE (auto, sockmap, userspace; MODE+admin with the admin plane on), baseline/MODE (with --baseline-bin), nginx"
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
    print_table(scenario.load(), &rows, conns);
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

#[allow(clippy::too_many_arguments)]
pub(super) fn run_target(
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
            let bin = match &opts.baseline_bin {
                Some(b) if name.starts_with("baseline/") => b.clone(),
                _ => wsgate_bin(),
            };
            Some(start_wsgate(&bin, listen, &[echo_addr], opts.workers, splice, None, &log)?)
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
