//! `cargo xtask …`: the project's automation. One module per verb.

mod bench;
mod demo;
mod deploy_check;
mod exec;
mod fuzz;
mod package;
mod packages;
mod stress;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "wsgate project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start an echo upstream and wsgate in front of it, send WebSocket traffic, print what happened.
    Demo(demo::Options),
    /// Format check, clippy, and every test of the workspace (installs the system packages they need).
    Test(test::Options),
    /// Kernel and open-files tuning profiles: list, show, apply, verify, revert.
    Tune(tuning::cli::Options),
    /// Benchmarks: direct vs wsgate vs nginx (and HAProxy), and the million-connection scale run.
    Bench(bench::Options),
    /// Long randomized soaks (the splice torture, for minutes or hours).
    Stress(stress::Options),
    /// Coverage-guided fuzzing (libFuzzer) of every parser of network bytes.
    Fuzz(fuzz::Options),
    /// The Debian package: binary, config, tuning profiles, systemd units.
    Package(package::Options),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(o) => demo::run(&o),
        Command::Test(o) => test::run(&o),
        Command::Tune(o) => tuning::cli::run(&o, &tuning::shipped_profiles_dir()),
        Command::Bench(o) => bench::run(&o),
        Command::Stress(o) => stress::run(&o),
        Command::Fuzz(o) => fuzz::run(&o),
        Command::Package(o) => package::run(&o),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
