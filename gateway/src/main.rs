//! The `wsgate` command line: run the gateway, or check a configuration file.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wsgate::config::CliOptions;

#[global_allocator]
static GLOBAL: wsgate::alloc::Allocator = wsgate::alloc::Allocator;

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
    /// Kernel and limit tuning profiles: list, show, apply, verify, revert (an edge
    /// node needs no source tree: the package installs the profiles).
    Tune(tuning::cli::Options),
    /// Reload the running wsgate's configuration (SIGHUP to the pid in the pid file):
    /// new connections use the new file, live WebSockets keep flowing. Check the
    /// result in its log (or `wsgate_reloads` in the metrics).
    Reload(SignalOptions),
    /// Start the paced drain of the running wsgate (SIGTERM to the pid in the pid
    /// file): it stops accepting and closes its WebSockets with 1001 over
    /// `drain.window`, then exits. With `--wait`, returns once it has exited: a
    /// Kubernetes `preStop` hook (the kubelet's SIGTERM that follows then finds nothing
    /// to cut short).
    Drain(DrainOptions),
    /// Binary upgrade of the running wsgate (SIGUSR2 to the pid in the pid file): it
    /// starts the new binary, which self-tests and takes over the listeners and every
    /// WebSocket relayed in userspace, live; the old process drains what cannot move
    /// and exits. If the new binary fails to come up, the old one keeps everything.
    /// Check the result in its log.
    Upgrade(UpgradeOptions),
}

/// `wsgate upgrade`: which process, and which binary it starts.
#[derive(Debug, Clone, clap::Args)]
struct UpgradeOptions {
    #[command(flatten)]
    target: SignalOptions,
    /// The binary to start (default: the path the running process was started from).
    #[arg(long, value_name = "PATH")]
    binary: Option<std::path::PathBuf>,
}

/// `wsgate drain`: which process, and whether to wait for its end.
#[derive(Debug, Clone, clap::Args)]
struct DrainOptions {
    #[command(flatten)]
    target: SignalOptions,
    /// Return only once the process has exited (or the wait timeout passed: exit 1).
    #[arg(long)]
    wait: bool,
    /// The longest `--wait` (e.g. 90s).
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = humantime_serde::re::humantime::parse_duration)]
    wait_timeout: std::time::Duration,
}

/// Which running wsgate to signal.
#[derive(Debug, Clone, clap::Args)]
struct SignalOptions {
    /// The running process's pid file (`--pid-file` or `pid_file` it was started with).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pid_file: Option<std::path::PathBuf>,
    /// Or the configuration file whose `pid_file` names it.
    #[arg(short, long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

/// `wsgate reload` and `wsgate drain`: sends `signal` to the running process.
/// Returns the pid signalled, or `None` (said on stderr) when that failed.
fn signal_running(opts: &SignalOptions, signal: nix::sys::signal::Signal, what: &str) -> Option<i32> {
    let result = pid_file_of(opts).and_then(|pid_file| Ok(wsgate::reload::pid_file::signal(&pid_file, signal)?));
    match result {
        Ok(pid) => {
            println!("wsgate: {what} requested (pid {pid})");
            Some(pid)
        }
        Err(e) => {
            eprintln!("wsgate {what}: {e:#}");
            None
        }
    }
}

/// The pid file `opts` names.
fn pid_file_of(opts: &SignalOptions) -> anyhow::Result<std::path::PathBuf> {
    Ok(match (&opts.pid_file, &opts.config) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => {
            wsgate::config::Config::from_file(c)?.pid_file.ok_or(wsgate::reload::pid_file::SignalError::NoPidFile)?
        }
        (None, None) => anyhow::bail!(wsgate::reload::pid_file::SignalError::NoPidFile),
    })
}

/// `wsgate upgrade`: names the binary next to the pid file (when given), then SIGUSR2.
fn upgrade(opts: &UpgradeOptions) -> ExitCode {
    if let Some(binary) = &opts.binary {
        let written = pid_file_of(&opts.target).and_then(|pid_file| {
            let binary =
                std::fs::canonicalize(binary).map_err(|e| anyhow::anyhow!("--binary {}: {e}", binary.display()))?;
            let file = wsgate::upgrade::parent::request_file(&pid_file);
            std::fs::write(&file, binary.as_os_str().as_encoded_bytes())
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))
        });
        if let Err(e) = written {
            eprintln!("wsgate upgrade: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    match signal_running(&opts.target, nix::sys::signal::Signal::SIGUSR2, "binary upgrade") {
        Some(_) => ExitCode::SUCCESS,
        None => ExitCode::FAILURE,
    }
}

/// `wsgate drain`: SIGTERM, then (with `--wait`) until the process is gone.
fn drain(opts: &DrainOptions) -> ExitCode {
    let Some(pid) = signal_running(&opts.target, nix::sys::signal::Signal::SIGTERM, "drain") else {
        return ExitCode::FAILURE;
    };
    if !opts.wait {
        return ExitCode::SUCCESS;
    }
    let started = std::time::Instant::now();
    while alive(pid) {
        if started.elapsed() >= opts.wait_timeout {
            eprintln!("wsgate drain: pid {pid} still running after {:?}", opts.wait_timeout);
            return ExitCode::FAILURE;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!("wsgate: pid {pid} drained and exited after {:.1} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

/// Whether process `pid` still runs: it exists and is not a zombie (an exited child
/// its parent has not reaped yet has drained all the same). A zombie main thread whose
/// other threads are still exiting (a worker tearing down its rings) is still running:
/// its parent cannot reap it yet.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        match state {
            Some("Z" | "X") => threads(pid) > 1,
            None => false,
            Some(_) => true,
        }
    })
}

/// Threads of process `pid` that have not exited (its `/proc` task entries).
fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)
}

/// Where the package installs the tuning profiles.
const INSTALLED_PROFILES: &str = "/usr/share/wsgate/profiles";

#[derive(Debug, Clone, clap::Args)]
struct RunOptions {
    #[command(flatten)]
    cli: CliOptions,
    /// Check the configuration and exit (same as `wsgate check`).
    #[arg(short = 't', long = "test")]
    test: bool,
}

/// `wsgate tune`: the installed profiles, else the ones of the source tree it was built from.
fn tune(opts: &tuning::cli::Options) -> ExitCode {
    let installed = std::path::Path::new(INSTALLED_PROFILES);
    let dir = if installed.is_dir() { installed.to_path_buf() } else { tuning::shipped_profiles_dir() };
    match tuning::cli::run(opts, &dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate tune: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns the memory this thread freed to the system (see `runtime::Allocator`):
/// mimalloc otherwise keeps it resident until the thread allocates again.
fn release_freed_memory() {
    // SAFETY: `mi_collect` only walks and trims the calling thread's own mimalloc heap.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// `wsgate check` for TLS listeners: every certificate and key is read, each key
/// must match its certificate, each chain must be in order, each OCSP response must be
/// for its certificate, and certificates (and staples) that expire soon are warned
/// about. Says whether the kernel has kTLS. The CA, client certificate and key of
/// each TLS upstream group are read and checked the same way.
fn check_tls(config: &wsgate::config::Config) -> anyhow::Result<()> {
    if config.listeners.iter().any(|l| l.tls.is_some()) {
        println!("wsgate: {}", wsgate::tls::ktls::probe());
    }
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let field = format!("listener[{i}].tls");
        let loaded = wsgate::tls::acceptor::load(&field, tls)?;
        for warning in loaded.expiry_warnings() {
            println!("wsgate: warning: {warning}");
        }
        wsgate::tls::Acceptor::new(&field, tls, &loaded)?;
    }
    for (name, u) in &config.upstreams {
        if let Some(tls) = &u.tls {
            wsgate::tls::Connector::from_config(&format!("upstream.{name}.tls"), tls)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (opts, check_only) = match &cli.command {
        Some(Command::Check(o)) => (o, true),
        Some(Command::Tune(t)) => return tune(t),
        Some(Command::Reload(s)) => {
            let signalled = signal_running(s, nix::sys::signal::Signal::SIGHUP, "reload");
            return if signalled.is_some() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
        Some(Command::Drain(d)) => return drain(d),
        Some(Command::Upgrade(u)) => return upgrade(u),
        None => (&cli.opts, cli.opts.test),
    };
    let result = opts.cli.load().map_err(anyhow::Error::from).and_then(|config| {
        if check_only {
            check_tls(&config)?;
            let where_ =
                opts.cli.config.as_ref().map_or_else(|| "command line".to_owned(), |p| p.display().to_string());
            println!("wsgate: configuration {where_} is valid");
            return Ok(());
        }
        wsgate::logging::init(&config.log);
        let allocator = wsgate::runtime::Allocator { release: release_freed_memory };
        wsgate::runtime::run(config, opts.cli.clone(), allocator).context("wsgate stopped with an error")
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
