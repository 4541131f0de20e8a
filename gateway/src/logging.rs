//! Installs the subscriber of wsgate's own diagnostics (`tracing` events) on stderr:
//! text or JSON per `[log] format`, level from `RUST_LOG` (default `info`).
//!
//! Colours only when stderr is a terminal: escapes must never land in a log file or
//! journald. Every event carries its values as fields, so the JSON form holds them as
//! keys. This module never touches the access log.

use std::io::IsTerminal as _;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; call once, before the first event that matters.
pub fn init(cfg: &LogConfig) {
    let LogConfig { format } = cfg;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(false).with_span_list(false).init(),
    }
}
