//! The `wsbench` command line: `echo` (upstream), `load` (client) and `report merge`.

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "wsbench", about = "WebSocket load generator and echo upstream")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a WebSocket echo server (the upstream of a benchmark).
    Echo(wsbench::echo::Options),
    /// Generate load against a WebSocket server and verify every echo.
    Load(Box<wsbench::load::Options>),
    /// Work on reports: `merge` the reports of several shards into one.
    #[command(subcommand)]
    Report(ReportCommand),
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// Merge the reports of shards (one per load machine) into one exact report.
    Merge(wsbench::report::merge::Options),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Echo(o) => wsbench::echo::run(&o),
        Command::Report(ReportCommand::Merge(o)) => match wsbench::report::merge::run(&o) {
            Ok(report) if !report.clean => std::process::exit(2),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        },
        Command::Load(o) => match wsbench::load::run(&o) {
            // Exit 2: the run completed but something was lost, corrupted or refused.
            Ok(report) if !report.clean => std::process::exit(2),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        eprintln!("wsbench: error: {e:#}");
        std::process::exit(1);
    }
}
