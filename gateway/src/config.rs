//! Typed configuration: the TOML file, the one-line CLI form, defaults and `validate()`.
//!
//! Every field has a doc comment (this is the configuration reference) and a default.
//! `validate()` returns errors that name the offending field, so `wsgate check` can
//! tell an operator exactly what to fix. This module never touches sockets or files
//! other than the configuration file itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};


/// The whole configuration of one wsgate process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Worker threads, each pinned to a core with its own io_uring runtime and
    /// SO_REUSEPORT listener. 0 means one per CPU.
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
}

/// One listening address.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `IP:PORT` to bind (port 0 picks a free port, shared by all workers).
    pub address: SocketAddr,
    /// Listen backlog (capped by the kernel at `net.core.somaxconn`).
    #[serde(default = "default_backlog")]
    pub backlog: u32,
}

fn default_backlog() -> u32 {
    65535
}

/// Timeouts of the connection phases.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Time allowed for the client to send its whole request head (`client_header_timeout`).
    #[serde(with = "humantime_serde")]
    pub header: Duration,
    /// Time allowed to establish a TCP connection to one upstream server (`proxy_connect_timeout`).
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Time allowed for the upstream to send its response head after the request was forwarded.
    #[serde(with = "humantime_serde")]
    pub response: Duration,
    /// A relayed connection with no bytes in either direction for this long is closed
    /// (`proxy_read_timeout` / `proxy_send_timeout` of the recipe).
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// On SIGTERM, established connections get this long to finish before they are closed.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            connect: Duration::from_secs(15),
            response: Duration::from_secs(60),
            idle: Duration::from_secs(3600),
            drain: Duration::from_secs(30),
        }
    }
}

/// Size and count limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted request head in bytes; larger heads get 431.
    pub max_header_bytes: usize,
    /// Largest upstream response head in bytes; larger ones get 502.
    pub max_response_header_bytes: usize,
    /// Connections this process holds at once (sizes kernel maps and the open-files preflight).
    pub max_connections: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_header_bytes: 16 * 1024, max_response_header_bytes: 16 * 1024, max_connections: 100_000 }
    }
}

/// Userspace relay buffers: borrowed from a per-core pool only while bytes move.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Size of one relay buffer in bytes.
    pub buffer_size: usize,
    /// Buffers each worker keeps for reuse; more are allocated under load and freed after.
    pub pool_buffers: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self { buffer_size: 64 * 1024, pool_buffers: 64 }
    }
}

/// Access log settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout`, `off`, or a file path (appended to).
    pub path: String,
    /// `text` (nginx-like) or `json` (one object per line).
    pub format: AccessLogFormat,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self { path: "stdout".into(), format: AccessLogFormat::Text }
    }
}

/// How steady-state WebSocket bytes are relayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SpliceMode {
    /// Kernel sockmap splice when it loads and passes its self-test, else userspace.
    #[default]
    Auto,
    /// Kernel sockmap splice; refuse to start without it.
    Sockmap,
    /// Userspace io_uring relay only.
    Userspace,
}

/// Access log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// `remote_addr - - [time_local] "request" status bytes ...` like nginx's `ws` format.
    Text,
    /// One JSON object per line.
    Json,
}

/// One route: requests whose host and path match go to `upstream`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Host to match (without port, case-insensitive); absent matches any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix to match (`/ws/` matches `/ws/chat`).
    #[serde(default = "default_path")]
    pub path: String,
    /// Name of the upstream group (a key of `[upstream.NAME]`).
    pub upstream: String,
}

fn default_path() -> String {
    "/".into()
}

/// A group of upstream servers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Servers of the group: `"IP:PORT"` or `{ address = "IP:PORT", weight = 2, backup = false }`.
    pub servers: Vec<ServerConfig>,
}

/// One upstream server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(from = "ServerSpec", into = "ServerSpec")]
pub struct ServerConfig {
    /// `IP:PORT` of the server.
    pub address: SocketAddr,
    /// Relative share of new connections.
    pub weight: u32,
    /// Used only when no primary server is available.
    pub backup: bool,
}

#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum ServerSpec {
    Address(SocketAddr),
    Full {
        address: SocketAddr,
        #[serde(default = "default_weight")]
        weight: u32,
        #[serde(default)]
        backup: bool,
    },
}

fn default_weight() -> u32 {
    1
}

impl From<ServerSpec> for ServerConfig {
    fn from(s: ServerSpec) -> Self {
        match s {
            ServerSpec::Address(address) => Self { address, weight: 1, backup: false },
            ServerSpec::Full { address, weight, backup } => Self { address, weight, backup },
        }
    }
}

impl From<ServerConfig> for ServerSpec {
    fn from(s: ServerConfig) -> Self {
        Self::Full { address: s.address, weight: s.weight, backup: s.backup }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workers: 0,
            splice: SpliceMode::default(),
            strict_tuning: false,
            listeners: Vec::new(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            relay: RelayConfig::default(),
            access_log: AccessLogConfig::default(),
            routes: Vec::new(),
            upstreams: BTreeMap::new(),
        }
    }
}

/// A configuration problem, naming the field (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), reason: reason.into() }
}

impl Config {
    /// Reads and parses a TOML file (not yet validated).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }

    /// Parses TOML text (not yet validated).
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The one-line form: every path of `listen` goes to one group of `upstreams`.
    pub fn one_line(listen: Vec<SocketAddr>, upstreams: Vec<SocketAddr>) -> Self {
        let servers = upstreams.into_iter().map(|address| ServerConfig { address, weight: 1, backup: false }).collect();
        Self {
            listeners: listen.into_iter().map(|address| ListenerConfig { address, backlog: default_backlog() }).collect(),
            routes: vec![RouteConfig { host: None, path: "/".into(), upstream: "default".into() }],
            upstreams: BTreeMap::from([("default".to_owned(), UpstreamConfig { servers })]),
            ..Self::default()
        }
    }

    /// Checks every field; the first problem found is returned, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(invalid("listener", "at least one [[listener]] (or --listen) is required"));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.backlog == 0 {
                return Err(invalid(format!("listener[{i}].backlog"), "must be at least 1"));
            }
        }
        let t = &self.timeouts;
        for (name, d) in [
            ("timeouts.header", t.header),
            ("timeouts.connect", t.connect),
            ("timeouts.response", t.response),
            ("timeouts.idle", t.idle),
        ] {
            if d.is_zero() {
                return Err(invalid(name, "must be greater than 0"));
            }
        }
        if !(512..=1024 * 1024).contains(&self.limits.max_header_bytes) {
            return Err(invalid("limits.max_header_bytes", "must be between 512 and 1048576"));
        }
        if !(512..=1024 * 1024).contains(&self.limits.max_response_header_bytes) {
            return Err(invalid("limits.max_response_header_bytes", "must be between 512 and 1048576"));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.relay.buffer_size) {
            return Err(invalid("relay.buffer_size", "must be between 1024 and 16777216"));
        }
        if self.access_log.path.is_empty() {
            return Err(invalid("access_log.path", "must be `stdout`, `off` or a file path"));
        }
        if self.routes.is_empty() {
            return Err(invalid("route", "at least one [[route]] (or --upstream) is required"));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !r.path.starts_with('/') {
                return Err(invalid(format!("route[{i}].path"), format!("`{}` must start with `/`", r.path)));
            }
            if !self.upstreams.contains_key(&r.upstream) {
                return Err(invalid(
                    format!("route[{i}].upstream"),
                    format!("no upstream group named `{}` (define [upstream.{}])", r.upstream, r.upstream),
                ));
            }
            if r.host.as_deref().is_some_and(str::is_empty) {
                return Err(invalid(format!("route[{i}].host"), "must not be empty (omit it to match any host)"));
            }
        }
        for (name, u) in &self.upstreams {
            if u.servers.is_empty() {
                return Err(invalid(format!("upstream.{name}.servers"), "needs at least one server"));
            }
            for (i, s) in u.servers.iter().enumerate() {
                if s.weight == 0 {
                    return Err(invalid(format!("upstream.{name}.servers[{i}].weight"), "must be at least 1"));
                }
                if s.address.port() == 0 {
                    return Err(invalid(format!("upstream.{name}.servers[{i}].address"), "port must not be 0"));
                }
            }
            if u.servers.iter().all(|s| s.backup) {
                return Err(invalid(format!("upstream.{name}.servers"), "needs at least one server that is not a backup"));
            }
        }
        Ok(())
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
pub const EXAMPLE: &str = include_str!("../wsgate.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_valid() {
        let c = Config::from_toml(EXAMPLE).expect("example parses");
        c.validate().expect("example validates");
        assert_eq!(c.routes[0].path, "/ws/");
        assert_eq!(c.timeouts.idle, Duration::from_secs(3600));
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = Config::from_toml(EXAMPLE).unwrap();
        c.routes[0].upstream = "nope".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("route[0].upstream:"), "{e}");
        let e = Config::from_toml("[timeouts]\nheader = \"ten\"\n").unwrap_err().to_string();
        assert!(e.contains("header"), "{e}");
        let e = Config::from_toml("bogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn servers_accept_both_forms() {
        let c = Config::from_toml(
            "[upstream.a]\nservers = [\"127.0.0.1:1\", { address = \"127.0.0.1:2\", weight = 3, backup = true }]\n",
        )
        .unwrap();
        let s = &c.upstreams["a"].servers;
        assert_eq!((s[0].weight, s[0].backup), (1, false));
        assert_eq!((s[1].weight, s[1].backup), (3, true));
    }
}
