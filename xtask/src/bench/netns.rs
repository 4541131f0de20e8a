//! The scale run's network namespace: by default the run goes into a fresh namespace
//! tuned with `edge-1m`'s per-namespace knobs (listen backlog, SYN backlog, port range,
//! …), as on a tuned edge node, when this process may create one; `--no-netns` opts out.
//! Either way the reason is printed.
//!
//! It never changes a sysctl of the machine's own namespace: every knob it sets lives
//! in the namespace it created, which it deletes again whatever happened.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::exec::exec;

/// Set in the environment of the run inside the namespace (its name).
const INSIDE: &str = "WSGATE_BENCH_NETNS";

/// What the caller does next.
pub(super) enum Placed {
    /// The run happened inside a namespace (this process only waited for it).
    Done,
    /// Run here: inside a namespace already, opted out, or none could be created.
    RunHere,
}

/// Runs this same command inside a fresh tuned namespace unless it is there already or
/// opted out; `required` (`--netns`) turns "cannot create one" into an error.
pub(super) fn place(opted_out: bool, required: bool) -> Result<Placed> {
    if let Ok(name) = std::env::var(INSIDE) {
        eprintln!("bench: running inside network namespace {name}, tuned with edge-1m");
        return Ok(Placed::RunHere);
    }
    if opted_out {
        eprintln!("bench: --no-netns: running in this network namespace, with this machine's own sysctls");
        return Ok(Placed::RunHere);
    }
    let name = format!("wsgate-bench-{}", std::process::id());
    let add = Command::new("ip").args(["netns", "add", &name]).stdin(Stdio::null()).output();
    let reason = match add {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(e) => Some(format!("cannot run `ip`: {e}")),
    };
    if let Some(reason) = reason {
        if required {
            bail!("cannot create a network namespace for --netns: {reason} (it needs root, or CAP_SYS_ADMIN)");
        }
        eprintln!(
            "bench: running in this network namespace with this machine's own sysctls: cannot create a fresh one \
             ({reason}; it needs root, or CAP_SYS_ADMIN); `cargo xtask tune apply edge-1m` tunes this one"
        );
        return Ok(Placed::RunHere);
    }
    let result = run_inside(&name);
    let deleted = exec(Command::new("ip").args(["netns", "del", &name]));
    result.and(deleted).map(|()| Placed::Done)
}

/// Tunes namespace `name` with `edge-1m` and runs this same command inside it.
fn run_inside(name: &str) -> Result<()> {
    exec(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
    let me = std::env::current_exe().context("finding xtask's own binary")?;
    let state = std::env::temp_dir().join(format!("{name}.tuning-state.json"));
    exec(Command::new(&me).args(["tune", "apply", "edge-1m", "--netns", name]).arg("--state").arg(&state))?;
    let _ = std::fs::remove_file(&state);
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--netns").collect();
    exec(Command::new("ip").args(["netns", "exec", name]).arg(&me).args(&args).env(INSIDE, name))
}
