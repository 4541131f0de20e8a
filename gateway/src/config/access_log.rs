//! `[access_log]`: where the one line per connection goes, and in which format.
//!
//! Data only: this module never opens the log.

use serde::{Deserialize, Serialize};

/// Access log settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout`, `off`, or a file path (appended to).
    pub path: String,
    /// `text` (nginx-like) or `json` (one object per line).
    pub format: AccessLogFormat,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self { path: "stdout".into(), format: AccessLogFormat::Text }
    }
}

/// Access log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// `remote_addr - - [time_local] "request" status bytes ...` like nginx's `ws` format.
    Text,
    /// One JSON object per line.
    Json,
}
