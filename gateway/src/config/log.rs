//! `[log]`: wsgate's own diagnostics on stderr (start-up, failures, health changes),
//! not the access log.
//!
//! Data only: `crate::logging` installs the subscriber; this module never writes a line.

use serde::{Deserialize, Serialize};

/// Diagnostics settings. The level comes from `RUST_LOG` (default `info`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (one line per event, coloured only when stderr is a terminal) or `json`
    /// (one object per line, every field of the event a key: for journald or a log
    /// shipper).
    pub format: LogFormat,
}

/// Diagnostics line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}
