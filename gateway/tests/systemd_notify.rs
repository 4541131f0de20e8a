//! The systemd `Type=notify` protocol over a real datagram socket standing in for the
//! service manager: `READY=1` only once wsgate accepts connections, `STATUS=` while it
//! runs, `RELOADING=1` (with `MONOTONIC_USEC=`) and `READY=1` around each SIGHUP,
//! `STOPPING=1` when SIGTERM starts the drain.

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

/// `CLOCK_MONOTONIC` now, in µs (what `MONOTONIC_USEC=` is compared with).
fn monotonic_usec() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec for the call's duration.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut t) }, 0);
    u64::try_from(t.tv_sec).unwrap() * 1_000_000 + u64::try_from(t.tv_nsec).unwrap() / 1000
}

/// The value of `KEY=` in a notification.
fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn reloading_then_ready_around_each_sighup_applied_or_refused() {
    let dir = TempDir::new();
    let path = dir.0.join("notify.sock");
    let manager = UnixDatagram::bind(&path).unwrap();
    let up = RawUpstream::switching(b"");
    let file = dir.0.join("wsgate.toml");
    let config = |extra: &str| {
        format!(
            "workers = 1\nsplice = \"userspace\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"u\"\n[upstream.u]\nservers = [\"{}\"]\n{extra}",
            up.addr
        )
    };
    std::fs::write(&file, config("")).unwrap();
    let mut gw =
        Gateway::builder().args(&["-c", file.to_str().unwrap()]).env("NOTIFY_SOCKET", path.to_str().unwrap()).start();
    wait_for(&manager, "READY=1");

    // Applied: RELOADING=1 with the clock of the request, then READY=1 with the new
    // generation.
    std::fs::write(&file, config("[timeouts]\nheader = \"3s\"\n")).unwrap();
    let before = monotonic_usec();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    let (reloading, _) = wait_for(&manager, "RELOADING=1");
    let stamp: u64 = field(&reloading, "MONOTONIC_USEC").expect("MONOTONIC_USEC=").parse().unwrap();
    assert!(stamp >= before && stamp <= monotonic_usec(), "{reloading}");
    let (ready, _) = wait_for(&manager, "READY=1");
    assert_eq!(field(&ready, "STATUS"), Some("configuration generation 2"), "{ready}");

    // Refused: still framed, the status says why.
    std::fs::write(&file, config("[timeouts]\nheader = \"soon\"\n")).unwrap();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(&manager, "RELOADING=1");
    let (ready, _) = wait_for(&manager, "READY=1");
    let status = field(&ready, "STATUS").unwrap();
    assert!(
        status.starts_with("reload refused (running generation 2)") && status.contains("timeouts.header"),
        "{ready}"
    );
    assert!(gw.running());
}
