//! `splice` and `[relay]`: how WebSocket bytes are relayed once the upgrade is done.
//!
//! Data only: the splice and the userspace relay read these values, this module never
//! loads a program or allocates a buffer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default per-direction budget of bytes the kernel may hold for a spliced pair.
pub const DEFAULT_SPLICE_BUDGET: u64 = 1 << 20;

/// Smallest accepted `relay.splice_budget`: one loopback skb can carry 64 KiB.
pub const MIN_SPLICE_BUDGET: u64 = 64 * 1024;

/// How connections are relayed after the 101 (`splice = "…"`, `--splice MODE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SpliceMode {
    /// The kernel splice when it loads and passes its self-test, else the userspace relay.
    #[default]
    Auto,
    /// The kernel splice or nothing: refuse to start when it is unavailable.
    Sockmap,
    /// Always the userspace relay.
    Userspace,
}

/// Userspace relay buffers: borrowed from a per-core pool only while bytes move.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Size of one relay buffer in bytes.
    pub buffer_size: usize,
    /// Buffers each worker keeps for reuse; more are allocated under load and freed after.
    pub pool_buffers: usize,
    /// Kernel splice: bytes per direction the kernel may hold for a pair before the pair
    /// is relayed in userspace (with TCP flow control) until it drains. At least 65536.
    pub splice_budget: u64,
    /// Kernel splice, `splice = "auto"`: a WebSocket starts in the userspace relay
    /// (shortest round trip for small messages) and is handed to the kernel once no byte
    /// has moved for this long, or once it carries bulk (over 4 MiB/s). `splice =
    /// "sockmap"`: connections that end within this time are not worth splicing; while
    /// most recent WebSockets of a worker outlived it, new ones are spliced right after
    /// the 101, else they start in userspace and are handed over at their first quiet
    /// moment after this long. `0s` always splices at the 101.
    #[serde(with = "humantime_serde")]
    pub splice_after: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            buffer_size: 64 * 1024,
            pool_buffers: 64,
            splice_budget: DEFAULT_SPLICE_BUDGET,
            splice_after: Duration::from_secs(1),
        }
    }
}
