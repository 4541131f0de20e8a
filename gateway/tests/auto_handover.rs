//! `splice = "auto"` picks the faster path per WebSocket, over real sockets and the real
//! kernel splice: a pair that keeps exchanging small messages stays in the userspace
//! relay (where a small message's round trip is shortest), a pair that goes quiet for
//! `splice_after` or carries bulk is handed to the kernel; every byte arrives once, in
//! order, and the access log says which path the pair took.

mod admin_util;
mod splice_util;
mod utils;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use admin_util::{admin_addr, count, eventually, scrape};
use utils::{Gateway, RawUpstream, client_frame, read_exact, read_head, read_to_eof, status_of, upgrade_request};

/// One worker in `auto` mode with the admin plane on, handing pairs over after `after`.
fn gateway(upstream: SocketAddr, after: &str) -> Gateway {
    Gateway::with_config(
        &format!(
            "workers = 1\nsplice = \"auto\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[relay]\nsplice_after = \"{after}\"\n[[route]]\nupstream = \"u\"\n[[upstream.u.servers]]\naddress = \"{upstream}\"\n"
        ),
        &[],
    )
}

/// An upgraded client connection and the length of the 101 head it read.
fn upgrade(g: &Gateway) -> (TcpStream, usize) {
    let mut c = g.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (head, early) = read_head(&mut c);
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(early.is_empty());
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    (c, head.len())
}

/// A WebSocket through one `auto` worker that hands pairs over after `after`, behind
/// an echo upstream. `None` (said loudly) where the kernel splice cannot run here.
struct AutoPair {
    _upstream: RawUpstream,
    gw: Gateway,
    admin: SocketAddr,
    client: TcpStream,
    /// Length of the 101 head the client read (the access log's `out` counts it).
    head: u64,
}

fn auto_pair(test: &str, after: &str) -> Option<AutoPair> {
    splice_util::splicer_or_skip(test, 16, 1 << 20)?;
    let upstream = RawUpstream::switching(b"");
    let gw = gateway(upstream.addr, after);
    let admin = admin_addr(&gw);
    let (client, head) = upgrade(&gw);
    Some(AutoPair { _upstream: upstream, gw, admin, client, head: head as u64 })
}

/// Connections of the only worker in `mode` now, from `/metrics`.
fn active(admin: SocketAddr, mode: &str) -> usize {
    count(&scrape(admin), "wsgate_connections_active", &[("mode", mode)])
}

/// A client frame of `len` bytes whose payload names its message number.
fn message(i: u64, len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8)).collect();
    client_frame(true, 0x2, &payload)
}

/// Sends `n` small messages (numbered from `first`), each echoed byte for byte before
/// the next, `gap` apart; returns the bytes sent.
fn exchange(c: &mut TcpStream, first: u64, n: u64, gap: Duration) -> u64 {
    let mut sent = 0;
    for i in first..first + n {
        let f = message(i, 64);
        c.write_all(&f).unwrap();
        assert_eq!(read_exact(c, f.len()), f, "message {i} came back changed");
        sent += f.len() as u64;
        std::thread::sleep(gap);
    }
    sent
}

/// Closes the client's side, reads the upstream's FIN, and returns the access log line.
fn close(g: &Gateway, mut c: TcpStream) -> String {
    c.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut c).is_empty(), "bytes after the last echo");
    g.wait_log("\"GET / HTTP/1.1\" 101 ").trim_end().to_owned()
}

#[test]
fn a_websocket_that_keeps_exchanging_small_messages_stays_in_userspace() {
    let Some(AutoPair { _upstream, gw: g, admin, client: mut c, head }) =
        auto_pair("auto_chatty_stays_userspace", "3s")
    else {
        return;
    };
    // 200 round trips 20 ms apart: over 4 s, past the first look at 3 s, never quiet.
    let started = Instant::now();
    let sent = exchange(&mut c, 0, 200, Duration::from_millis(20));
    assert!(started.elapsed() > Duration::from_secs(3), "the exchange ended before the relay looked");
    assert_eq!(active(admin, "userspace"), 1, "the pair left the userspace relay while it exchanged messages");
    assert_eq!(active(admin, "splice"), 0);
    let line = close(&g, c);
    assert!(line.ends_with(&format!(" in={sent} out={} close=client_fin mode=userspace", sent + head)), "{line}");
}

#[test]
fn a_websocket_that_goes_quiet_is_handed_to_the_kernel_and_keeps_every_byte() {
    let Some(AutoPair { _upstream, gw: g, admin, client: mut c, head }) =
        auto_pair("auto_quiet_goes_to_kernel", "300ms")
    else {
        return;
    };
    let mut sent = exchange(&mut c, 0, 20, Duration::ZERO);
    assert!(
        eventually(Duration::from_secs(20), || active(admin, "splice") == 1),
        "a quiet pair was not handed to the kernel"
    );
    // Through the kernel now: still every byte, in order.
    sent += exchange(&mut c, 20, 50, Duration::ZERO);
    let line = close(&g, c);
    assert!(
        line.ends_with(&format!(" in={sent} out={} close=client_fin mode=userspace+splice", sent + head)),
        "{line}"
    );
}

/// Sends 64 KiB messages, each echoed byte for byte before the next (bulk with the gaps
/// of a request–response exchange: a pair saturated both ways has no quiet moment to be
/// handed over in), until `stop` (bounded to 60 s); records the longest pause between
/// two messages in `longest_gap_ms`. Returns the bytes sent.
fn bulk_exchange(c: &mut TcpStream, stop: &AtomicBool, longest_gap_ms: &AtomicU64) -> u64 {
    let messages: Vec<Vec<u8>> = (0..16).map(|i| message(i, 64 * 1024)).collect();
    let (started, mut last, mut sent) = (Instant::now(), Instant::now(), 0u64);
    let mut back = vec![0u8; messages[0].len()];
    for (i, frame) in messages.iter().cycle().enumerate() {
        if stop.load(Ordering::Relaxed) || started.elapsed() >= Duration::from_mins(1) {
            break;
        }
        c.write_all(frame).unwrap();
        c.read_exact(&mut back).unwrap();
        assert!(back == *frame, "message {i} came back changed");
        longest_gap_ms.fetch_max(u64::try_from(last.elapsed().as_millis()).unwrap(), Ordering::Relaxed);
        last = Instant::now();
        sent += frame.len() as u64;
    }
    sent
}

#[test]
fn a_websocket_that_carries_bulk_is_handed_to_the_kernel_while_it_streams() {
    let Some(AutoPair { _upstream, gw, admin, mut client, head }) = auto_pair("auto_bulk_goes_to_kernel", "2s") else {
        return;
    };
    // A pause of `splice_after` would make the pair idle, not bulk: the exchange records
    // its longest one.
    let stop = Arc::new(AtomicBool::new(false));
    let longest_gap_ms = Arc::new(AtomicU64::new(0));
    let exchange = {
        let (stop, gap) = (stop.clone(), longest_gap_ms.clone());
        std::thread::spawn(move || {
            let sent = bulk_exchange(&mut client, &stop, &gap);
            (client, sent)
        })
    };
    let spliced = eventually(Duration::from_mins(1), || active(admin, "splice") == 1);
    // Some more bulk through the kernel, then the end.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (client, sent) = exchange.join().unwrap();
    assert!(spliced, "a pair carrying bulk was not handed to the kernel within 60 s");
    let gap = longest_gap_ms.load(Ordering::Relaxed);
    assert!(gap < 2000, "the exchange paused {gap} ms: the pair went quiet, so this does not show the bulk rule");
    let line = close(&gw, client);
    assert!(
        line.ends_with(&format!(" in={sent} out={} close=client_fin mode=userspace+splice", sent + head)),
        "{line}"
    );
}

#[test]
fn a_last_message_with_the_fin_right_behind_it_reaches_the_upstream_whole() {
    // In the userspace relay past its first reads (waiting edge-triggered), bytes and a
    // FIN that arrive in one segment must both be passed on: one edge brings both.
    let up = RawUpstream::switching(b"");
    let gw = Gateway::one_line(&[up.addr], &["--splice", "userspace"]);
    for round in 0..20u64 {
        let mut c = gw.connect();
        c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
        let (head, _) = read_head(&mut c);
        assert_eq!(status_of(&head), 101, "{head}");
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut sent = exchange(&mut c, round * 100, 12, Duration::ZERO);
        // Corked: the message and the FIN leave in one segment, so the relay sees them
        // in one wake.
        socket2::SockRef::from(&c).set_cork(true).unwrap();
        let last = message(round * 100 + 99, 64);
        c.write_all(&last).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        socket2::SockRef::from(&c).set_cork(false).unwrap();
        sent += last.len() as u64;
        assert_eq!(read_to_eof(&mut c), last, "round {round}: the last message or the FIN was lost");
        let line = gw.wait_log(&format!(" in={sent} out={} ", sent + head.len() as u64));
        assert!(line.trim_end().ends_with("close=client_fin mode=userspace"), "{line}");
    }
}
