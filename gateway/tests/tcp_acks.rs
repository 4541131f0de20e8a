//! Fewer segments per connection: wsgate's ACK of a client's request head rides on its
//! answer (the listener's `TCP_QUICKACK` off, as HAProxy's `tcp-smart-accept`), and the
//! last ACK of the handshake with an upstream rides on the request head
//! (`tcp-smart-connect`), each instead of a segment of its own; and where a delayed ACK
//! would hold a peer's bytes back, it is not delayed.
//!
//! Counted, not timed: the same upgrades run directly (client to upstream) and through
//! wsgate in a network namespace the test makes, so the namespace's TCP counters see
//! only them. Proxied, the two connections of an upgrade would take twice a direct
//! one's segments; with the ACKs riding on data they take two fewer. Needs root and
//! `ip` (iproute2).

mod utils;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use utils::netns::{Namespaces, NsGateway};
use utils::{Gateway, RawUpstream, client_frame, read_exact, read_head, status_of, upgrade_request};

/// Upgrades per series: enough that a delayed-ACK timer firing in a slow round (a
/// loaded machine: a peer that takes 40 ms to answer) cannot hide the saving or fake
/// a larger one.
const ROUNDS: u64 = 20;

/// `Tcp: OutSegs` of the namespace the calling thread is in.
fn out_segments() -> u64 {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read snmp");
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().expect("Tcp names"), tcp.next().expect("Tcp values"));
    let at = names.split_whitespace().position(|n| n == "OutSegs").expect("OutSegs");
    values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).expect("OutSegs value")
}

/// Waits (10 s at most) until every TCP socket of the namespace is listening or in
/// TIME_WAIT: every close has been acknowledged, no segment of these upgrades is still
/// to come.
fn settled() {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tcp = std::fs::read_to_string("/proc/thread-self/net/tcp").expect("read tcp");
        // The `st` column: 0A listening, 06 TIME_WAIT.
        let busy: Vec<&str> =
            tcp.lines().skip(1).filter(|l| !matches!(l.split_whitespace().nth(3), Some("0A" | "06"))).collect();
        if busy.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "sockets still closing after 10 s: {busy:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One upgrade to `target`: the 101, a frame echoed back, the client closes.
fn upgrade(target: SocketAddr) {
    let mut c = TcpStream::connect(target).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut c).0), 101);
    let frame = client_frame(true, 2, b"ping");
    c.write_all(&frame).unwrap();
    assert_eq!(read_exact(&mut c, frame.len()), frame);
}

/// The server's Close (1000), unmasked.
const SERVER_CLOSE: [u8; 4] = [0x88, 0x02, 0x03, 0xe8];

/// One upgrade to `target` that ends with the closing handshake: the client's Close,
/// the server's, then the server's FIN.
fn closing(target: SocketAddr) {
    let mut c = TcpStream::connect(target).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut c).0), 101);
    c.write_all(&client_frame(true, 8, &[0x03, 0xe8])).unwrap();
    assert_eq!(read_exact(&mut c, SERVER_CLOSE.len()), SERVER_CLOSE);
    assert_eq!(c.read(&mut [0u8; 16]).expect("read the FIN"), 0, "bytes after the server's Close");
}

/// An upstream that answers 101, the client's Close with its own, and closes.
fn closing_upstream() -> RawUpstream {
    RawUpstream::start(|mut s| {
        let _ = read_head(&mut s);
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").unwrap();
        // The client's Close: 2 header bytes, the mask, the 2-byte code.
        let _ = read_exact(&mut s, 8);
        s.write_all(&SERVER_CLOSE).unwrap();
    })
}

/// Segments the namespace sent for `ROUNDS` upgrades to `target` (each one `round`),
/// each waited out (`done` after each: for the proxied series, its access-log line).
fn segments_of(ns: &str, (target, round): (SocketAddr, fn(SocketAddr)), done: impl Fn()) -> u64 {
    let name = ns.to_owned();
    Namespaces::within(ns, settled);
    let before = Namespaces::within(ns, out_segments);
    for _ in 0..ROUNDS {
        Namespaces::within(&name, move || round(target));
        done();
    }
    Namespaces::within(ns, settled);
    Namespaces::within(ns, out_segments) - before
}

#[test]
fn acks_ride_on_the_answer_and_on_the_request_head() {
    let ns = Namespaces::new("ack");
    let upstream = Namespaces::within(&ns.gateway, || RawUpstream::switching(b"").addr);
    for splice in ["userspace", "auto"] {
        let gw = NsGateway::start(
            &ns.gateway,
            &format!(
                "workers = 1\nsplice = \"{splice}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
                 [upstream.main]\nservers = [\"{upstream}\"]\n[[route]]\nupstream = \"main\"\n"
            ),
        );
        let direct = segments_of(&ns.gateway, (upstream, upgrade), || {});
        let proxied = segments_of(&ns.gateway, (gw.addr, upgrade), || {
            let line = gw.next_line(Duration::from_secs(10)).expect("no access-log line within 10 s");
            assert!(line.contains("\" 101 "), "{line}");
        });
        // Two connections per upgrade, each as a direct one, less one ACK on each.
        let saved = (2 * direct).saturating_sub(proxied);
        eprintln!("splice = {splice}: {ROUNDS} upgrades, direct {direct} segments, proxied {proxied}, saved {saved}");
        assert!(
            saved >= ROUNDS,
            "splice = {splice}: proxied upgrades took {proxied} segments against 2 × {direct} direct: \
             {saved} saved, at least {ROUNDS} (one per upgrade; two when no delayed-ACK timer fired) expected"
        );
        // Three per upgrade when the upstream's answer is not acknowledged at once; the
        // half-segment margin is for delayed-ACK timers firing in the direct series.
        assert!(
            saved <= 5 * ROUNDS / 2,
            "splice = {splice}: {saved} segments saved over {ROUNDS} upgrades; about three per upgrade means \
             an ACK the kernel sends at once on a new connection was held (the upstream's answer)"
        );
    }
}

/// The closing handshake: the upstream's Close, which ends it, and the upstream's FIN
/// behind it reach the client in one segment, not two (on top of the two ACKs above).
#[test]
fn the_upstreams_close_and_fin_reach_the_client_in_one_segment() {
    let ns = Namespaces::new("fin");
    let upstream = Namespaces::within(&ns.gateway, || closing_upstream().addr);
    for splice in ["userspace", "auto"] {
        let gw = NsGateway::start(
            &ns.gateway,
            &format!(
                "workers = 1\nsplice = \"{splice}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
                 [upstream.main]\nservers = [\"{upstream}\"]\n[[route]]\nupstream = \"main\"\n"
            ),
        );
        let direct = segments_of(&ns.gateway, (upstream, closing), || {});
        let proxied = segments_of(&ns.gateway, (gw.addr, closing), || {
            let line = gw.next_line(Duration::from_secs(10)).expect("no access-log line within 10 s");
            assert!(line.contains("\" 101 "), "{line}");
        });
        let saved = (2 * direct).saturating_sub(proxied);
        eprintln!(
            "splice = {splice}: {ROUNDS} closing handshakes, direct {direct} segments, proxied {proxied}, saved {saved}"
        );
        assert!(
            saved >= 2 * ROUNDS + ROUNDS / 2,
            "splice = {splice}: proxied closing handshakes took {proxied} segments against 2 × {direct} direct: \
             {saved} saved, three per upgrade expected (two ACKs, the FIN with the Close)"
        );
    }
}

/// A client with Nagle's algorithm on that writes its request body after its head
/// sends the body only once the head is acknowledged. wsgate's ACKs start delayed, so
/// when a body is still to come it acknowledges at once: the body is not held for the
/// delayed-ACK timer (40 ms at the least), as a plain kernel's first ACK is not.
#[test]
fn a_body_written_after_its_head_is_not_held_for_a_delayed_ack() {
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let tx = Mutex::new(tx);
    let upstream = RawUpstream::start(move |mut s| {
        let (_, mut body) = read_head(&mut s);
        let mut buf = [0u8; 64];
        while body.len() < 4 {
            let n = s.read(&mut buf).expect("read the body");
            assert!(n > 0, "the upstream got {body:?} of the body, then end of stream");
            body.extend_from_slice(&buf[..n]);
        }
        tx.lock().unwrap().send(Instant::now()).unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
    });
    let gw = Gateway::one_line(&[upstream.addr], &[]);
    // The fastest of five: one slow round on a loaded machine says nothing; held for
    // the timer, every round takes 40 ms or more.
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let mut c = gw.connect();
        c.set_nodelay(false).unwrap();
        c.write_all(b"POST / HTTP/1.1\r\nHost: example.test\r\nContent-Length: 4\r\n\r\n").unwrap();
        let sent = Instant::now();
        c.write_all(b"body").unwrap();
        let arrived = rx.recv_timeout(Duration::from_secs(10)).expect("no body reached the upstream within 10 s");
        fastest = fastest.min(arrived.saturating_duration_since(sent));
        assert_eq!(status_of(&read_head(&mut c).0), 200);
    }
    assert!(
        fastest < Duration::from_millis(20),
        "the body reached the upstream {fastest:?} after the client wrote it at the fastest of 5: held for a delayed ACK"
    );
}
