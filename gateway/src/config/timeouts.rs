//! `[timeouts]`: how long each phase of a connection may take.
//!
//! Data only: this module never starts a timer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// On SIGTERM, plain HTTP exchanges in progress get this long to finish; WebSockets
    /// close over `drain.window`. Whatever is left is closed at the later of the two
    /// (`Config::stop_after`).
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// How long a client connection may wait, idle, for its next request after a
    /// response (nginx's `keepalive_timeout`); the next request's first byte starts
    /// `header`. `0s` closes after every response.
    #[serde(with = "humantime_serde")]
    pub client_keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            connect: Duration::from_secs(15),
            response: Duration::from_mins(1),
            idle: Duration::from_hours(1),
            drain: Duration::from_secs(30),
            client_keepalive: Duration::from_secs(75),
        }
    }
}
