//! Typed configuration: the TOML file, the one-line CLI form, defaults and `validate()`.
//!
//! Every field has a doc comment (this is the configuration reference) and a default.
//! Values with a syntax of their own (addresses, durations, `hash_key`,
//! `trusted_proxies`, `splice`) are parsed when the file is read; `validate()` checks
//! the rest. Both return errors that name the offending field, so `wsgate check` can
//! tell an operator exactly what to fix.
//!
//! Data only: the data plane imports this module, never the reverse. This module never
//! touches sockets or files other than the configuration file itself.

mod access_log;
mod admin;
mod admission;
mod cidr;
mod cli;
mod drain;
mod error;
mod hash_key;
mod health_check;
mod http2;
mod keepalive;
mod limits;
mod listener;
mod log;
mod relay;
mod reload;
mod route;
mod server_address;
mod timeouts;
mod tls;
mod upstream;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use access_log::{AccessLogConfig, AccessLogFormat};
pub use admin::AdminConfig;
pub use admission::AdmissionConfig;
pub use cidr::Cidr;
pub use cli::CliOptions;
pub use drain::DrainConfig;
pub use error::{ConfigError, ParseError};
pub use hash_key::HashKey;
pub use health_check::{HealthCheckConfig, parse_statuses};
pub use http2::Http2Config;
pub use keepalive::KeepaliveConfig;
pub use limits::{DEFAULT_MAX_HEADERS, Limits};
pub use listener::{ListenerConfig, Scheme};
pub use log::{LogConfig, LogFormat};
pub use relay::{DEFAULT_SPLICE_BUDGET, MIN_SPLICE_BUDGET, RelayConfig, SpliceMode};
pub use reload::{MAX_WATCH_TLS, MIN_WATCH_TLS, ReloadConfig};
pub use route::RouteConfig;
pub use server_address::ServerAddress;
pub use timeouts::Timeouts;
pub use tls::{SniCertConfig, TlsConfig, UpstreamTlsConfig, valid_sni_name};
pub use upstream::{Balance, ServerConfig, UpstreamConfig};

/// The whole configuration of one wsgate process.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Worker threads, each with its own `io_uring` runtime and `SO_REUSEPORT`
    /// listener. 0 means one per CPU (as a CPU quota counts them). Workers that cover
    /// the CPUs the process may run on are pinned, each to one of them in turn; fewer
    /// are left to the scheduler (narrow the process's CPUs, with `taskset` or
    /// systemd's `CPUAffinity=`, to pin them).
    pub workers: usize,
    /// How steady-state WebSocket bytes are relayed: `auto` (kernel sockmap splice
    /// when its start-up self-test passes, else userspace), `sockmap` (refuse to start
    /// without it) or `userspace`.
    pub splice: SpliceMode,
    /// Refuse to start when the kernel or process limits fall short of what this
    /// configuration needs (open files, somaxconn, port range) instead of warning.
    pub strict_tuning: bool,
    /// Addresses to accept client connections on.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Timeouts of the connection phases.
    pub timeouts: Timeouts,
    /// The paced drain after SIGTERM: Close 1001 to every WebSocket, spread over a window.
    pub drain: DrainConfig,
    /// Size and count limits.
    pub limits: Limits,
    /// Userspace relay buffers.
    pub relay: RelayConfig,
    /// Access log destination and format.
    pub access_log: AccessLogConfig,
    /// Routes, matched in order: the first whose host (if set) and path prefix match wins.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Upstream groups by name.
    #[serde(rename = "upstream")]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Per-client-address limits and which peers' forwarding headers are believed.
    pub admission: AdmissionConfig,
    /// The admin plane: metrics, health endpoints, live connection view.
    pub admin: AdminConfig,
    /// wsgate's own diagnostics on stderr (not the access log).
    pub log: LogConfig,
    /// TCP keepalive and `TCP_USER_TIMEOUT` on client and upstream sockets (dead peers).
    pub keepalive: KeepaliveConfig,
    /// HTTP/2 on TLS listeners: WebSocket over HTTP/2 (RFC 8441) and its limits.
    pub http2: Http2Config,
    /// Reloads without a signal: the TLS certificate files watched for changes.
    pub reload: ReloadConfig,
    /// File the process id is written to at start (removed at exit), for
    /// `wsgate reload` and `wsgate drain`. Unset (the default): none.
    pub pid_file: Option<std::path::PathBuf>,
}

impl Config {
    /// Reads and parses a TOML file (not yet validated).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        Self::from_toml(&text).map_err(|error| ConfigError::Parse { path: path.to_owned(), error })
    }

    /// Parses TOML text (not yet validated); an error names the field it is in.
    pub fn from_toml(text: &str) -> Result<Self, ParseError> {
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| ParseError::new(text, e))
    }

    /// The one-line form: every path of `listen` goes to one group of `upstreams`.
    pub fn one_line(listen: Vec<SocketAddr>, upstreams: Vec<SocketAddr>) -> Self {
        let servers = upstreams.into_iter().map(ServerConfig::at).collect();
        Self {
            listeners: listen.into_iter().map(ListenerConfig::on).collect(),
            routes: vec![RouteConfig::everything_to("default")],
            upstreams: BTreeMap::from([(
                "default".to_owned(),
                UpstreamConfig { servers, ..UpstreamConfig::default() },
            )]),
            ..Self::default()
        }
    }

    /// Worker count with 0 resolved to the number of CPUs.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

/// The example configuration shipped with wsgate (mirrors the nginx WebSocket recipe).
pub const EXAMPLE: &str = include_str!("../../wsgate.example.toml");

#[cfg(test)]
mod tests;
