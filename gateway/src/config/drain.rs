//! `[drain]`: how a SIGTERM closes the live WebSockets — spread over a window, each
//! with a Close 1001 "going away", at a bounded rate.
//!
//! Data only: this module never starts a timer or closes a connection.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The paced drain after SIGTERM.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// The live WebSockets are closed spread over this long after SIGTERM (each worker
    /// closes its share on its own schedule), so clients reconnect elsewhere at a
    /// bounded rate instead of all at once (`--drain-window`).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Most WebSocket closes per second, the whole process together (0: no cap). When
    /// the cap is lower than the connections over the window, the drain takes longer.
    pub rate: f64,
    /// How much of each close's share of the window is random, from 0 (evenly spaced)
    /// to 1 (anywhere in its share), so nodes drained together do not close in step.
    pub jitter: f64,
    /// After sending a Close, how long to wait for the peer's Close (and, before that,
    /// for the end of a frame in progress) before closing the TCP connection anyway.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// After a binary upgrade hands over, how long the old process keeps what it could
    /// not pass before the paced drain closes it: meanwhile every userspace WebSocket
    /// still moves at its next quiet moment, and the rest (TLS, HTTP/2, pairs spliced
    /// with another eBPF program) serve on until they close; the old process exits as
    /// soon as it holds nothing. 0: the drain starts once nothing moved for 2 s.
    #[serde(with = "humantime_serde")]
    pub upgrade_grace: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            rate: 0.0,
            jitter: 1.0,
            close_timeout: Duration::from_secs(5),
            upgrade_grace: Duration::ZERO,
        }
    }
}

impl super::Config {
    /// How long after SIGTERM everything left is closed (`Stop`): once plain requests
    /// had `timeouts.drain` and every WebSocket its turn in the window, the end of its
    /// frame and its close handshake (each up to `close_timeout`). A `rate` too low for
    /// the connections over the window is cut short here.
    pub fn stop_after(&self) -> Duration {
        let d = &self.drain;
        self.timeouts.drain.max(d.window + d.close_timeout * 2)
    }
}
