//! `[reload]`: what reloads the running configuration besides SIGHUP and `wsgate
//! reload` — the TLS listeners' certificate files, watched for changes.
//!
//! Data only: this module never reads a certificate nor starts the watch
//! (`crate::reload::tls_watch` does).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Reloads that need no signal.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadConfig {
    /// How often the TLS listeners' `cert`, `key` and `ocsp` files (the default and
    /// every `sni` entry's) are checked for a change of size, modification time or
    /// inode. A change that then stays put for one more interval (a file still being
    /// written is not loaded) reloads the certificates as SIGHUP would, without
    /// dropping a connection; a bad new file keeps the certificates in service, with
    /// one error line per change. `0s` turns the watch off (SIGHUP still reloads).
    /// From 100ms to 1h.
    #[serde(with = "humantime_serde")]
    pub watch_tls: Duration,
}

/// Shortest `watch_tls` accepted (other than 0: off).
pub const MIN_WATCH_TLS: Duration = Duration::from_millis(100);
/// Longest `watch_tls` accepted.
pub const MAX_WATCH_TLS: Duration = Duration::from_hours(1);

impl Default for ReloadConfig {
    fn default() -> Self {
        Self { watch_tls: Duration::from_secs(5) }
    }
}
