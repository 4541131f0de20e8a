//! The streaming WebSocket clients of the reload and upgrade tests (`client.py`,
//! Python `websockets`): every echoed message checked, one JSON report per connection.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::utils::LineChild;

/// The streaming clients (`reload_util/client.py`).
pub struct Clients {
    child: LineChild,
    stop: PathBuf,
}

impl Clients {
    /// `n` streaming connections over `urls`, for at most `limit` seconds.
    pub fn open(n: usize, urls: &[String], ca: &Path, stop: PathBuf, limit: u32) -> Self {
        Self::open_quiet(n, urls, ca, stop, (limit, 0))
    }

    /// [`Clients::open`] where every `quiet_every`-th connection pauses 1.5–2.5 s
    /// between messages (0: none does).
    pub fn open_quiet(n: usize, urls: &[String], ca: &Path, stop: PathBuf, (limit, quiet_every): (u32, usize)) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reload_util/client.py");
        let child = LineChild::spawn(
            Command::new("/usr/bin/python3")
                .arg(script)
                .arg(&stop)
                .arg(n.to_string())
                .args(urls)
                .env("RELOAD_CA", ca)
                .env("RELOAD_LIMIT", limit.to_string())
                .env("RELOAD_QUIET_EVERY", quiet_every.to_string()),
            "/usr/bin/python3 (cargo xtask test installs python3-websockets)",
        );
        child.ready(n, Duration::from_mins(3));
        Self { child, stop }
    }

    /// Asks every connection to close (1000) and returns their reports.
    pub fn finish(&mut self, n: usize) -> Vec<serde_json::Value> {
        std::fs::write(&self.stop, b"stop").unwrap();
        (0..n)
            .map(|i| {
                let line = self.child.line(Duration::from_mins(1)).unwrap_or_else(|| panic!("only {i} of {n} reports"));
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
            })
            .collect()
    }
}
