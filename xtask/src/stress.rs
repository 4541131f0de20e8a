//! `cargo xtask stress …`: long randomized soaks of what the suite runs briefly.
//!
//! `stress splice` is the splice torture (`gateway/tests/splice_torture.rs`) in
//! rounds until the time is up: fresh pairs each round, a new seed each round, each
//! round's figures printed (pairs, bytes checked, pressure episodes, retransmitted
//! bytes trimmed, failures) and a total at the end. It stops at the first failing
//! round and exits non-zero; the seed printed with a failure replays it
//! (`--seed`). Needs root (the kernel splice).

use anyhow::{Result, bail};

use crate::exec::{cargo, exec};
use crate::packages;

/// Options of `cargo xtask stress`.
#[derive(Debug, clap::Args)]
pub struct Options {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// The splice torture: stalling readers, both directions at full speed, every byte checked.
    Splice(SpliceOptions),
}

/// Options of `cargo xtask stress splice`.
#[derive(Debug, clap::Args)]
pub struct SpliceOptions {
    /// Minutes to run rounds for (a round that has started runs to its end).
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Spliced pairs per round.
    #[arg(long, default_value_t = 8)]
    pub pairs: u64,
    /// Seconds the senders push in each round.
    #[arg(long, default_value_t = 60)]
    pub round_secs: u64,
    /// Seed of the first round (default: random); round k uses seed + k.
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn run(opts: &Options) -> Result<()> {
    match &opts.what {
        What::Splice(o) => splice(o),
    }
}

fn splice(o: &SpliceOptions) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the splice torture needs root (CAP_BPF and CAP_NET_ADMIN): run it as root");
    }
    if o.pairs == 0 || o.round_secs == 0 {
        bail!("--pairs and --round-secs must be at least 1");
    }
    packages::ensure(packages::BUILD)?;
    let mut cmd = cargo();
    cmd.args(["test", "-p", "wsgate", "--test", "splice_torture", "--", "--nocapture"])
        .env("WSGATE_TORTURE_MINUTES", o.minutes.to_string())
        .env("WSGATE_TORTURE_PAIRS", o.pairs.to_string())
        .env("WSGATE_TORTURE_SECS", o.round_secs.to_string())
        .env("CI", "1");
    if let Some(seed) = o.seed {
        cmd.env("WSGATE_TORTURE_SEED", seed.to_string());
    }
    exec(&mut cmd)
}
