//! `[keepalive]`: how a peer that vanished without a FIN or RST is found (TCP keepalive
//! probes, `TCP_USER_TIMEOUT`).
//!
//! Data only: this module never sets a socket option.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// TCP keepalive on every client and upstream socket, and `TCP_USER_TIMEOUT` for data
/// left unacknowledged. Values left at 0 keep the kernel's `net.ipv4.tcp_keepalive_*`
/// (what the tuning profiles set).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeepaliveConfig {
    /// Turns `SO_KEEPALIVE` on for client and upstream sockets (default true).
    pub enabled: bool,
    /// Silence before the first probe (`TCP_KEEPIDLE`); `0s` (the default) keeps the
    /// kernel's `net.ipv4.tcp_keepalive_time`.
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
