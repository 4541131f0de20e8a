//! The `tune` command line (`wsgate tune`, `cargo xtask tune`): list, show, apply, verify
//! and revert kernel/limit tuning profiles (`*.toml` in a profiles directory). A thin
//! layer over this crate; it never writes a sysctl the profile does not name, and
//! `--dry-run` writes nothing at all.

use std::path::{Path, PathBuf};

use crate::persist::{self, PersistPaths};
use crate::revert::{self, Restored};
use crate::{Profile, Step, Target, profile, rlimit};
use anyhow::{Context, Result, bail};

/// Options of `cargo xtask tune`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Directory of the profiles [default: the installed profiles, else those of the source tree].
    #[arg(long, global = true, value_name = "DIR")]
    profiles: Option<PathBuf>,
    /// State file: `apply` records the values it replaces there, `revert` restores them.
    #[arg(long, global = true, value_name = "FILE", default_value = crate::state::DEFAULT_PATH)]
    state: PathBuf,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List the profiles and what each is for.
    List,
    /// Print a profile's knobs after inheritance: wanted value, scope, why, and where each is set.
    Show {
        /// Profile name (`baseline`) or path to a `.toml` file.
        profile: String,
    },
    /// Bring the running kernel to a profile; knobs already satisfied are left alone.
    Apply {
        /// Profile name (`baseline`) or path to a `.toml` file.
        profile: String,
        /// Print what would be written, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also write /etc/sysctl.d/90-wsgate.conf and a `LimitNOFILE` drop-in for wsgate's unit.
        #[arg(long, conflicts_with = "netns")]
        persist: bool,
        /// Apply only the per-namespace knobs, inside this named network namespace (`ip netns`).
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
    },
    /// Compare the machine with a profile: a table of knob, wanted, actual, scope, ok.
    /// Exits non-zero when any knob misses.
    Verify {
        /// Profile name (`baseline`) or path to a `.toml` file.
        profile: String,
        /// Check this running process's open-files limit (from /proc/PID/limits) instead of
        /// the hard limit a process started from this shell would get.
        #[arg(long)]
        pid: Option<u32>,
        /// Check the per-namespace knobs inside this named network namespace (`ip netns`).
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
    },
    /// Restore exactly the values (and files) that `apply` replaced.
    Revert,
}

/// Runs one `tune` command; profiles come from `--profiles`, else `default_dir`.
pub fn run(opts: &Options, default_dir: &Path) -> Result<()> {
    let dir = opts.profiles.clone().unwrap_or_else(|| default_dir.to_path_buf());
    match &opts.action {
        Action::List => list(&dir),
        Action::Show { profile } => {
            show(&load(&dir, profile)?);
            Ok(())
        }
        Action::Apply { profile, dry_run, persist, netns } => {
            apply(&load(&dir, profile)?, &opts.state, *dry_run, *persist, netns.as_deref())
        }
        Action::Verify { profile, pid, netns } => verify(&load(&dir, profile)?, *pid, netns.as_deref()),
        Action::Revert => revert(&opts.state),
    }
}

fn load(dir: &Path, name: &str) -> Result<Profile> {
    Ok(profile::load(dir, name)?)
}

fn list(dir: &Path) -> Result<()> {
    for name in profile::list(dir)? {
        let p = load(dir, &name)?;
        let extends = p.extends.map(|e| format!(" (extends {e})")).unwrap_or_default();
        println!("{name:<12} {}{extends}", p.description);
    }
    Ok(())
}

fn show(p: &Profile) {
    println!("{}: {}", p.name, p.description);
    for k in &p.knobs {
        let optional = if k.optional { ", optional" } else { "" };
        println!(
            "  {} {} ({}{optional})\n      {}\n      set at {}",
            k.name,
            k.compare.describe(&k.want),
            k.scope.as_str(),
            k.why,
            k.at
        );
    }
}

/// The target of `--netns NAME`, or the host.
fn target(netns: Option<&str>, pid: Option<u32>) -> Target {
    let mut target = netns.map_or_else(Target::host, Target::named_netns);
    if let Some(pid) = pid {
        target.limits = crate::LimitsCheck::pid(pid);
    }
    target
}

/// Runs `f` inside the named network namespace, or here.
fn within<T: Send>(netns: Option<&str>, f: impl FnOnce() -> T + Send) -> Result<T> {
    match netns {
        Some(name) => Ok(crate::netns::run_in(name, f)?),
        None => Ok(f()),
    }
}

fn verify(p: &Profile, pid: Option<u32>, netns: Option<&str>) -> Result<()> {
    let target = target(netns, pid);
    let report = within(netns, || crate::verify(p, &target))?;
    println!("{report}");
    if !report.ok() {
        bail!("{} knob(s) of profile {} miss", report.misses(), p.name);
    }
    Ok(())
}

fn apply(p: &Profile, state: &Path, dry_run: bool, persist: bool, netns: Option<&str>) -> Result<()> {
    let target = target(netns, None);
    let plan = within(netns, || crate::plan(p, &target))??;
    let verb = if dry_run { "would write" } else { "write" };
    for step in &plan.steps {
        match step {
            Step::AlreadyOk { knob, actual } => println!("ok          {knob} = {actual}"),
            Step::Skipped { knob, reason } => println!("skip        {knob}: {reason}"),
            Step::Write(w) if dry_run => {
                println!("{verb} {} = {} (now {}; {}, {})", w.knob, w.to, w.from, w.scope.as_str(), w.at);
            }
            Step::Write(_) => {}
        }
    }
    if let Some(note) = nofile_note(p) {
        println!("note        {note}");
    }
    if dry_run {
        if persist {
            for (path, text) in persist::render(p, &plan, &PersistPaths::system()) {
                println!("would write {}:\n{text}", path.display());
            }
        }
        println!("dry run: nothing written");
        return Ok(());
    }
    let written = within(netns, || {
        plan.execute(state, |w| {
            println!("{verb}       {} = {} (was {}; {}, {})", w.knob, w.to, w.from, w.scope.as_str(), w.at);
        })
    })??;
    if persist {
        let files = persist::render(p, &plan, &PersistPaths::system());
        persist::write(&files, state).context("--persist")?;
        for (path, _) in &files {
            println!("wrote       {}", path.display());
        }
        println!("run `systemctl daemon-reload` for the LimitNOFILE drop-in to take effect");
    }
    if written == 0 {
        println!("profile {}: nothing to change", p.name);
    } else {
        println!(
            "profile {}: {written} write(s); previous values saved in {} for `cargo xtask tune \
             revert`",
            p.name,
            state.display()
        );
    }
    Ok(())
}

/// Whether a process started from here could get the profile's open-files limit, said plainly
/// when it could not (the limit itself is per process: wsgate raises its own at start-up).
fn nofile_note(p: &Profile) -> Option<String> {
    let knob = p.knobs.iter().find(|k| k.name == crate::catalogue::NOFILE)?;
    let Some(crate::Field::Int(wanted)) = knob.want.0.first().copied() else {
        return None;
    };
    let now = rlimit::nofile().ok()?;
    if now.hard >= wanted {
        return None;
    }
    // This process exits right after; trying on it shows what wsgate would meet.
    Some(match rlimit::raise_to(wanted) {
        Ok(_) => format!(
            "rlimit.nofile: the hard limit here is {} but can be raised to {wanted} \
             (CAP_SYS_RESOURCE present); wsgate does so at start-up",
            now.hard
        ),
        Err(e) => format!("rlimit.nofile: {e}"),
    })
}

fn revert(state: &Path) -> Result<()> {
    let restored = revert::revert(state, |r| match r {
        Restored::Sysctl(s) => println!(
            "restored    {} = {} ({}{})",
            s.name,
            s.previous,
            s.scope,
            s.netns.as_ref().map(|n| format!(" in {n}")).unwrap_or_default()
        ),
        Restored::NamespaceGone(s) => {
            println!(
                "gone        {}: network namespace {} no longer exists",
                s.name,
                s.netns.as_deref().unwrap_or("?")
            );
        }
        Restored::File(f) => match f.previous {
            Some(_) => println!("restored    {}", f.path.display()),
            None => println!("removed     {}", f.path.display()),
        },
    })
    .with_context(|| format!("revert from {}", state.display()))?;
    if restored == 0 {
        println!("nothing to revert ({} has no entries)", state.display());
    }
    Ok(())
}
