//! Hand-written SVG plots: connections over time (open and failed), the round-trip and
//! handshake latency distributions by percentile (log scale: 0 … 99.9999 %), and the
//! machine's memory per open connection over time.
//!
//! Output is plain SVG 1.1 with no scripts and no external references, valid XML with all
//! text escaped, so any browser or viewer shows it.

use std::fmt::Write as _;

use super::Report;

const W: f64 = 800.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A frame with title and axis labels; returns the SVG up to the plot contents.
fn frame(title: &str, xlabel: &str, ylabel: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>
<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>
<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="black"/>
"#,
        W / 2.0,
        esc(title),
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 15.0,
        esc(xlabel),
        TOP + (H - TOP - BOTTOM) / 2.0,
        TOP + (H - TOP - BOTTOM) / 2.0,
        esc(ylabel),
        W - LEFT - RIGHT,
        H - TOP - BOTTOM,
    );
    s
}

/// A value scaled into the plot area: x in [0, 1] → px.
fn px(fx: f64, fy: f64) -> (f64, f64) {
    (LEFT + fx.clamp(0.0, 1.0) * (W - LEFT - RIGHT), H - BOTTOM - fy.clamp(0.0, 1.0) * (H - TOP - BOTTOM))
}

/// A "nice" upper bound ≥ v for an axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn y_ticks(s: &mut String, ymax: f64, unit: &str) {
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (_, y) = px(0.0, f);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_num(ymax * f),
            esc(unit)
        );
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn polyline(s: &mut String, points: &[(f64, f64)], color: &str, label: &str, legend_row: usize) {
    let pts: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, pts.join(" "));
    let ly = TOP + 16.0 + 16.0 * legend_row as f64;
    let _ = writeln!(
        s,
        r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
        LEFT + 12.0,
        LEFT + 36.0,
        LEFT + 42.0,
        ly + 4.0,
        esc(label)
    );
}

/// The targets for a title (the first two, then a count).
fn targets(rep: &Report) -> String {
    match rep.targets.as_slice() {
        [a] => a.clone(),
        [a, b] => format!("{a}, {b}"),
        [a, b, rest @ ..] => format!("{a}, {b} +{}", rest.len()),
        [] => "?".into(),
    }
}

/// Seconds along the x axis, up to `tmax`.
fn x_time_ticks(svg: &mut String, tmax: f64) {
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (x, y) = px(f, 0.0);
        let _ =
            writeln!(svg, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, y + 18.0, fmt_num(tmax * f));
    }
}

/// Connections open (and failed) over time.
pub fn connections(rep: &Report) -> String {
    let title = format!("{} → {}: connections over time ({} planned)", rep.scenario, targets(rep), rep.conns);
    let mut svg = frame(&title, "seconds", "connections");
    let tmax = nice_max(rep.timeline.last().map_or(1.0, |x| x.t));
    let peak = rep.timeline.iter().map(|x| x.snap.open.max(x.snap.failed)).max().unwrap_or(0);
    let ymax = nice_max(peak.max(rep.conns.min(peak.max(1) * 2)) as f64);
    y_ticks(&mut svg, ymax, "");
    x_time_ticks(&mut svg, tmax);
    let open: Vec<_> = rep.timeline.iter().map(|p| px(p.t / tmax, p.snap.open as f64 / ymax)).collect();
    let failed: Vec<_> = rep.timeline.iter().map(|p| px(p.t / tmax, p.snap.failed as f64 / ymax)).collect();
    polyline(&mut svg, &open, "#1f77b4", "open", 0);
    polyline(&mut svg, &failed, "#d62728", "failed (cumulative)", 1);
    svg.push_str("</svg>\n");
    svg
}

/// Round-trip and handshake latency by percentile, x on the usual log "nines" scale.
pub fn latency(rep: &Report) -> String {
    let title = format!(
        "{} → {}: latency by percentile ({} round trips, {} handshakes)",
        rep.scenario,
        targets(rep),
        rep.latency_us.count,
        rep.handshake_us.count
    );
    let mut svg = frame(&title, "percentile", "microseconds");
    // x = log10(1 / (1 - p)), capped at six nines.
    let nines = |p: f64| (1.0 / (1.0 - (p / 100.0).min(0.999_999))).log10() / 6.0;
    let all = rep.latency_distribution.iter().chain(&rep.handshake_distribution);
    let ymax = nice_max(all.map(|p| p[1]).fold(0.0, f64::max));
    y_ticks(&mut svg, ymax, "");
    for (label, p) in [
        ("0%", 0.0),
        ("90%", 90.0),
        ("99%", 99.0),
        ("99.9%", 99.9),
        ("99.99%", 99.99),
        ("99.999%", 99.999),
        ("99.9999%", 99.9999),
    ] {
        let (x, y) = px(nines(p), 0.0);
        let _ = writeln!(svg, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#, y + 18.0);
    }
    let line = |d: &[[f64; 2]]| d.iter().map(|p| px(nines(p[0]), p[1] / ymax)).collect::<Vec<_>>();
    polyline(&mut svg, &line(&rep.latency_distribution), "#2ca02c", "round trip", 0);
    polyline(&mut svg, &line(&rep.handshake_distribution), "#9467bd", "handshake (connect + upgrade)", 1);
    svg.push_str("</svg>\n");
    svg
}

/// The machine's memory per open connection over time, KiB: memory in use above the
/// first sample's, divided by the connections open then. Only samples with at least 1 %
/// of the peak open are drawn (below that the quotient is the fixed costs' noise).
pub fn memory(rep: &Report) -> String {
    let title = format!("{} → {}: memory per open connection (whole machine)", rep.scenario, targets(rep));
    let mut svg = frame(&title, "seconds", "KiB per connection");
    let base = rep.timeline.first().map_or(0, |s| s.mem_used_kib);
    let peak = rep.timeline.iter().map(|s| s.snap.open).max().unwrap_or(0).max(1);
    let points: Vec<(f64, f64)> = rep
        .timeline
        .iter()
        .filter(|s| s.snap.open * 100 >= peak && s.mem_used_kib > 0)
        .map(|s| (s.t, s.mem_used_kib.saturating_sub(base) as f64 / s.snap.open as f64))
        .collect();
    let tmax = nice_max(rep.timeline.last().map_or(1.0, |x| x.t));
    let ymax = nice_max(points.iter().map(|p| p.1).fold(0.0, f64::max));
    y_ticks(&mut svg, ymax, "");
    x_time_ticks(&mut svg, tmax);
    let line: Vec<_> = points.iter().map(|(t, kib)| px(t / tmax, kib / ymax)).collect();
    polyline(&mut svg, &line, "#ff7f0e", "memory in use since the start ÷ connections open", 0);
    svg.push_str("</svg>\n");
    svg
}
