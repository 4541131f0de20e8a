//! `[admission]`: per-client-address limits, and whose forwarding headers are believed.
//!
//! Data only: the live counts are the admission module's; this module never counts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Cidr;

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
    pub trusted_proxies: Vec<Cidr>,
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
