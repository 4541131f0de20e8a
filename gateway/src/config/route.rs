//! `[[route]]`: which requests go to which upstream group, and who may open them.
//!
//! Data only: matching is the router's, admission the admission module's.

use serde::{Deserialize, Serialize};

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

impl RouteConfig {
    /// A route sending every path of every host to `upstream`, without limits.
    pub fn everything_to(upstream: &str) -> Self {
        Self {
            host: None,
            path: default_path(),
            upstream: upstream.to_owned(),
            allowed_origins: Vec::new(),
            max_connections: 0,
        }
    }
}

fn default_path() -> String {
    "/".into()
}
