//! The `wsgate` command line: run the gateway, or check a configuration file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use wsgate::config::{AccessLogFormat, Config, SpliceMode};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// WebSocket reverse proxy: thread-per-core io_uring data plane with an in-kernel splice.
#[derive(Debug, Parser)]
#[command(name = "wsgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    opts: RunOptions,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and exit 0 (valid) or 1 (invalid), like `nginx -t`.
    Check(RunOptions),
}

#[derive(Debug, Clone, clap::Args)]
struct RunOptions {
    /// Configuration file (TOML). See wsgate.example.toml for every field.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration and exit (same as `wsgate check`).
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Listen address (repeatable); replaces the file's listeners.
    #[arg(long, value_name = "IP:PORT")]
    listen: Vec<SocketAddr>,
    /// Upstream server (repeatable); all paths go to this one group, replacing the file's routes.
    #[arg(long, value_name = "IP:PORT")]
    upstream: Vec<SocketAddr>,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Relay mode for WebSocket bytes.
    #[arg(long, value_enum)]
    splice: Option<SpliceMode>,
    /// Access log destination: stdout, off, or a file path.
    #[arg(long, value_name = "PATH")]
    access_log: Option<String>,
    /// Access log format.
    #[arg(long, value_enum)]
    access_log_format: Option<AccessLogFormat>,
    /// Most connections held at once (sizes the splice maps and the preflight).
    #[arg(long, value_name = "N")]
    max_connections: Option<u64>,
    /// Refuse to start when kernel or process limits fall short (default: warn).
    #[arg(long)]
    strict_tuning: bool,
    /// Idle timeout of relayed connections (e.g. 3600s, 90s, 500ms).
    #[arg(long, value_parser = humantime_parse)]
    idle_timeout: Option<std::time::Duration>,
    /// Admin listener (metrics, health, live view), e.g. 127.0.0.1:9090.
    #[arg(long, value_name = "IP:PORT")]
    admin: Option<SocketAddr>,
    /// Hand WebSockets to the kernel splice at their first quiet moment after this long
    /// (`relay.splice_after`; 0s: right after the 101).
    #[arg(long, value_parser = humantime_parse)]
    splice_after: Option<std::time::Duration>,
}

fn humantime_parse(s: &str) -> Result<std::time::Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

impl RunOptions {
    /// The configuration: file (or one-line form) with command-line overrides applied.
    fn load(&self) -> Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None if !self.upstream.is_empty() => Config::one_line(Vec::new(), Vec::new()),
            None => bail!("no configuration: give -c FILE, or --listen IP:PORT --upstream IP:PORT"),
        };
        if !self.listen.is_empty() {
            config.listeners = Config::one_line(self.listen.clone(), Vec::new()).listeners;
        }
        if !self.upstream.is_empty() {
            let one = Config::one_line(Vec::new(), self.upstream.clone());
            config.routes = one.routes;
            config.upstreams = one.upstreams;
        }
        if let Some(w) = self.workers {
            config.workers = w;
        }
        if let Some(m) = self.splice {
            config.splice = m;
        }
        if let Some(p) = &self.access_log {
            config.access_log.path.clone_from(p);
        }
        if let Some(f) = self.access_log_format {
            config.access_log.format = f;
        }
        if let Some(n) = self.max_connections {
            config.limits.max_connections = n;
        }
        if self.strict_tuning {
            config.strict_tuning = true;
        }
        if let Some(t) = self.idle_timeout {
            config.timeouts.idle = t;
        }
        if let Some(a) = self.admin {
            config.admin.listen = Some(a);
        }
        if let Some(t) = self.splice_after {
            config.relay.splice_after = t;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Returns the memory this thread freed to the system (see `runtime::Allocator`):
/// mimalloc otherwise keeps it resident until the thread allocates again.
fn release_freed_memory() {
    // SAFETY: `mi_collect` only walks and trims the calling thread's own mimalloc heap.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let (opts, check_only) = match &cli.command {
        Some(Command::Check(o)) => (o, true),
        None => (&cli.opts, cli.opts.test),
    };
    let result = opts.load().and_then(|config| {
        if check_only {
            let where_ = opts.config.as_ref().map_or_else(|| "command line".to_owned(), |p| p.display().to_string());
            println!("wsgate: configuration {where_} is valid");
            return Ok(());
        }
        wsgate::runtime::run(config, wsgate::runtime::Allocator { release: release_freed_memory })
            .context("wsgate stopped with an error")
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
