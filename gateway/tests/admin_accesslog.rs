//! The access log's admin-plane habits: `log_open = true` writes a line when a
//! WebSocket opens, and SIGUSR1 reopens the log file (logrotate) instead of ending
//! the process.

mod admin_util;
mod utils;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use admin_util::eventually;
use utils::{Gateway, RawUpstream, TempDir, read_head, status_of, upgrade_request};

fn config(upstream: std::net::SocketAddr, log: &std::path::Path) -> String {
    format!(
        "workers = 2\nsplice = \"userspace\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[access_log]\npath = \"{}\"\nlog_open = true\n[[route]]\nupstream = \"u\"\n[[upstream.u.servers]]\naddress = \"{upstream}\"\n",
        log.display()
    )
}

/// One WebSocket session: upgrade, then (after `while_open` ran) the client's FIN.
fn session(g: &Gateway, while_open: impl FnOnce()) {
    let mut c = g.connect();
    c.write_all(upgrade_request("/session", "").as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut c).0), 101);
    while_open();
    c.shutdown(Shutdown::Write).unwrap();
    let mut buf = [0u8; 256];
    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn has(path: &std::path::Path, needle: &str) -> bool {
    lines(path).iter().any(|l| l.contains(needle))
}

#[test]
fn log_open_writes_a_line_while_the_websocket_is_open() {
    let up = RawUpstream::switching(b"");
    let dir = TempDir::new();
    let log = dir.0.join("access.log");
    let g = Gateway::with_config(&config(up.addr, &log), &[]);
    session(&g, || {
        assert!(
            eventually(Duration::from_secs(5), || has(&log, "close=open")),
            "no open line while the WebSocket is open: {:?}",
            lines(&log)
        );
        assert!(!has(&log, "close=client_fin"), "{:?}", lines(&log));
    });
    assert!(eventually(Duration::from_secs(5), || has(&log, "close=client_fin")));
    let all = lines(&log);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all[0].contains("\"GET /session HTTP/1.1\" 101") && all[0].contains("close=open"), "{all:?}");
}

#[test]
fn sigusr1_reopens_the_access_log() {
    let up = RawUpstream::switching(b"");
    let dir = TempDir::new();
    let log = dir.0.join("access.log");
    let rotated = dir.0.join("access.log.1");
    let mut g = Gateway::with_config(&config(up.addr, &log), &[]);
    session(&g, || {});
    assert!(eventually(Duration::from_secs(5), || has(&log, "close=client_fin")));

    // What logrotate does: move the file away, then signal.
    std::fs::rename(&log, &rotated).unwrap();
    g.signal(nix::sys::signal::Signal::SIGUSR1);
    assert!(eventually(Duration::from_secs(5), || log.exists()), "the log file was not reopened");
    assert!(g.running(), "SIGUSR1 ended the process");
    session(&g, || {});
    assert!(eventually(Duration::from_secs(5), || has(&log, "close=client_fin")), "{:?}", lines(&log));
    assert_eq!(lines(&rotated).len(), 2, "the rotated file got lines after the reopen: {:?}", lines(&rotated));
    assert_eq!(lines(&log).len(), 2, "{:?}", lines(&log));
    assert!(g.running());
}
