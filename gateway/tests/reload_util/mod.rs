//! The streaming WebSocket clients of the reload and upgrade tests (`client.py`,
//! Python `websockets`): every echoed message checked, one JSON report per connection;
//! and raw WebSockets that check one echo at a time.
#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::utils::{LineChild, read_head, status_of, upgrade_request};

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

/// Writes `path` as a whole (a reload never reads half a file).
pub fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Sends one binary message on a raw WebSocket and checks its echo byte for byte.
pub fn echo_once(s: &mut std::net::TcpStream, seq: usize) {
    use std::io::Write as _;
    let payload: Vec<u8> = (0..300 + seq * 997).map(|i| (i * 31 + seq * 7) as u8).collect();
    s.write_all(&crate::utils::client_frame(true, 2, &payload)).unwrap();
    let (fin, opcode, echoed) = crate::utils::server_frame(s);
    assert!(fin && opcode == 2 && echoed == payload, "message {seq}: not echoed whole");
}

/// A raw WebSocket through `addr`, upgraded.
pub fn websocket(addr: SocketAddr) -> std::net::TcpStream {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut s).0), 101);
    s
}
