//! `[upstream.NAME]`: a group of servers, how a connection picks one, and when a
//! server counts as down.
//!
//! Data only: live state (counts, failure marks, health verdicts) is the upstream
//! module's; this module never connects anywhere.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{HashKey, HealthCheckConfig, ServerAddress, UpstreamTlsConfig};

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
    pub hash_key: Option<HashKey>,
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
    /// Idle connections to this group's servers each worker keeps for the next plain
    /// HTTP request (nginx's `keepalive`). 0 (the default, as in nginx): none, and plain
    /// requests go upstream with `Connection: close`; otherwise they go as persistent
    /// HTTP/1.1, and a connection whose response was completely framed goes back to
    /// the worker's pool (oldest dropped beyond this count).
    pub keepalive: usize,
    /// How long an idle pooled connection is kept (nginx's `keepalive_timeout`). Default 60s.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Requests one pooled upstream connection carries before it is closed (nginx's
    /// `keepalive_requests`). Default 1000.
    pub keepalive_requests: u32,
    /// Connections to the servers speak TLS (`wss://` upstreams): `true`, or a table
    /// with `server_name`, `ca`, `cert` and `key` (see [`UpstreamTlsConfig`]). TLS pairs
    /// are relayed in userspace (no kTLS here); `keepalive` pools TLS connections as it
    /// does plain ones. Default: plain TCP.
    #[serde(with = "super::tls::upstream_tls")]
    pub tls: Option<UpstreamTlsConfig>,
    /// On a reload whose configuration removes a server from this group, the live
    /// WebSockets relayed in userspace to that server get a Close 1001 "going away" at
    /// a frame boundary, spread over `drain.window` as in the SIGTERM drain (access
    /// log `close=removed`). Spliced pairs keep flowing. Default false: they all run to
    /// their natural end.
    pub drain_removed: bool,
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
            keepalive: 0,
            keepalive_timeout: Duration::from_mins(1),
            keepalive_requests: 1000,
            tls: None,
            drain_removed: false,
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

impl ServerConfig {
    /// A primary server of weight 1 without a connection limit.
    pub fn at(address: SocketAddr) -> Self {
        Self { address: ServerAddress::Ip(address), weight: 1, backup: false, max_conns: 0 }
    }
}

/// The two ways to write a server: its bare address, or a table. Deserialized by hand
/// (not `untagged`), so a bad address says what is wrong and what is accepted.
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
        let ServerConfig { address, weight, backup, max_conns } = s;
        Self::Full(FullServerSpec { address, weight, backup, max_conns })
    }
}
