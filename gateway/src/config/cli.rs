//! The command line's share of the configuration: where it comes from (`-c FILE` or
//! the one-line form) and the flags that override single fields of it.
//!
//! Every override is applied here, in one place, before `validate()`; this module
//! never starts anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{AccessLogFormat, Config, ConfigError, LogFormat, SpliceMode};

/// Configuration file and field overrides (the doc comments are `wsgate --help`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CliOptions {
    /// Configuration file (TOML). See wsgate.example.toml for every field.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address (repeatable); replaces the file's listeners.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain: makes the listeners (`--listen`, else the file's) TLS listeners.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Upstream server (repeatable); all paths go to this one group, replacing the file's routes.
    #[arg(long, value_name = "IP:PORT")]
    pub upstream: Vec<SocketAddr>,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Relay mode for WebSocket bytes.
    #[arg(long, value_enum)]
    pub splice: Option<SpliceMode>,
    /// Access log destination: stdout, off, or a file path.
    #[arg(long, value_name = "PATH")]
    pub access_log: Option<String>,
    /// Access log format.
    #[arg(long, value_enum)]
    pub access_log_format: Option<AccessLogFormat>,
    /// Format of wsgate's own diagnostics on stderr (`[log] format`).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Most connections held at once (sizes the splice maps and the preflight).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u64>,
    /// Refuse to start when kernel or process limits fall short (default: warn).
    #[arg(long)]
    pub strict_tuning: bool,
    /// Idle timeout of relayed connections (e.g. 3600s, 90s, 500ms).
    #[arg(long, value_parser = humantime_parse)]
    pub idle_timeout: Option<Duration>,
    /// Admin listener (metrics, health, live view), e.g. 127.0.0.1:9090.
    #[arg(long, value_name = "IP:PORT")]
    pub admin: Option<SocketAddr>,
    /// Hand WebSockets to the kernel splice once quiet for this long or carrying bulk
    /// (`relay.splice_after`; 0s: right after the 101).
    #[arg(long, value_parser = humantime_parse)]
    pub splice_after: Option<Duration>,
    /// Spread the Close 1001 of the live WebSockets over this long after SIGTERM
    /// (`drain.window`, e.g. 5s).
    #[arg(long, value_parser = humantime_parse)]
    pub drain_window: Option<Duration>,
    /// Write the process id here at start (`pid_file`); `wsgate reload` and
    /// `wsgate drain` read it.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

impl CliOptions {
    /// The configuration: file (or one-line form) with command-line overrides applied,
    /// validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None if !self.upstream.is_empty() => Config::one_line(Vec::new(), Vec::new()),
            None => return Err(ConfigError::Missing),
        };
        self.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Writes every given flag over its field.
    fn apply(&self, config: &mut Config) {
        // Every flag, by name: a new one cannot be left unapplied here.
        let Self {
            config: _,
            listen,
            tls_cert,
            tls_key,
            upstream,
            workers,
            splice,
            access_log,
            access_log_format,
            log_format,
            max_connections,
            strict_tuning,
            idle_timeout,
            splice_after,
            admin,
            drain_window,
            pid_file,
        } = self;
        if !listen.is_empty() {
            config.listeners = Config::one_line(listen.clone(), Vec::new()).listeners;
        }
        if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
            for l in &mut config.listeners {
                l.tls = Some(super::TlsConfig::default_only(cert.clone(), key.clone()));
            }
        }
        if !upstream.is_empty() {
            let one = Config::one_line(Vec::new(), upstream.clone());
            config.routes = one.routes;
            config.upstreams = one.upstreams;
        }
        if let Some(w) = *workers {
            config.workers = w;
        }
        if let Some(m) = *splice {
            config.splice = m;
        }
        if let Some(p) = access_log {
            config.access_log.path.clone_from(p);
        }
        if let Some(f) = *access_log_format {
            config.access_log.format = f;
        }
        if let Some(f) = *log_format {
            config.log.format = f;
        }
        if let Some(n) = *max_connections {
            config.limits.max_connections = n;
        }
        if *strict_tuning {
            config.strict_tuning = true;
        }
        if let Some(t) = *idle_timeout {
            config.timeouts.idle = t;
        }
        if let Some(t) = *splice_after {
            config.relay.splice_after = t;
        }
        if let Some(w) = *drain_window {
            config.drain.window = w;
        }
        if let Some(p) = pid_file {
            config.pid_file = Some(p.clone());
        }
        if let Some(a) = *admin {
            config.admin.listen = Some(a);
        }
    }
}
