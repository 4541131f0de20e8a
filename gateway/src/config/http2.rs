//! `[http2]`: HTTP/2 on TLS listeners (ALPN `h2`): WebSocket streams by extended
//! CONNECT (RFC 8441) and plain requests, with the limits one client connection may
//! not exceed.
//!
//! Data only: the protocol itself is `crate::h2`.

use serde::{Deserialize, Serialize};

/// HTTP/2 settings, the same for every TLS listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http2Config {
    /// Offer `h2` in ALPN on TLS listeners (beside `http/1.1`). Off: every TLS client
    /// speaks HTTP/1.1.
    pub enabled: bool,
    /// Streams one client may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`):
    /// each WebSocket over HTTP/2 is one.
    pub max_concurrent_streams: u32,
    /// Largest header list a client may send, in bytes (`SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub max_header_list_size: u32,
    /// Flow-control window of each stream, in bytes: what a client may send on one
    /// stream ahead of the upstream reading it, and what wsgate buffers per stream
    /// towards a slow client.
    pub stream_window: u32,
    /// Flow-control window of the whole connection, in bytes.
    pub connection_window: u32,
    /// Streams the client may reset in one second before its connection is closed
    /// (GOAWAY `ENHANCE_YOUR_CALM`): each stream may have cost an upstream connection,
    /// so a rapid-reset flood stops here.
    pub max_resets_per_second: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrent_streams: 128,
            max_header_list_size: 16 * 1024,
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
            max_resets_per_second: 100,
        }
    }
}
