//! The drain's close reasons are counted: at SIGTERM, WebSockets get their Close 1001
//! at their turn in `drain.window` (`close=drain`), relayed in userspace or spliced
//! alike; the access log and the closed-by-reason counter in the process's last line
//! say so.
//!
//! The admin plane stops with the process, right after the last connection closes,
//! so no scrape can be sure to see the last closes; the counter the scrape reads is
//! written out instead ("connections closed by reason: …").

mod admin_util;
mod splice_util;
mod utils;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use admin_util::{admin_addr, count, eventually, scrape};
use utils::{Gateway, RawUpstream, read_head, status_of, upgrade_request};

/// WebSockets open at SIGTERM.
const OPEN: usize = 2;

fn config(upstream: std::net::SocketAddr, splice: &str) -> String {
    format!(
        "workers = 2\nsplice = \"{splice}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[relay]\nsplice_after = \"0s\"\n[timeouts]\ndrain = \"1s\"\n[drain]\nwindow = \"1s\"\nclose_timeout = \"1s\"\n[[route]]\nupstream = \"u\"\n[[upstream.u.servers]]\naddress = \"{upstream}\"\n"
    )
}

/// An upgraded WebSocket that echoed 100 bytes once.
fn open_and_echo(g: &Gateway) -> TcpStream {
    let mut c = g.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (head, _) = read_head(&mut c);
    assert_eq!(status_of(&head), 101, "{head}");
    c.write_all(&[3u8; 100]).unwrap();
    let mut back = [0u8; 100];
    c.read_exact(&mut back).unwrap();
    c
}

/// SIGTERMs a wsgate relaying in `mode` (`userspace` or `sockmap`) with [`OPEN`] live
/// WebSockets, and checks that each is counted closed by `reason`.
fn sigterm_counts_drain_closes(mode: &str, reason: &str) {
    let up = RawUpstream::switching(b"");
    let mut g = Gateway::builder().config(&config(up.addr, mode)).log_level("info").start();
    let admin = admin_addr(&g);
    let mut conns: Vec<TcpStream> = (0..OPEN).map(|_| open_and_echo(&g)).collect();
    let relay = if mode == "sockmap" { "splice" } else { "userspace" };
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            text = scrape(admin);
            count(&text, "wsgate_connections_active", &[("mode", relay)]) == OPEN
        }),
        "the WebSockets are not all relayed by {relay}:\n{text}"
    );
    assert_eq!(count(&text, "wsgate_connections_closed_total", &[("reason", "shutdown")]), 0);

    g.terminate();
    assert!(eventually(Duration::from_secs(5), || count(&scrape(admin), "wsgate_draining", &[]) == 1));

    // The window is 1 s: wsgate closes them and exits.
    for c in &mut conns {
        let mut buf = [0u8; 256];
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    }
    assert!(g.wait_exit(Duration::from_secs(20)), "wsgate did not exit cleanly");
    g.wait_stderr("connections closed by reason:", Duration::from_secs(10));
    let last = g.stderr().into_iter().find(|l| l.contains("connections closed by reason:")).unwrap();
    let reasons = last.split("connections closed by reason:").nth(1).unwrap().trim().to_owned();
    assert_eq!(reasons, format!("{reason}={OPEN}"), "{last}");
    let closes: Vec<String> = g.log_lines().into_iter().filter(|l| l.contains(" 101 ")).collect();
    assert_eq!(closes.len(), OPEN, "{closes:#?}");
    let mode_field = if mode == "sockmap" { "mode=splice" } else { "mode=userspace" };
    let close_field = format!("close={reason}");
    assert!(closes.iter().all(|l| l.contains(&close_field) && l.contains(mode_field)), "{closes:#?}");
}

#[test]
fn sigterm_counts_userspace_websockets_closed_by_drain() {
    sigterm_counts_drain_closes("userspace", "drain");
}

#[test]
fn sigterm_counts_spliced_websockets_closed_by_drain() {
    if splice_util::splicer_or_skip("admin_shutdown_spliced", 16, 1 << 20).is_none() {
        return;
    }
    sigterm_counts_drain_closes("sockmap", "drain");
}
