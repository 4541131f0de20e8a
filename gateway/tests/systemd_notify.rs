//! The systemd `Type=notify` protocol over a real datagram socket standing in for the
//! service manager: `READY=1` only once wsgate accepts connections, `STATUS=` while it
//! runs, `STOPPING=1` when SIGTERM starts the drain.

mod utils;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use utils::{Gateway, RawUpstream, TempDir, status_of, upgrade_request};

/// Generous for a loaded 2-core machine: the messages come within milliseconds.
const WITHIN: Duration = Duration::from_secs(15);

/// The next datagram that contains `needle`, with every message seen before it.
fn wait_for(sock: &UnixDatagram, needle: &str) -> (String, Vec<String>) {
    let deadline = Instant::now() + WITHIN;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == needle) {
            return (msg, seen);
        }
        seen.push(msg);
    }
    panic!("no {needle} within {WITHIN:?}; seen: {seen:?}");
}

#[test]
fn ready_once_serving_status_while_running_stopping_at_sigterm() {
    let dir = TempDir::new();
    let path = dir.0.join("notify.sock");
    let manager = UnixDatagram::bind(&path).unwrap();
    let up = RawUpstream::switching(b"");
    let config = format!(
        "workers = 2\nsplice = \"userspace\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[timeouts]\ndrain = \"2s\"\n[drain]\nwindow = \"1s\"\njitter = 0.0\nclose_timeout = \"1s\"\n[[route]]\npath = \"/\"\nupstream = \"u\"\n[upstream.u]\nservers = [\"{}\"]\n",
        up.addr
    );
    let mut gw = Gateway::builder().config(&config).env("NOTIFY_SOCKET", path.to_str().unwrap()).start();

    let (ready, before) = wait_for(&manager, "READY=1");
    assert!(before.iter().all(|m| !m.contains("STOPPING")), "{before:?}");
    assert!(ready.lines().any(|l| l.starts_with("STATUS=listening on 1 address")), "{ready}");
    // Ready means serving: an upgrade through it works right away.
    let mut c = gw.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&head)), 101);

    // STATUS= keeps the live count (refreshed every 5 s).
    wait_for(&manager, "STATUS=1 active connections, 1 accepted");

    gw.terminate();
    let (stopping, _) = wait_for(&manager, "STOPPING=1");
    assert!(stopping.contains("STATUS=draining"), "{stopping}");
    assert!(gw.wait_exit(WITHIN), "wsgate did not exit after its drain");
}
