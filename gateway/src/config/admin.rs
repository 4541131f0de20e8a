//! `[admin]`: where the admin plane (metrics, health endpoints, live connection view)
//! listens, if anywhere.
//!
//! Data only: this module never binds the listener.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The admin listener (`/metrics`, `/healthz`, `/readyz`, `/status`, `/connections`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener, e.g. `127.0.0.1:9090`; unset: no admin plane.
    /// Keep it off the data-plane port and off public networks.
    pub listen: Option<SocketAddr>,
}
