//! `cargo xtask test`: everything CI checks, in the order a developer wants to learn it.
//!
//! Installs the system packages the build and tests need (apt, as root), then: rustfmt
//! check, clang-format check of `ebpf/`, clippy with warnings denied, every test of the
//! workspace, the relay tests once more over the kernel splice, the demo (the README's
//! quick start), the Debian package's install, upgrade and purge, the Kubernetes
//! manifests checked offline, and a short bounded run of every fuzz target (90 s in all).

use std::process::Command;

use anyhow::{Context, Result};

use crate::exec::{cargo, exec, workspace_root};
use crate::packages;

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Skip the format and lint checks (tests only).
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments passed to `cargo test` (after `--`, e.g. a test name filter).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    packages::ensure(packages::BUILD)?;
    packages::ensure(packages::TEST)?;
    if !opts.no_lint {
        step("rustfmt");
        exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
        step("clang-format (ebpf/)");
        clang_format_check()?;
        step("clippy");
        exec(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    }
    step("tests");
    exec(cargo().args(["test", "--workspace", "--"]).args(&opts.test_args))?;
    if nix::unistd::Uid::effective().is_root() && opts.test_args.is_empty() {
        step("relay tests over the kernel splice (splice = sockmap)");
        exec(cargo().args(["test", "-p", "wsgate", "--test", "proxy_relay"]).env("WSGATE_TEST_SPLICE", "sockmap"))?;
    } else {
        eprintln!("xtask: NOT RUN: relay tests over the kernel splice need root (CAP_BPF, CAP_NET_ADMIN)");
    }
    if opts.test_args.is_empty() {
        // The README's first command, as a new user runs it.
        step("demo (the README's quick start)");
        crate::demo::run(&crate::demo::Options::defaults())?;
    }
    if nix::unistd::Uid::effective().is_root() && opts.test_args.is_empty() {
        step("Debian package: install, check, upgrade, purge");
        crate::package::install_check()?;
    } else {
        eprintln!("xtask: NOT RUN: the package install check needs root (dpkg -i)");
    }
    if opts.test_args.is_empty() {
        step("Kubernetes manifests: schemas, config, probes");
        exec(cargo().args(["build", "--release", "-p", "wsgate"]))?;
        crate::deploy_check::run(&workspace_root().join("target/release/wsgate"))?;
    }
    if opts.test_args.is_empty() {
        let each = std::time::Duration::from_secs(15);
        step(&format!("fuzzing ({} s per target, {} targets)", each.as_secs(), crate::fuzz::TARGETS.len()));
        crate::fuzz::fuzz(crate::fuzz::TARGETS, each)?;
    }
    eprintln!("xtask: all checks passed");
    Ok(())
}

fn step(name: &str) {
    eprintln!("\nxtask: ── {name} ──");
}

fn clang_format_check() -> Result<()> {
    let dir = workspace_root().join("ebpf");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "c" || e == "h"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Ok(());
    }
    exec(Command::new("clang-format-19").args(["--dry-run", "--Werror"]).args(&files))
}
