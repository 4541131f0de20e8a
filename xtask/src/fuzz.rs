//! `cargo xtask fuzz`: coverage-guided fuzzing (libFuzzer, through libfuzzer-sys) of
//! every parser that reads network bytes: the request head with its Host and framing
//! checks, the upgrade validation, the upstream head rewrite, chunked framing, the
//! upstream response head, and path normalisation.
//!
//! Builds `fuzz/` with coverage instrumentation (stable `-C passes=sancov-module` flags,
//! no nightly and no sanitizer runtime) into `target/fuzz`, then runs each target for a
//! bounded time from its committed seed corpus (`fuzz/corpus/<target>`), keeping what it
//! learns in `target/fuzz/corpus/<target>`. A crash or hang fails with the input saved
//! under `target/fuzz/artifacts/<target>/`.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::exec::{cargo, describe, exec, workspace_root};

/// Every fuzz target (one binary each in `fuzz/fuzz_targets`).
pub const TARGETS: &[&str] = &["request_head", "upgrade", "rewrite", "chunked", "response_head", "path"];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Minutes each target runs.
    #[arg(long, default_value_t = 1.0)]
    pub minutes: f64,
    /// Only these targets (default: all of them).
    pub targets: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    let targets: Vec<&str> = if opts.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &opts.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("no fuzz target `{t}`; the targets are {}", TARGETS.join(", "));
            }
        }
        opts.targets.iter().map(String::as_str).collect()
    };
    if !(opts.minutes > 0.0 && opts.minutes <= 24.0 * 60.0) {
        bail!("--minutes must be above 0 and at most 1440");
    }
    fuzz(&targets, Duration::from_secs_f64(opts.minutes * 60.0))
}

/// Builds the targets and runs each for `each`; fails on the first crash or hang.
pub fn fuzz(targets: &[&str], each: Duration) -> Result<()> {
    let root = workspace_root();
    let out = root.join("target/fuzz");
    let host = host_triple()?;
    // `--target` keeps the instrumentation off build scripts and proc macros.
    exec(
        cargo()
            .args(["build", "--release", "--bins", "--manifest-path", "fuzz/Cargo.toml", "--target", &host])
            .arg("--target-dir")
            .arg(&out)
            .env("RUSTFLAGS", RUSTFLAGS.join(" ")),
    )?;
    let mut report = Vec::new();
    for t in targets {
        let work = out.join("corpus").join(t);
        let artifacts = out.join("artifacts").join(t);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        std::fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
        let mut cmd = Command::new(out.join(&host).join("release").join(t));
        cmd.arg(&work)
            .arg(root.join("fuzz/corpus").join(t))
            .arg(format!("-max_total_time={}", each.as_secs().max(1)))
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg("-max_len=16384")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()));
        eprintln!("xtask: fuzzing {t} for {} s", each.as_secs().max(1));
        let line = describe(&cmd);
        let output = cmd.output().with_context(|| format!("failed to start `{line}`"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("fuzz target {t} failed (input saved in {}):\n{}", artifacts.display(), tail.join("\n"));
        }
        let runs = stat(&stderr, "stat::number_of_executed_units:").unwrap_or(0);
        let coverage = stderr.lines().rev().find_map(|l| l.split("cov: ").nth(1)?.split_whitespace().next());
        report.push((t, runs, coverage.unwrap_or("?").to_owned()));
    }
    eprintln!("\nxtask: fuzz results ({} s per target, no crash, no hang)", each.as_secs().max(1));
    eprintln!("{:<16} {:>14} {:>10}", "target", "executions", "coverage");
    for (t, runs, cov) in report {
        eprintln!("{t:<16} {runs:>14} {cov:>10}");
    }
    Ok(())
}

/// What cargo-fuzz passes, minus the sanitizer (which needs a nightly compiler).
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg=fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

fn stat(stderr: &str, key: &str) -> Option<u64> {
    stderr.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output().context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV printed no host triple")
}
