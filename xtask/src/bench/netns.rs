//! `--netns`: the scale run inside a fresh network namespace tuned with `edge-1m`.
//!
//! It never changes a sysctl of the machine's own namespace: every knob it sets lives
//! in the namespace it created, which it deletes again whatever happened.

use std::process::Command;

use anyhow::{Context, Result};

use crate::exec::exec;

/// Creates a network namespace, tunes it with `edge-1m`, runs this same command inside it
/// (without `--netns`), and deletes the namespace again, whatever happened.
pub(super) fn run_in_tuned_netns() -> Result<()> {
    let name = format!("wsgate-bench-{}", std::process::id());
    exec(Command::new("ip").args(["netns", "add", &name])).context("creating the network namespace (needs root)")?;
    let result = (|| -> Result<()> {
        exec(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
        let me = std::env::current_exe().context("finding xtask's own binary")?;
        let state = std::env::temp_dir().join(format!("{name}.tuning-state.json"));
        exec(Command::new(&me).args(["tune", "apply", "edge-1m", "--netns", &name]).arg("--state").arg(&state))?;
        let _ = std::fs::remove_file(&state);
        let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--netns").collect();
        eprintln!("bench: running inside network namespace {name}, tuned with edge-1m");
        exec(Command::new("ip").args(["netns", "exec", &name]).arg(&me).args(&args))
    })();
    let deleted = exec(Command::new("ip").args(["netns", "del", &name]));
    result.and(deleted)
}
