//! Typed configuration: the TOML file, the one-line CLI form, defaults and `validate()`.
//!
//! Every field has a doc comment (this is the configuration reference) and a default.
//! `validate()` returns errors that name the offending field, so `wsgate check` can
//! tell an operator exactly what to fix. This module never touches sockets or files
//! other than the configuration file itself.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::upstream::address::ServerAddress;

/// The whole configuration of one wsgate process.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Worker threads, each pinned to a core with its own `io_uring` runtime and
    /// `SO_REUSEPORT` listener. 0 means one per CPU.
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
    /// Per-client-address limits and which peers' forwarding headers are believed.
    pub admission: AdmissionConfig,
    /// TCP keepalive and `TCP_USER_TIMEOUT` on client and upstream sockets (dead peers).
    pub keepalive: KeepaliveConfig,
}

/// How a peer that vanished without a FIN or RST is found: TCP keepalive probes on
/// every client and upstream socket, and `TCP_USER_TIMEOUT` for data left unacknowledged.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeepaliveConfig {
    /// Turns `SO_KEEPALIVE` on for client and upstream sockets (default true).
    pub enabled: bool,
    /// Silence before the first probe (`TCP_KEEPIDLE`); `0s` (the default) keeps the
    /// kernel's `net.ipv4.tcp_keepalive_time` (set by the tuning profiles).
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Between two unanswered probes (`TCP_KEEPINTVL`); `0s` keeps
    /// `net.ipv4.tcp_keepalive_intvl`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`, 0 to 127);
    /// 0 keeps `net.ipv4.tcp_keepalive_probes`.
    pub count: u32,
    /// Sent data left unacknowledged this long drops the connection
    /// (`TCP_USER_TIMEOUT`; it also bounds the keepalive probing); `0s` (the default):
    /// the kernel's retransmission limits.
    #[serde(with = "humantime_serde")]
    pub user_timeout: Duration,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        Self { enabled: true, idle: Duration::ZERO, interval: Duration::ZERO, count: 0, user_timeout: Duration::ZERO }
    }
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

impl ListenerConfig {
    /// What the listener speaks to clients: plain HTTP until a listener carries TLS
    /// settings (then `https`), so `X-Forwarded-Proto` follows the listener.
    pub fn scheme(&self) -> crate::http::Scheme {
        crate::http::Scheme::Http
    }
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
            response: Duration::from_mins(1),
            idle: Duration::from_hours(1),
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
    /// Most headers a request head may carry (default 256, 1 to 8192); more get 431.
    pub max_headers: usize,
    /// Largest upstream response head in bytes; larger ones get 502.
    pub max_response_header_bytes: usize,
    /// Connections this process holds at once (sizes kernel maps and the open-files
    /// preflight). Also the global admission limit: a request head arriving while this
    /// many connections are admitted is refused with `admission.status`.
    pub max_connections: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: crate::http::DEFAULT_MAX_HEADERS,
            max_response_header_bytes: 16 * 1024,
            max_connections: 100_000,
        }
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
    /// Kernel splice: bytes per direction the kernel may hold for a pair before the pair
    /// is relayed in userspace (with TCP flow control) until it drains. At least 65536.
    pub splice_budget: u64,
    /// Kernel splice: connections that end within this time are not worth splicing.
    /// While most recent WebSockets of a worker outlived it, new ones are spliced right
    /// after the 101; once most ended sooner, new ones start in the userspace relay and
    /// are handed to the kernel at their first quiet moment after this long. `0s`
    /// always splices at the 101.
    #[serde(with = "humantime_serde")]
    pub splice_after: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            buffer_size: 64 * 1024,
            pool_buffers: 64,
            splice_budget: crate::splice::DEFAULT_BUDGET,
            splice_after: Duration::from_secs(1),
        }
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

pub use crate::splice::SpliceMode;

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
    /// Origins allowed to open a WebSocket here (cross-site WebSocket hijacking
    /// protection), compared case-insensitively with the whole `Origin` value, e.g.
    /// `https://app.example.com`. Other origins get 403; a request without `Origin`
    /// (a non-browser client) is admitted. Empty (the default) allows every origin.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Connections admitted through this route at once; more get `admission.status`.
    /// 0 (the default) means no per-route limit.
    #[serde(default)]
    pub max_connections: u64,
}

fn default_path() -> String {
    "/".into()
}

/// A group of upstream servers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Servers of the group: `"ADDRESS"` or
    /// `{ address = "ADDRESS", weight = 2, backup = false, max_conns = 0 }`, where ADDRESS
    /// is `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` (a DNS name, resolved at start and
    /// every `resolve_interval`).
    pub servers: Vec<ServerConfig>,
    /// Which server a new connection goes to: `round_robin` (smooth weighted, the
    /// default), `least_conn` (fewest live connections relative to weight, counted
    /// across all workers), `ip_hash` (by client address) or `hash` (by `hash_key`).
    /// `ip_hash` and `hash` use consistent (rendezvous) hashing, so adding a server moves
    /// only about 1/N of the keys, and removing one moves only its own.
    pub balance: Balance,
    /// For `balance = "hash"`: `header:NAME`, `cookie:NAME` or `query:NAME`. A request
    /// without the key is balanced by client address.
    pub hash_key: Option<String>,
    /// Passive health: this many failed attempts (connect refused or timed out, reset or
    /// invalid response before the 101) within `fail_timeout` mark a server down for
    /// `fail_timeout`. 0 disables passive marking. Default 1 (nginx's default).
    pub max_fails: u32,
    /// Window for counting failures and how long a failed server stays down. Default 10s.
    #[serde(with = "humantime_serde")]
    pub fail_timeout: Duration,
    /// Servers tried for one connection before giving up with 502/503/504 (nginx's
    /// `proxy_next_upstream_tries`). 0 (the default) means every eligible server once.
    pub tries: usize,
    /// Local addresses upstream connections are made from, used in turn (nginx's
    /// `proxy_bind`), bound with `IP_BIND_ADDRESS_NO_PORT` so each address gets its own
    /// ~28k ports per upstream address. Empty (the default): the kernel picks.
    pub source_addresses: Vec<IpAddr>,
    /// Active health checks, run on the admin thread. Absent (the default): none.
    pub health_check: Option<HealthCheckConfig>,
    /// How often servers given by DNS name are resolved again (their first address,
    /// IPv4 first unless `source_addresses` are IPv6). `0s`: only at start. Default 30s.
    #[serde(with = "humantime_serde")]
    pub resolve_interval: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            balance: Balance::default(),
            hash_key: None,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            tries: 0,
            source_addresses: Vec::new(),
            health_check: None,
            resolve_interval: Duration::from_secs(30),
        }
    }
}

/// Balancing policy of an upstream group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest live connections relative to weight.
    LeastConn,
    /// Consistent hash of the client address.
    IpHash,
    /// Consistent hash of `hash_key`.
    Hash,
}

/// Active health checks of one group: an HTTP request to every server (backups too)
/// each `interval`, from the admin thread. Servers start in service; `fall` failed
/// checks in a row take one out, `rise` passed checks in a row bring it back.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Time between two checks of one server. Default 5s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time allowed for connecting and receiving the response head. Default 2s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive passed checks that bring a down server back. Default 2.
    pub rise: u32,
    /// Consecutive failed checks that take a server out. Default 3.
    pub fall: u32,
    /// Request target of the check. Default `/health`.
    pub path: String,
    /// Host header of the check. Default: the server's `IP:PORT`.
    pub host: Option<String>,
    /// Statuses that count as alive: `"200"`, `"2xx"` or `"200-299"`. Default 2xx and 3xx.
    pub statuses: Vec<String>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            path: "/health".into(),
            host: None,
            statuses: vec!["2xx".into(), "3xx".into()],
        }
    }
}

/// Parses `statuses` of a health check into inclusive ranges.
pub fn parse_statuses(specs: &[String]) -> Result<Vec<(u16, u16)>, String> {
    specs
        .iter()
        .map(|s| {
            let s = s.trim();
            let bad = || format!("`{s}` is not a status, `Nxx` or `LOW-HIGH` between 100 and 599");
            let range = if let Some(d) = s.strip_suffix("xx").filter(|d| d.len() == 1) {
                let d: u16 = d.parse().map_err(|_| bad())?;
                (d * 100, d * 100 + 99)
            } else if let Some((lo, hi)) = s.split_once('-') {
                (lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?)
            } else {
                let v: u16 = s.parse().map_err(|_| bad())?;
                (v, v)
            };
            if range.0 < 100 || range.1 > 599 || range.0 > range.1 {
                return Err(bad());
            }
            Ok(range)
        })
        .collect()
}

/// One upstream server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(from = "ServerSpec", into = "ServerSpec")]
pub struct ServerConfig {
    /// Where the server is: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`.
    pub address: ServerAddress,
    /// Relative share of new connections.
    pub weight: u32,
    /// Used only when no primary server is available.
    pub backup: bool,
    /// Live connections this server may hold (all workers together); 0 = no limit.
    pub max_conns: u64,
}

/// A server as written: an address string or a table. Deserialized by hand (not
/// `untagged`), so a bad address says what is wrong and what is accepted.
#[derive(Serialize)]
#[serde(untagged)]
enum ServerSpec {
    Address(ServerAddress),
    Full(FullServerSpec),
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FullServerSpec {
    address: ServerAddress,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    max_conns: u64,
}

impl<'de> Deserialize<'de> for ServerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Spec;
        impl<'de> serde::de::Visitor<'de> for Spec {
            type Value = ServerSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a server address (\"IP:PORT\" or \"HOST:PORT\") or a table with `address`")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ServerSpec, E> {
                ServerAddress::try_from(s.to_owned()).map(ServerSpec::Address).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ServerSpec, A::Error> {
                FullServerSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ServerSpec::Full)
            }
        }
        d.deserialize_any(Spec)
    }
}

fn default_weight() -> u32 {
    1
}

impl From<ServerSpec> for ServerConfig {
    fn from(s: ServerSpec) -> Self {
        match s {
            ServerSpec::Address(address) => Self { address, weight: 1, backup: false, max_conns: 0 },
            ServerSpec::Full(FullServerSpec { address, weight, backup, max_conns }) => {
                Self { address, weight, backup, max_conns }
            }
        }
    }
}

impl From<ServerConfig> for ServerSpec {
    fn from(s: ServerConfig) -> Self {
        Self::Full(FullServerSpec { address: s.address, weight: s.weight, backup: s.backup, max_conns: s.max_conns })
    }
}

/// Admission: limits per client address, and whose forwarding headers are believed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Connections one client address may hold at once (nginx's `limit_conn` on
    /// `$binary_remote_addr`). 0 (the default) means no limit.
    pub limit_conn: u32,
    /// Handshakes per second one client address may start (token bucket refill rate),
    /// against reconnect storms. 0 (the default) means no rate limit.
    pub rate: f64,
    /// Token bucket size: handshakes one address may start at once before `rate` applies.
    /// Default 20.
    pub burst: u32,
    /// Status of a refused connection: 503 (the default) or 429.
    pub status: u16,
    /// Peers (`IP` or `IP/PREFIX`) whose `X-Forwarded-For` / `X-Real-IP` are believed
    /// for limits, `ip_hash` and logs. From any other peer these headers are dropped and
    /// replaced by the peer's address. Empty (the default): nobody is believed.
    pub trusted_proxies: Vec<String>,
    /// Refusals are logged at most once per this period, with their count. Default 10s.
    #[serde(with = "humantime_serde")]
    pub log_period: Duration,
    /// Slots of the per-address tables (a power of two; 4 bytes each for `limit_conn`,
    /// 8 for `rate`, allocated only when that limit is on). Addresses that hash to one
    /// slot share its limit, so a limit is never exceeded, and is exact for every
    /// address that has its slot to itself. Default 1048576.
    pub table_slots: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            limit_conn: 0,
            rate: 0.0,
            burst: 20,
            status: 503,
            trusted_proxies: Vec::new(),
            log_period: Duration::from_secs(10),
            table_slots: 1 << 20,
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
        let servers = upstreams
            .into_iter()
            .map(|address| ServerConfig { address: ServerAddress::Ip(address), weight: 1, backup: false, max_conns: 0 })
            .collect();
        Self {
            listeners: listen
                .into_iter()
                .map(|address| ListenerConfig { address, backlog: default_backlog() })
                .collect(),
            routes: vec![RouteConfig {
                host: None,
                path: "/".into(),
                upstream: "default".into(),
                allowed_origins: Vec::new(),
                max_connections: 0,
            }],
            upstreams: BTreeMap::from([(
                "default".to_owned(),
                UpstreamConfig { servers, ..UpstreamConfig::default() },
            )]),
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
        let ka = &self.keepalive;
        for (field, d) in [("keepalive.idle", ka.idle), ("keepalive.interval", ka.interval)] {
            if d.as_secs() > 32767 || (!d.is_zero() && d.as_secs() == 0) {
                return Err(invalid(field, "must be 0s or whole seconds from 1s to 32767s"));
            }
        }
        if ka.count > 127 {
            return Err(invalid("keepalive.count", "must be between 0 and 127"));
        }
        if ka.user_timeout.as_millis() > u128::from(u32::MAX) {
            return Err(invalid("keepalive.user_timeout", "must be below 49 days"));
        }
        if !(1..=8192).contains(&self.limits.max_headers) {
            return Err(invalid("limits.max_headers", "must be between 1 and 8192"));
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
        if self.relay.splice_budget < crate::splice::MIN_BUDGET {
            return Err(invalid("relay.splice_budget", format!("must be at least {}", crate::splice::MIN_BUDGET)));
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
            if let Some(o) = r.allowed_origins.iter().find(|o| o.trim().is_empty() || o.contains(char::is_whitespace)) {
                return Err(invalid(
                    format!("route[{i}].allowed_origins"),
                    format!("`{o}` is not an origin (like `https://app.example.com`)"),
                ));
            }
        }
        self.validate_admission()?;
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
                return Err(invalid(
                    format!("upstream.{name}.servers"),
                    "needs at least one server that is not a backup",
                ));
            }
            validate_upstream(name, u)?;
        }
        Ok(())
    }

    fn validate_admission(&self) -> Result<(), ConfigError> {
        let a = &self.admission;
        if !a.rate.is_finite() || a.rate < 0.0 {
            return Err(invalid("admission.rate", "must be a number of handshakes per second, 0 or more"));
        }
        if a.rate > 0.0 && a.burst == 0 {
            return Err(invalid("admission.burst", "must be at least 1 when admission.rate is set"));
        }
        if !matches!(a.status, 429 | 503) {
            return Err(invalid("admission.status", "must be 503 or 429"));
        }
        for (i, p) in a.trusted_proxies.iter().enumerate() {
            crate::admission::Cidr::parse(p)
                .map_err(|reason| invalid(format!("admission.trusted_proxies[{i}]"), reason))?;
        }
        if a.log_period.is_zero() {
            return Err(invalid("admission.log_period", "must be greater than 0"));
        }
        if !a.table_slots.is_power_of_two() || !(64..=1 << 26).contains(&a.table_slots) {
            return Err(invalid("admission.table_slots", "must be a power of two between 64 and 67108864"));
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

fn validate_upstream(name: &str, u: &UpstreamConfig) -> Result<(), ConfigError> {
    let field = |f: &str| format!("upstream.{name}.{f}");
    match (u.balance, &u.hash_key) {
        (Balance::Hash, None) => {
            return Err(invalid(
                field("hash_key"),
                "is required with balance = \"hash\" (header:NAME, cookie:NAME or query:NAME)",
            ));
        }
        (Balance::Hash, Some(k)) => {
            crate::upstream::HashKey::parse(k).map_err(|reason| invalid(field("hash_key"), reason))?;
        }
        (_, Some(_)) => return Err(invalid(field("hash_key"), "is only used with balance = \"hash\"")),
        (_, None) => {}
    }
    if u.max_fails > 0 && u.fail_timeout.is_zero() {
        return Err(invalid(field("fail_timeout"), "must be greater than 0 when max_fails is set"));
    }
    for (i, a) in u.source_addresses.iter().enumerate() {
        if u.servers.iter().filter_map(|s| s.address.ip()).any(|s| s.is_ipv4() != a.is_ipv4()) {
            return Err(invalid(
                field(&format!("source_addresses[{i}]")),
                format!("{a} is not of the same address family as every server"),
            ));
        }
    }
    if let Some(h) = &u.health_check {
        let hf = |f: &str| field(&format!("health_check.{f}"));
        if h.interval.is_zero() {
            return Err(invalid(hf("interval"), "must be greater than 0"));
        }
        if h.timeout.is_zero() {
            return Err(invalid(hf("timeout"), "must be greater than 0"));
        }
        if h.rise == 0 {
            return Err(invalid(hf("rise"), "must be at least 1"));
        }
        if h.fall == 0 {
            return Err(invalid(hf("fall"), "must be at least 1"));
        }
        if !h.path.starts_with('/') || h.path.contains(char::is_whitespace) {
            return Err(invalid(hf("path"), format!("`{}` must start with `/` and hold no spaces", h.path)));
        }
        if h.host.as_deref().is_some_and(|v| v.is_empty() || v.contains(char::is_whitespace)) {
            return Err(invalid(hf("host"), "must be a host name without spaces"));
        }
        if h.statuses.is_empty() {
            return Err(invalid(hf("statuses"), "needs at least one status"));
        }
        parse_statuses(&h.statuses).map_err(|reason| invalid(hf("statuses"), reason))?;
    }
    Ok(())
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
        assert_eq!(c.timeouts.idle, Duration::from_hours(1));
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
    fn upstream_and_admission_fields_are_validated_by_name() {
        let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"g\"\n[upstream.g]\nservers = [\"127.0.0.1:1\"]\n";
        let check = |extra: &str| {
            // Bare keys land in [upstream.g], the last table of `base`.
            let text = format!("{base}{extra}");
            Config::from_toml(&text).map_err(|e| e.to_string()).and_then(|c| c.validate().map_err(|e| e.to_string()))
        };
        assert!(check("").is_ok());
        let full = "balance = \"hash\"\nhash_key = \"cookie:sid\"\nmax_fails = 2\nfail_timeout = \"3s\"\ntries = 2\nsource_addresses = [\"127.0.0.2\"]\n[upstream.g.health_check]\ninterval = \"1s\"\nstatuses = [\"200\", \"3xx\", \"401-403\"]\n[admission]\nlimit_conn = 10\nrate = 5.0\nstatus = 429\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n";
        assert!(check(full).is_ok(), "{:?}", check(full));
        for (extra, field) in [
            ("balance = \"hash\"\n", "upstream.g.hash_key:"),
            ("balance = \"hash\"\nhash_key = \"body:x\"\n", "upstream.g.hash_key:"),
            ("hash_key = \"header:x\"\n", "upstream.g.hash_key:"),
            ("source_addresses = [\"::1\"]\n", "upstream.g.source_addresses[0]:"),
            ("[upstream.g.health_check]\nrise = 0\n", "upstream.g.health_check.rise:"),
            ("[upstream.g.health_check]\npath = \"health\"\n", "upstream.g.health_check.path:"),
            ("[upstream.g.health_check]\nstatuses = [\"6xx\"]\n", "upstream.g.health_check.statuses:"),
            ("[admission]\nstatus = 500\n", "admission.status:"),
            ("[admission]\ntrusted_proxies = [\"10.0.0.0/40\"]\n", "admission.trusted_proxies[0]:"),
            ("[admission]\nrate = -1.0\n", "admission.rate:"),
            ("[admission]\ntable_slots = 1000\n", "admission.table_slots:"),
        ] {
            let e = check(extra).unwrap_err();
            assert!(e.starts_with(field), "{extra:?}: {e}");
        }
        let route = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"g\"\nallowed_origins = [\"\"]\n[upstream.g]\nservers = [\"127.0.0.1:1\"]\n";
        let e = Config::from_toml(route).unwrap().validate().unwrap_err().to_string();
        assert!(e.starts_with("route[0].allowed_origins:"), "{e}");
        assert_eq!(parse_statuses(&["2xx".into(), "404".into()]).unwrap(), vec![(200, 299), (404, 404)]);
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
