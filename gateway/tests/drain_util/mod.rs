//! Shared harness of the drain tests: the strict Python `websockets` clients
//! (`client.py`, run with `/usr/bin/python3`, where `cargo xtask test` installs
//! `python3-websockets`), their per-connection results, and the checks every drain
//! test makes of them. Every wait is bounded; the client is killed on drop.
#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::utils::LineChild;

/// The client script, next to this file.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drain_util/client.py");

/// How one client connection ended (one JSON line of `client.py`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Ended {
    pub conn: usize,
    pub url: usize,
    pub code: Option<u16>,
    /// The close handshake completed without a protocol error.
    pub ok: bool,
    /// Wall-clock seconds.
    pub closed_at: Option<f64>,
    pub echoed: u64,
    pub bad: u64,
    pub error: Option<String>,
}

/// `n` streaming clients spread over `urls`.
pub struct Clients {
    child: LineChild,
    pub n: usize,
}

impl Clients {
    /// Starts the clients and waits until all `n` are open.
    pub fn open(n: usize, urls: &[String]) -> Self {
        Self::open_with(n, urls, 70_000)
    }

    /// Like [`Clients::open`], with messages of at most `max_size` bytes.
    pub fn open_with(n: usize, urls: &[String], max_size: usize) -> Self {
        Self::open_ca(n, urls, max_size, None)
    }

    /// Like [`Clients::open_with`]; `wss://` URLs trust the CA in the file `ca`.
    pub fn open_ca(n: usize, urls: &[String], max_size: usize, ca: Option<&std::path::Path>) -> Self {
        let mut command = Command::new("/usr/bin/python3");
        if let Some(ca) = ca {
            command.env("DRAIN_CA", ca);
        }
        let child = LineChild::spawn(
            command.arg(SCRIPT).env("DRAIN_MAX_SIZE", max_size.to_string()).arg(n.to_string()).args(urls),
            "/usr/bin/python3 (cargo xtask test installs python3-websockets)",
        );
        child.ready(n, Duration::from_mins(2));
        Self { child, n }
    }

    /// Every connection's end, waiting at most `within` in all.
    pub fn ended(&mut self, within: Duration) -> Vec<Ended> {
        let deadline = std::time::Instant::now() + within;
        let mut all = Vec::new();
        while all.len() < self.n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.child.line(left).unwrap_or_else(|| {
                panic!("only {} of {} client connections ended within {within:?}", all.len(), self.n)
            });
            all.push(serde_json::from_str::<Ended>(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
        all
    }
}

impl Clients {
    /// The ends of the next `k` connections to end, waiting at most `within` in all.
    pub fn next_ended(&mut self, k: usize, within: Duration) -> Vec<Ended> {
        let deadline = std::time::Instant::now() + within;
        (0..k)
            .map(|i| {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let line = self
                    .child
                    .line(left)
                    .unwrap_or_else(|| panic!("only {i} of {k} client connections ended within {within:?}"));
                serde_json::from_str::<Ended>(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
            })
            .collect()
    }

    /// Panics if a connection ends within `d` (all keep going that long).
    pub fn none_ends_for(&mut self, d: Duration) {
        if let Some(line) = self.child.line(d) {
            panic!("a client connection ended when none should: {line}");
        }
    }
}

/// Now, as wall-clock seconds (the clients' `closed_at` clock).
pub fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Every connection got a clean Close 1001, every echo it saw was its message, and it
/// saw at least one.
pub fn assert_all_going_away(ended: &[Ended]) {
    assert_going_away(ended);
    for e in ended {
        assert!(e.echoed > 0, "connection {} streamed nothing before the drain", e.conn);
    }
}

/// Every connection got a clean Close 1001, and every echo it saw was its message.
pub fn assert_going_away(ended: &[Ended]) {
    for e in ended {
        assert!(
            e.ok && e.code == Some(1001) && e.error.is_none(),
            "connection {} (gateway {}) did not end with a clean Close 1001: {e:?}",
            e.conn,
            e.url
        );
        assert_eq!(e.bad, 0, "connection {}: an echo differed from its message", e.conn);
    }
}

/// Close times in seconds after `start`, as a histogram of whole seconds.
pub fn histogram(ended: &[Ended], start: f64) -> Vec<(u64, usize)> {
    let mut h = std::collections::BTreeMap::new();
    for e in ended {
        let t = e.closed_at.expect("close time") - start;
        #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation, reason = "clamped to 0..3600 s")]
        let second = t.clamp(0.0, 3600.0) as u64;
        *h.entry(second).or_insert(0) += 1;
    }
    h.into_iter().collect()
}
