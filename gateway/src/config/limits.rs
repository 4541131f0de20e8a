//! `[limits]`: sizes and counts a connection or the process may not exceed.
//!
//! Data only: this module never counts anything live.

use serde::{Deserialize, Serialize};

/// Default of `max_headers`: generous for browsers (which send 10–30 headers) and for
/// clients behind several proxies.
pub const DEFAULT_MAX_HEADERS: usize = 256;

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
    /// Requests one client connection may carry (nginx's `keepalive_requests`, default
    /// 1000); the response to the last one says `Connection: close`. 1: one request per
    /// connection.
    pub max_requests: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: DEFAULT_MAX_HEADERS,
            max_response_header_bytes: 16 * 1024,
            max_connections: 100_000,
            max_requests: 1000,
        }
    }
}
