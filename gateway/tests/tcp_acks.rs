//! Fewer segments per upgrade: wsgate's ACK of a client's request head rides on its
//! answer (the listener's `TCP_QUICKACK` off, as HAProxy's `tcp-smart-accept`), the
//! last ACK of the handshake with a plain upstream rides on the upgrade's request head
//! (`tcp-smart-connect`), and the upstream's Close that ends the closing handshake goes
//! to the client with the FIN in one segment; and where a delayed ACK would hold a
//! client's bytes back (Nagle's algorithm waiting for it), it is not delayed.
//!
//! Counted, not timed: the same upgrades run directly (client to upstream) and through
//! wsgate in a network namespace the test makes, so the namespace's TCP counters see
//! only them, each upgrade counted on its own. Proxied, the two connections of an
//! upgrade would take twice a direct one's segments. Needs root and `ip` (iproute2).
//! The Nagle case is timed against the kernel's delayed-ACK timer (40 ms at the least),
//! the fastest of several rounds.

mod utils;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use utils::netns::{Namespaces, NsGateway};
use utils::{Gateway, RawUpstream, client_frame, read_exact, read_head, status_of, upgrade_request};

/// Upgrades per series; each is counted alone and the medians are compared, so a
/// delayed-ACK timer firing in a slow round (a loaded machine: a peer that takes 40 ms
/// to answer) changes nothing.
const ROUNDS: usize = 21;

/// `Tcp: OutSegs` of the namespace the calling thread is in.
fn out_segments() -> u64 {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read snmp");
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().expect("Tcp names"), tcp.next().expect("Tcp values"));
    let at = names.split_whitespace().position(|n| n == "OutSegs").expect("OutSegs");
    values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).expect("OutSegs value")
}

/// Waits (10 s at most) until every TCP socket of the namespace is listening or in
/// TIME_WAIT: every close has been acknowledged, no segment of an upgrade is still to
/// come.
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

/// A client connection to `target` that has been answered 101.
fn upgraded(target: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(target).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut c).0), 101);
    c
}

/// One upgrade to `target`: the 101, a frame echoed back, the client closes.
fn echoed(target: SocketAddr) {
    let mut c = upgraded(target);
    let frame = client_frame(true, 2, b"ping");
    c.write_all(&frame).unwrap();
    assert_eq!(read_exact(&mut c, frame.len()), frame);
}

/// The server's Close (1000), unmasked.
const SERVER_CLOSE: [u8; 4] = [0x88, 0x02, 0x03, 0xe8];

/// One upgrade to `target` that ends with the closing handshake: the client's Close,
/// the server's, then the end of the stream.
fn closed(target: SocketAddr) {
    let mut c = upgraded(target);
    c.write_all(&client_frame(true, 8, &[0x03, 0xe8])).unwrap();
    assert_eq!(read_exact(&mut c, SERVER_CLOSE.len()), SERVER_CLOSE);
    assert_eq!(c.read(&mut [0u8; 16]).expect("read the FIN"), 0, "bytes after the server's Close");
}

/// An upstream that answers 101, the client's Close with its own and the FIN in one
/// segment (held back by `MSG_MORE` until the shutdown), as a server that closes at
/// once mostly does.
fn closing_upstream() -> RawUpstream {
    RawUpstream::start(|mut s| {
        let _ = read_head(&mut s);
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").unwrap();
        // The client's Close: 2 header bytes, the mask, the 2-byte code.
        let _ = read_exact(&mut s, 8);
        // SAFETY: a valid buffer of its length; the socket is open.
        let sent =
            unsafe { libc::send(s.as_raw_fd(), SERVER_CLOSE.as_ptr().cast(), SERVER_CLOSE.len(), libc::MSG_MORE) };
        assert_eq!(usize::try_from(sent).ok(), Some(SERVER_CLOSE.len()), "send the server's Close");
        s.shutdown(Shutdown::Write).unwrap();
    })
}

/// The median of the segments the namespace sent for each of `ROUNDS` upgrades to
/// `target` (each one `round`), each waited out (`done` after each: for the proxied
/// series, its access-log line).
fn segments_of(ns: &str, (target, round): (SocketAddr, fn(SocketAddr)), done: impl Fn()) -> u64 {
    let mut each = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        Namespaces::within(ns, settled);
        let before = Namespaces::within(ns, out_segments);
        Namespaces::within(ns, move || round(target));
        done();
        Namespaces::within(ns, settled);
        each.push(Namespaces::within(ns, out_segments) - before);
    }
    each.sort_unstable();
    each[ROUNDS / 2]
}

/// For each splice mode, the segments per upgrade (the median of each series), direct
/// and proxied.
fn segments(tag: &str, upstream: fn() -> RawUpstream, round: fn(SocketAddr)) -> Vec<(&'static str, u64, u64)> {
    let ns = Namespaces::new(tag);
    let upstream = Namespaces::within(&ns.gateway, move || upstream().addr);
    let mut out = Vec::new();
    for splice in ["userspace", "auto"] {
        let gw = NsGateway::start(
            &ns.gateway,
            &format!(
                "workers = 1\nsplice = \"{splice}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
                 [upstream.main]\nservers = [\"{upstream}\"]\n[[route]]\nupstream = \"main\"\n"
            ),
        );
        let direct = segments_of(&ns.gateway, (upstream, round), || {});
        let proxied = segments_of(&ns.gateway, (gw.addr, round), || {
            let line = gw.next_line(Duration::from_secs(10)).expect("no access-log line within 10 s");
            assert!(line.contains("\" 101 "), "{line}");
        });
        eprintln!("splice = {splice}: segments per upgrade (medians of {ROUNDS}): direct {direct}, proxied {proxied}");
        out.push((splice, direct, proxied));
    }
    out
}

/// The ACK of the client's request head rides on the 101, and the handshake's last ACK
/// toward the upstream on the request head: two segments fewer than twice a direct
/// upgrade. Not three: the upstream's 101 is acknowledged at once, as on any new
/// connection (an upstream with Nagle's algorithm on would hold its first frame for
/// that ACK).
#[test]
fn acks_ride_on_the_answer_and_on_the_request_head() {
    for (splice, direct, proxied) in segments("ack", || RawUpstream::switching(b""), echoed) {
        assert_eq!(
            proxied + 2,
            2 * direct,
            "splice = {splice}: {proxied} segments per proxied upgrade against {direct} direct: \
             2 × direct less two (the two ACKs on data) expected; one more saved means the 101's ACK was delayed"
        );
    }
}

/// The upstream's Close that ends the closing handshake and its FIN behind it reach the
/// client in one segment, as they left the upstream: proxied, two segments fewer than
/// twice a direct upgrade (the two ACKs above), not one.
#[test]
fn the_upstreams_close_and_fin_reach_the_client_in_one_segment() {
    for (splice, direct, proxied) in segments("fin", closing_upstream, closed) {
        assert_eq!(
            proxied + 2,
            2 * direct,
            "splice = {splice}: {proxied} segments per proxied closing handshake against {direct} direct: \
             one more than 2 × direct less two means the Close and the FIN went to the client apart"
        );
    }
}

/// A client with Nagle's algorithm on that writes its request body after its head
/// sends the body only once the head is acknowledged: the head is acknowledged at once
/// when a body is to come, though the listener's ACKs start delayed. Held for the
/// delayed-ACK timer, every round takes 40 ms or more; the fastest of five decides.
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
        "the body reached the upstream {fastest:?} after the client wrote it, at the fastest of 5: held for a delayed ACK"
    );
}
