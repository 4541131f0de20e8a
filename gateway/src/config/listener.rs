//! `[[listener]]`: the addresses client connections are accepted on.
//!
//! Data only: this module never binds a socket.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::TlsConfig;

/// One listening address.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `IP:PORT` to bind (port 0 picks a free port, shared by all workers).
    pub address: SocketAddr,
    /// Listen backlog (capped by the kernel at `net.core.somaxconn`).
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// TLS on this listener (`tls = { cert = "…", key = "…" }`, and
    /// `[[listener.tls.sni]]` entries): clients speak `https`/`wss` here.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl ListenerConfig {
    /// What the listener speaks to clients (`X-Forwarded-Proto`): `https` when it
    /// carries TLS settings, plain HTTP otherwise.
    pub fn scheme(&self) -> Scheme {
        if self.tls.is_some() { Scheme::Https } else { Scheme::Http }
    }

    /// A listener on `address` with the default backlog.
    pub fn on(address: SocketAddr) -> Self {
        Self { address, backlog: default_backlog(), tls: None }
    }
}

/// The scheme a listener speaks to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

fn default_backlog() -> u32 {
    65535
}
