//! `[[listener]]`: the addresses client connections are accepted on.
//!
//! Data only: this module never binds a socket.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

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
    /// A listener on `address` with the default backlog.
    pub fn on(address: SocketAddr) -> Self {
        Self { address, backlog: default_backlog() }
    }
}

fn default_backlog() -> u32 {
    65535
}
