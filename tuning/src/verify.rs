//! Verifying a machine against a profile: one [`Row`] per knob (knob, wanted, actual, scope,
//! ok) and a table of them. Only reads; never writes anything.

use std::fmt;

use crate::catalogue::Scope;
use crate::error::Error;
use crate::profile::{Knob, Profile};
use crate::rlimit;
use crate::sysctl;
use crate::target::Target;
use crate::value::Actual;

/// The outcome of one knob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The actual value satisfies the profile.
    Ok,
    /// It does not.
    Miss,
    /// Not checked here, and why (an optional knob that does not exist, a global knob while
    /// checking one network namespace).
    Skipped(String),
    /// It could not be read.
    Unreadable(String),
}

/// One line of the verify table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Knob name.
    pub knob: String,
    /// The wanted value with its comparison (`>= 65535`).
    pub wanted: String,
    /// The actual value (`-` when there is none).
    pub actual: String,
    /// Where the knob lives.
    pub scope: Scope,
    /// The outcome.
    pub status: Status,
}

/// The rows of one profile.
#[derive(Debug, Clone)]
pub struct Report {
    /// Profile name.
    pub profile: String,
    /// One row per knob, in profile order.
    pub rows: Vec<Row>,
}

impl Report {
    /// Whether nothing missed and everything checked could be read.
    pub fn ok(&self) -> bool {
        self.misses() == 0
    }

    /// How many knobs missed or could not be read.
    pub fn misses(&self) -> usize {
        self.rows.iter().filter(|r| matches!(r.status, Status::Miss | Status::Unreadable(_))).count()
    }

    /// The row of `knob`, if the profile has it.
    pub fn row(&self, knob: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.knob == knob)
    }
}

/// What the knob's value is on `target`: `Ok(None)` when it does not exist there,
/// `Err(reason)` when it is not checked there.
pub(crate) fn actual(knob: &Knob, target: &Target) -> Result<Option<Actual>, Skip> {
    match knob.scope {
        Scope::Netns => sysctl::read(&target.netns_root, &knob.name).map_err(Skip::Error),
        Scope::Global => match &target.global_root {
            Some(root) => sysctl::read(root, &knob.name).map_err(Skip::Error),
            None => Err(Skip::NotHere(format!(
                "global knob; not part of network namespace `{}`",
                target.netns_name.as_deref().unwrap_or("?")
            ))),
        },
        Scope::Process => {
            let limit = rlimit::nofile_of(&target.limits.limits_file).map_err(Skip::Error)?;
            let n = if target.limits.hard { limit.hard } else { limit.soft };
            Ok(Some(Actual(vec![n])))
        }
    }
}

/// Why a knob has no value to compare.
#[derive(Debug)]
pub(crate) enum Skip {
    /// Not checked on this target.
    NotHere(String),
    /// Reading it failed.
    Error(Error),
}

/// Checks every knob of `profile` on `target`.
pub fn verify(profile: &Profile, target: &Target) -> Report {
    let rows = profile
        .knobs
        .iter()
        .map(|knob| {
            let (actual, status) = match actual(knob, target) {
                Ok(Some(a)) => {
                    let ok = knob.compare.satisfied(&knob.want, &a);
                    (a.to_string(), if ok { Status::Ok } else { Status::Miss })
                }
                Ok(None) if knob.optional => {
                    ("-".to_owned(), Status::Skipped("absent on this kernel (optional)".to_owned()))
                }
                Ok(None) => ("-".to_owned(), Status::Unreadable("absent on this kernel".to_owned())),
                Err(Skip::NotHere(why)) => ("-".to_owned(), Status::Skipped(why)),
                Err(Skip::Error(e)) => ("-".to_owned(), Status::Unreadable(e.to_string())),
            };
            let actual = match (knob.scope, target.limits.hard) {
                (Scope::Process, true) if actual != "-" => format!("{actual} (hard)"),
                (Scope::Process, false) if actual != "-" => format!("{actual} (soft)"),
                _ => actual,
            };
            Row {
                knob: knob.name.clone(),
                wanted: knob.compare.describe(&knob.want),
                actual,
                scope: knob.scope,
                status,
            }
        })
        .collect();
    Report { profile: profile.name.clone(), rows }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Miss => f.write_str("MISS"),
            Self::Skipped(why) => write!(f, "skip: {why}"),
            Self::Unreadable(why) => write!(f, "ERROR: {why}"),
        }
    }
}

impl fmt::Display for Report {
    /// The table: knob | wanted | actual | scope | ok, then a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = ["knob", "wanted", "actual", "scope", "ok"];
        let cells: Vec<[String; 4]> = self
            .rows
            .iter()
            .map(|r| [r.knob.clone(), r.wanted.clone(), r.actual.clone(), r.scope.as_str().to_owned()])
            .collect();
        let width = |i: usize| cells.iter().map(|c| c[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0);
        let w = [width(0), width(1), width(2), width(3)];
        writeln!(
            f,
            "{:<w0$} | {:<w1$} | {:<w2$} | {:<w3$} | {}",
            header[0],
            header[1],
            header[2],
            header[3],
            header[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        )?;
        writeln!(
            f,
            "{}-+-{}-+-{}-+-{}-+-{}",
            "-".repeat(w[0]),
            "-".repeat(w[1]),
            "-".repeat(w[2]),
            "-".repeat(w[3]),
            "-".repeat(4)
        )?;
        for (c, row) in cells.iter().zip(&self.rows) {
            writeln!(
                f,
                "{:<w0$} | {:<w1$} | {:<w2$} | {:<w3$} | {}",
                c[0],
                c[1],
                c[2],
                c[3],
                row.status,
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3]
            )?;
        }
        let checked = self.rows.iter().filter(|r| !matches!(r.status, Status::Skipped(_))).count();
        write!(f, "profile {}: {} of {checked} checked knobs ok", self.profile, checked - self.misses())
    }
}
