//! Applying a profile in two phases. [`plan`] reads every knob, computes every write and checks
//! that each file can be written, writing nothing; any problem is an error naming the profile
//! file and line. [`Plan::execute`] then records the previous values in the state file, makes
//! the writes one by one (reporting each), and undoes them all if one fails, so a profile is
//! never half-applied. Knobs that already satisfy the profile are left alone, so applying twice
//! changes nothing the second time.

use std::path::{Path, PathBuf};

use crate::catalogue::Scope;
use crate::error::{Error, Source};
use crate::profile::Profile;
use crate::state::{SavedSysctl, State};
use crate::sysctl;
use crate::target::Target;
use crate::value::Actual;
use crate::verify::{Skip, actual};

/// One sysctl write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Sysctl name.
    pub knob: String,
    /// Where it lives.
    pub scope: Scope,
    /// The sysctl root it is written under.
    pub root: PathBuf,
    /// The value now.
    pub from: Actual,
    /// The value after.
    pub to: Actual,
    /// Where the profile asks for it.
    pub at: Source,
}

/// What `apply` does with one knob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Change it.
    Write(Write),
    /// It already satisfies the profile; leave it.
    AlreadyOk { knob: String, actual: Actual },
    /// Not applied here, and why.
    Skipped { knob: String, reason: String },
}

/// Everything an apply will do, decided before anything is written.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Profile name.
    pub profile: String,
    /// The named network namespace it runs in (recorded for `revert`).
    pub netns_name: Option<String>,
    /// One step per knob, in profile order.
    pub steps: Vec<Step>,
}

/// Decides every step of applying `profile` to `target`, writing nothing.
pub fn plan(profile: &Profile, target: &Target) -> Result<Plan, Error> {
    let mut steps = Vec::with_capacity(profile.knobs.len());
    for knob in &profile.knobs {
        let step = match actual(knob, target) {
            Err(Skip::NotHere(reason)) => Step::Skipped { knob: knob.name.clone(), reason },
            Err(Skip::Error(e)) => {
                return Err(Error::Profile { at: knob.at.clone(), message: format!("{}: {e}", knob.name) });
            }
            Ok(None) if knob.optional => {
                Step::Skipped { knob: knob.name.clone(), reason: "absent on this kernel (optional)".to_owned() }
            }
            Ok(None) => {
                let root = match knob.scope {
                    Scope::Global => target.global_root.as_ref(),
                    _ => Some(&target.netns_root),
                };
                return Err(Error::Missing {
                    at: knob.at.clone(),
                    knob: knob.name.clone(),
                    path: sysctl::path(root.unwrap_or(&target.netns_root), &knob.name),
                });
            }
            Ok(Some(now)) if knob.compare.satisfied(&knob.want, &now) => {
                Step::AlreadyOk { knob: knob.name.clone(), actual: now }
            }
            Ok(Some(_)) if knob.scope == Scope::Process => Step::Skipped {
                knob: knob.name.clone(),
                reason: "a per-process limit, not a kernel setting: wsgate raises its own at \
                         start-up as far as its hard limit allows; `--persist` sets LimitNOFILE \
                         for the wsgate unit"
                    .to_owned(),
            },
            Ok(Some(now)) => {
                let root = match knob.scope {
                    Scope::Global => target.global_root.clone(),
                    _ => Some(target.netns_root.clone()),
                }
                .unwrap_or_default();
                let path = sysctl::path(&root, &knob.name);
                if let Some(reason) = sysctl::unwritable_reason(&path) {
                    return Err(Error::NotWritable { at: knob.at.clone(), knob: knob.name.clone(), path, reason });
                }
                Step::Write(Write {
                    knob: knob.name.clone(),
                    scope: knob.scope,
                    root,
                    to: knob.compare.desired(&knob.want, &now),
                    from: now,
                    at: knob.at.clone(),
                })
            }
        };
        steps.push(step);
    }
    Ok(Plan { profile: profile.name.clone(), netns_name: target.netns_name.clone(), steps })
}

impl Plan {
    /// The writes of the plan.
    pub fn writes(&self) -> impl Iterator<Item = &Write> {
        self.steps.iter().filter_map(|s| match s {
            Step::Write(w) => Some(w),
            _ => None,
        })
    }

    /// Records the previous values in `state_file`, then makes every write, calling `on_write`
    /// after each. If a write fails, the earlier ones are undone and the state file is put
    /// back as it was. Returns the number of writes.
    pub fn execute(&self, state_file: &Path, mut on_write: impl FnMut(&Write)) -> Result<usize, Error> {
        let writes: Vec<&Write> = self.writes().collect();
        if writes.is_empty() {
            return Ok(0);
        }
        let before = State::load(state_file)?;
        let mut state = before.clone();
        for w in &writes {
            state.remember_sysctl(SavedSysctl {
                name: w.knob.clone(),
                scope: w.scope.as_str().to_owned(),
                root: w.root.clone(),
                netns: self.netns_name.clone(),
                previous: w.from.to_string(),
                profile: self.profile.clone(),
            });
        }
        state.save(state_file)?;

        for (done, w) in writes.iter().enumerate() {
            if let Err(failed) = sysctl::write(&w.root, &w.knob, &w.to.to_string()) {
                for undo in writes[..done].iter().rev() {
                    // Best effort: the error reported is the write that failed.
                    let _ = sysctl::write(&undo.root, &undo.knob, &undo.from.to_string());
                }
                before.save(state_file)?;
                return Err(Error::RolledBack { failed: Box::new(failed), undone: done });
            }
            on_write(w);
        }
        Ok(writes.len())
    }
}
