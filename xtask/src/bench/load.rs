//! Runs one `wsbench load` and reads its report, with the memory guard: a load is
//! stopped (with all its worker processes) if `MemAvailable` falls under 1.5 GiB.
//!
//! It never leaves a load process behind: on every exit path the child is reaped.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use wsbench::load::Scenario as LoadScenario;
use wsbench::report::Report;

use super::Options;
use super::procfs::{meminfo_kib, tcp_inuse};
use super::procs::bin_dir;
use super::sampler::Sampler;
use crate::exec::describe;

/// Below this much `MemAvailable` a running load is stopped, before the OOM killer acts.
pub(super) const MEMORY_FLOOR_KIB: u64 = 1536 * 1024;

pub(super) struct LoadArgs {
    pub(super) scenario: LoadScenario,
    pub(super) targets: Vec<SocketAddr>,
    pub(super) sources: Option<String>,
    pub(super) conns: u64,
    pub(super) duration: f64,
    pub(super) procs: u64,
    pub(super) report: PathBuf,
    /// Show wsbench's live progress line and its table (the scale run, which is long).
    pub(super) progress: bool,
    /// Extra `wsbench load` arguments (the TLS client's, for a TLS target).
    pub(super) extra: Vec<String>,
}

/// Runs the load; returns its report and the largest anonymous RSS (KiB) its processes
/// (the load and its workers) had together.
pub(super) fn run_load(opts: &Options, a: &LoadArgs) -> Result<(Report, u64)> {
    let targets: Vec<String> = a.targets.iter().map(ToString::to_string).collect();
    let mut cmd = Command::new(bin_dir().join("wsbench"));
    cmd.args(["load", a.scenario.name(), "--target", &targets.join(",")])
        .args(["--conns", &a.conns.to_string(), "--duration", &a.duration.to_string()])
        .args(["--rate", &opts.rate.to_string(), "--interval-ms", &opts.interval_ms.to_string()])
        .args(["--heartbeat", &opts.heartbeat.to_string(), "--threads", &opts.load_threads.to_string()])
        .args(["--procs", &a.procs.to_string()])
        .arg("--report")
        .arg(&a.report)
        .stdin(Stdio::null());
    if !a.progress {
        cmd.arg("--quiet");
    }
    if let Some(size) = opts.size {
        cmd.args(["--size", &size.to_string()]);
    }
    if let Some(src) = &a.sources {
        cmd.args(["--source", src]);
    }
    cmd.args(&a.extra);
    // Its own process group, so the memory guard can stop the load and all its workers.
    cmd.process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("failed to start `{}`", describe(&cmd)))?;
    let sampler = Sampler::start(vec![child.id()]);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let avail = meminfo_kib("MemAvailable");
        if avail < MEMORY_FLOOR_KIB {
            let open = tcp_inuse();
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait();
            bail!(
                "stopped the load: MemAvailable fell to {} MiB (floor {} MiB) with {open} TCP sockets in use; \
                 that is where this machine stops",
                avail / 1024,
                MEMORY_FLOOR_KIB / 1024
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Exit 2 means "ran, but not clean": the report says what went wrong.
    if !status.success() && status.code() != Some(2) {
        bail!("`{}` failed with {status}", describe(&cmd));
    }
    let load_anon = sampler.finish().peak.anon;
    let text = std::fs::read_to_string(&a.report).with_context(|| format!("no report at {}", a.report.display()))?;
    let report =
        serde_json::from_str(&text).with_context(|| format!("{} is not a wsbench report", a.report.display()))?;
    Ok((report, load_anon))
}
