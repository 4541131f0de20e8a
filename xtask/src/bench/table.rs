//! The comparison table on the terminal, with each scenario's goal for wsgate.
//!
//! It never hides a miss: a goal wsgate does not meet is printed as MISS.

use super::row::Row;
use wsbench::load::Scenario;

/// The goal of a wsgate TLS row: ahead of nginx over TLS on the scenario's figures.
fn tls_goal(s: Scenario, row: &Row, nginx: &Row) -> (String, bool) {
    let cpu = row.cpu_per_unit(s).unwrap_or(f64::INFINITY) <= nginx.cpu_per_unit(s).unwrap_or(0.0);
    match s {
        Scenario::Echo => (
            "≤ nginx CPU/msg and p50, p99".into(),
            cpu && row.report.latency_us.p50 <= nginx.report.latency_us.p50
                && row.report.latency_us.p99 <= nginx.report.latency_us.p99,
        ),
        _ => ("≥ nginx rate, ≤ nginx CPU".into(), cpu && row.headline(s) >= nginx.headline(s)),
    }
}

/// The goal wsgate has for this scenario: (description, met?).
fn goal(s: Scenario, row: &Row, direct: Option<&Row>, nginx: Option<&Row>) -> Option<(String, bool)> {
    if !row.name.starts_with("wsgate") {
        return None;
    }
    if row.name.ends_with("/tls") {
        return nginx.map(|n| tls_goal(s, row, n));
    }
    let ratio = direct.map_or(0.0, |d| row.headline(s) / d.headline(s).max(1e-9));
    let cpu = row.cpu_per_unit(s).unwrap_or(f64::INFINITY);
    Some(match s {
        Scenario::Hold => ("≤ 256 B/idle conn userspace".into(), row.idle_bytes_per_conn() <= 256.0),
        Scenario::Handshake => ("≥ 0.75× direct, ≤ 40 µs".into(), ratio >= 0.75 && cpu <= 40.0),
        Scenario::Echo => {
            // The whole machine's CPU per message above direct's, in the steady phase.
            let above = row.median_above_direct().unwrap_or(f64::INFINITY);
            ("≤ 8 µs/msg own, ≤ 15 µs/msg machine above direct".into(), cpu <= 8.0 && above <= 15.0)
        }
        Scenario::Bulk => ("≥ 0.8× direct, ≤ 0.6 s/GB".into(), ratio >= 0.8 && cpu <= 0.6),
    })
}

/// Prints the table; `tls` describes the TLS of the `/tls` targets (a TLS run).
pub(super) fn print_table(s: Scenario, rows: &[Row], conns: u64, tls: Option<&str>) {
    let direct = rows.iter().find(|r| r.name == "direct");
    let nginx = rows.iter().find(|r| r.name.starts_with("nginx"));
    let (headline, cpu_unit) = match s {
        Scenario::Hold => ("verified", "CPU µs/conn"),
        Scenario::Echo => ("msg/s", "CPU µs/msg"),
        Scenario::Bulk => ("MB/s", "CPU s/GB"),
        Scenario::Handshake => ("hs/s", "CPU µs/hs"),
    };
    // Memory per connection means something only when connections are held.
    let held = matches!(s, Scenario::Hold);
    println!();
    println!("bench {}: {conns} connections; proxy CPU from /proc/PID/stat, proxy RSS, kernel slab", s.name());
    if let Some(t) = tls {
        let terminators: Vec<&str> = rows.iter().map(|r| r.name.as_str()).filter(|n| n.ends_with("/tls")).collect();
        println!("TLS: {} terminate TLS ({t}); direct is the plain echo, without TLS", terminators.join(", "));
    }
    println!(
        "{:<18} {:>6} {:>11} {:>7} {:>7} {:>9} {:>9} {:>9} {:>11} {:>7} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8}  goal",
        "target",
        "clean",
        headline,
        "ratio",
        "×nginx",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        cpu_unit,
        "×nginx",
        "idle B/c",
        if held { "anon KiB/c" } else { "anon MiB" },
        if held { "RSS KiB/c" } else { "RSS MiB" },
        if held { "slab KiB/c" } else { "slab MiB+" },
        "mach µs/op",
        "+direct",
    );
    for r in rows {
        let ratio = direct.map_or(f64::NAN, |d| r.headline(s) / d.headline(s).max(1e-9));
        let (vs_nginx, cpu_vs_nginx) = versus(s, r, nginx);
        let latency = if s == Scenario::Handshake { &r.report.handshake_us } else { &r.report.latency_us };
        let [p50, p99, p999] = [latency.p50, latency.p99, latency.p999];
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
        let clean = r.report.clean;
        let goal = goal(s, r, direct, nginx)
            .map_or_else(String::new, |(g, ok)| format!("{} {g}", if ok { "met" } else { "MISS" }));
        println!(
            "{:<18} {:>6} {:>11.1} {:>6.2}× {:>7} {:>9.0} {:>9.0} {:>9.0} {:>11} {:>7} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8}  {}",
            r.name,
            if clean { "yes" } else { "NO" },
            r.headline(s),
            ratio,
            vs_nginx,
            p50,
            p99,
            p999,
            cpu,
            cpu_vs_nginx,
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
         round's direct (median round with --rounds); ×nginx: headline and proxy CPU per unit ÷ nginx's, of \
         the median rows (with --rounds, the paired lines below divide within each round: the steadier figure); \
         latencies: handshake for hs, round trip otherwise; nginx as in the recipe, access log on; haproxy in http \
         mode with the recipe's timeouts, a log line per connection)"
    );
}

/// A row's headline and proxy CPU per unit as multiples of nginx's ("-" without nginx).
fn versus(s: Scenario, r: &Row, nginx: Option<&Row>) -> (String, String) {
    let Some(ngx) = nginx else { return ("-".into(), "-".into()) };
    let head = format!("{:.2}×", r.headline(s) / ngx.headline(s).max(1e-9));
    let cpu = match (r.cpu_per_unit(s), ngx.cpu_per_unit(s)) {
        (Some(mine), Some(theirs)) if theirs > 0.0 => format!("{:.2}×", mine / theirs),
        _ => "-".into(),
    };
    (head, cpu)
}
