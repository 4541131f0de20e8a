//! Ratios to nginx and HAProxy taken within each round, then their median.
//!
//! The table's `×nginx` divides two medians, each of its own target's rounds; on a
//! shared VM the targets of one round drift against each other by about 10 % from run
//! to run, and the two medians can come from rounds far apart in time. A ratio taken
//! between two targets of the same round (run back to back, against the same echo)
//! cancels what the round shares; the median of those ratios is the steadier figure.
//!
//! Pure arithmetic: it never runs or reads anything.

use serde_json::{Value, json};
use wsbench::load::Scenario;

use super::row::Row;

/// One target's ratios to one reference (nginx or HAProxy), round by round.
#[derive(Debug, PartialEq)]
pub(super) struct Paired {
    pub(super) target: String,
    pub(super) reference: String,
    /// Proxy CPU per unit ÷ the reference's, in each round that has both, sorted.
    pub(super) cpu: Vec<f64>,
    /// Headline (rate) ÷ the reference's, sorted.
    pub(super) headline: Vec<f64>,
}

impl Paired {
    /// The median CPU ratio.
    pub(super) fn cpu_median(&self) -> Option<f64> {
        median(&self.cpu)
    }

    /// The median headline ratio.
    pub(super) fn headline_median(&self) -> Option<f64> {
        median(&self.headline)
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "target": self.target, "reference": self.reference,
            "cpu_ratio_median": self.cpu_median(), "cpu_ratio_rounds_sorted": self.cpu,
            "headline_ratio_median": self.headline_median(), "headline_ratio_rounds_sorted": self.headline,
        })
    }
}

/// The median of sorted figures; of an even count, the mean of the middle two (a
/// ratio needs no real round behind it, and the upper one of two would be the worse
/// round for CPU and the better for rate).
fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some(f64::midpoint(sorted[n / 2 - 1], sorted[n / 2])),
    }
}

/// Whether `name` is a reference proxy (the others are compared with it).
fn is_reference(name: &str) -> bool {
    name.starts_with("nginx") || name.starts_with("haproxy")
}

/// One target's figures in one round, as the pairing needs them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Figures<'a> {
    pub(super) name: &'a str,
    /// Proxy CPU per unit (none for direct).
    pub(super) cpu: Option<f64>,
    /// The headline (rate; higher is better).
    pub(super) headline: f64,
    /// No loss, corruption or failure in the load's report.
    pub(super) clean: bool,
}

impl<'a> Figures<'a> {
    pub(super) fn of(s: Scenario, row: &'a Row) -> Self {
        Self { name: &row.name, cpu: row.cpu_per_unit(s), headline: row.headline(s), clean: row.report.clean }
    }
}

/// Every proxy target's ratios to every reference of its rounds. Rounds lacking either
/// (a target failed there), or where either was not clean, are left out of that pair,
/// never filled in; a pair with no round left is not listed.
pub(super) fn paired(rounds: &[Vec<Figures<'_>>]) -> Vec<Paired> {
    let mut out: Vec<Paired> = Vec::new();
    for rows in rounds {
        for reference in rows.iter().filter(|r| is_reference(r.name) && r.clean) {
            for row in rows.iter().filter(|r| r.name != "direct" && !is_reference(r.name) && r.clean) {
                let at = out.iter().position(|p| p.target == row.name && p.reference == reference.name);
                let at = at.unwrap_or_else(|| {
                    out.push(Paired {
                        target: row.name.into(),
                        reference: reference.name.into(),
                        cpu: Vec::new(),
                        headline: Vec::new(),
                    });
                    out.len() - 1
                });
                let p = &mut out[at];
                if let (Some(mine), Some(theirs)) = (row.cpu, reference.cpu)
                    && theirs > 0.0
                {
                    p.cpu.push(mine / theirs);
                }
                if reference.headline > 0.0 {
                    p.headline.push(row.headline / reference.headline);
                }
            }
        }
    }
    out.retain(|p| !p.cpu.is_empty() || !p.headline.is_empty());
    for p in &mut out {
        p.cpu.sort_by(f64::total_cmp);
        p.headline.sort_by(f64::total_cmp);
    }
    out
}

/// The paired ratios under the table (with more than one round: one round's ratios
/// are the table's own).
pub(super) fn print_paired(s: Scenario, paired: &[Paired]) {
    let many = paired.iter().any(|p| p.cpu.len() > 1 || p.headline.len() > 1);
    if !many {
        return;
    }
    let (unit, headline) = match s {
        Scenario::Hold => ("CPU/conn", "verified"),
        Scenario::Echo => ("CPU/msg", "msg/s"),
        Scenario::Bulk => ("CPU/GB", "MB/s"),
        Scenario::Handshake => ("CPU/hs", "hs/s"),
    };
    println!(
        "paired within each round (median of the rounds' ratios; each round's, sorted; rounds not clean left out):"
    );
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
    let fmt = |m: Option<f64>| m.map_or_else(|| "-".into(), |m| format!("{m:.2}×"));
    for p in paired {
        println!(
            "  {} ÷ {}: {unit} {} ({}), {headline} {} ({})",
            p.target,
            p.reference,
            fmt(p.cpu_median()),
            list(&p.cpu),
            fmt(p.headline_median()),
            list(&p.headline),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, cpu: Option<f64>, headline: f64) -> Figures<'_> {
        Figures { name, cpu, headline, clean: true }
    }

    #[test]
    fn ratios_are_taken_within_a_round_and_a_missing_target_leaves_its_round_out() {
        let rounds = vec![
            vec![f("direct", None, 9.0), f("wsgate/auto", Some(90.0), 10.0), f("nginx", Some(100.0), 10.0)],
            vec![f("direct", None, 9.0), f("wsgate/auto", Some(60.0), 20.0), f("nginx", Some(200.0), 10.0)],
            // nginx failed in this round: no ratio from it.
            vec![f("direct", None, 9.0), f("wsgate/auto", Some(500.0), 1.0)],
            vec![f("direct", None, 9.0), f("wsgate/auto", Some(110.0), 10.0), f("nginx", Some(100.0), 10.0)],
        ];
        let p = paired(&rounds);
        assert_eq!(p.len(), 1);
        let p = &p[0];
        assert_eq!((p.target.as_str(), p.reference.as_str()), ("wsgate/auto", "nginx"));
        let close = |a: &[f64], b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9);
        // 90/100, 60/200, 110/100, sorted.
        assert!(close(&p.cpu, &[0.3, 0.9, 1.1]), "{:?}", p.cpu);
        assert!((p.cpu_median().unwrap() - 0.9).abs() < 1e-9);
        assert!(close(&p.headline, &[1.0, 1.0, 2.0]), "{:?}", p.headline);
        assert!((p.headline_median().unwrap() - 1.0).abs() < 1e-9);
        // Not the ratio of the two medians (wsgate's 110 of 90, 110, 500 ÷ nginx's 100).
        assert!((p.cpu_median().unwrap() - 1.1).abs() > 0.05);
    }

    #[test]
    fn an_even_count_takes_the_middle_two_and_rounds_not_clean_are_left_out() {
        let mut unclean = f("wsgate/auto", Some(10.0), 10.0);
        unclean.clean = false;
        let rounds = vec![
            vec![f("wsgate/auto", Some(80.0), 10.0), f("nginx", Some(100.0), 10.0)],
            vec![f("wsgate/auto", Some(120.0), 10.0), f("nginx", Some(100.0), 10.0)],
            vec![unclean, f("nginx", Some(100.0), 10.0)],
        ];
        let p = paired(&rounds);
        assert_eq!(p[0].cpu.len(), 2, "{:?}", p[0].cpu);
        assert!((p[0].cpu_median().unwrap() - 1.0).abs() < 1e-9);
        // No figure at all: not listed.
        assert!(paired(&[vec![f("wsgate/auto", None, 0.0), f("nginx", None, 0.0)]]).is_empty());
    }

    #[test]
    fn every_target_is_paired_with_every_reference_and_references_not_with_each_other() {
        let rounds = vec![vec![
            f("direct", None, 9.0),
            f("wsgate/auto", Some(80.0), 10.0),
            f("baseline/auto", Some(90.0), 10.0),
            f("nginx", Some(100.0), 10.0),
            f("haproxy", Some(50.0), 5.0),
        ]];
        let p = paired(&rounds);
        let pairs: Vec<(&str, &str, f64)> =
            p.iter().map(|p| (p.target.as_str(), p.reference.as_str(), p.cpu_median().unwrap())).collect();
        assert_eq!(
            pairs,
            [
                ("wsgate/auto", "nginx", 0.8),
                ("baseline/auto", "nginx", 0.9),
                ("wsgate/auto", "haproxy", 1.6),
                ("baseline/auto", "haproxy", 1.8)
            ]
        );
    }
}
