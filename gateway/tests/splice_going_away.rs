//! A spliced pair's turn in the drain with a frame in progress, over real sockets and
//! the real eBPF program: the frame's header straddles two TCP segments (two skbs for
//! the verdict), its first half is redirected in the kernel before SIGTERM and its
//! second half is sent only after the pair's turn has come. The rest of the frame
//! must reach the peer whole, then a Close 1001: masked to the upstream (tungstenite
//! refuses an unmasked one), unmasked to the client; nothing after it but FIN.

mod splice_util;
mod utils;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use utils::{Gateway, RawUpstream, WsEcho, client_frame, read_head, read_to_eof, server_frame, upgrade_request};

/// One worker, spliced at once, a 1 s drain window without jitter, and a close
/// timeout well past the pauses of these tests.
fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        "workers = 1\nsplice = \"sockmap\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[relay]\nsplice_after = \"0s\"\n[timeouts]\ndrain = \"30s\"\n[drain]\nwindow = \"1s\"\njitter = 0.0\nclose_timeout = \"8s\"\n[[route]]\nupstream = \"u\"\n[[upstream.u.servers]]\naddress = \"{upstream}\"\n"
    )
}

fn gateway(upstream: std::net::SocketAddr) -> Gateway {
    Gateway::builder().config(&config(upstream)).log_level("warn,wsgate::splice=debug").start()
}

/// A message's bytes, different for each `seed`.
fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// An unmasked server frame with a 64-bit length.
fn server_frame_bytes(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode, 127];
    f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Writes `frame` in three segments: its first byte, then up to `split`, then (after
/// `between()` returns) the rest.
fn write_straddled(s: &mut TcpStream, frame: &[u8], split: usize, between: impl FnOnce()) {
    s.write_all(&frame[..1]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&frame[1..split]).unwrap();
    between();
    // The pair's turn has come: the verdict passes the rest to userspace.
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&frame[split..]).unwrap();
}

/// A client connection upgraded through `g`, and what came after the 101 head.
fn upgraded(g: &Gateway) -> (TcpStream, Vec<u8>) {
    let mut c = g.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (head, rest) = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (c, rest)
}

/// Reads server frames until a Close; asserts it is an unmasked Close 1001 and that
/// every frame before it is `expected` whole; returns how many came before it.
fn until_going_away(mut c: impl Read, expected: &[u8]) -> usize {
    for before in 0..3 {
        let (fin, opcode, p) = server_frame(&mut c);
        if opcode == 8 {
            assert_eq!(&p[..2], &1001u16.to_be_bytes(), "Close payload {p:?}");
            assert_eq!(&p[2..], b"going away");
            return before;
        }
        assert!(fin && opcode == 2 && p == expected, "a frame other than the whole message: opcode {opcode}");
    }
    panic!("no Close after three frames");
}

#[test]
fn a_client_frame_in_progress_at_the_turn_reaches_the_upstream_whole_then_a_masked_close_1001() {
    if splice_util::splicer_or_skip("a_client_frame_in_progress_at_the_turn", 16, 1 << 20).is_none() {
        return;
    }
    let echo = WsEcho::start();
    let mut g = gateway(echo.addr);
    let (mut c, rest) = upgraded(&g);
    assert!(rest.is_empty(), "{rest:?}");
    // A whole message first: the pair streams in the kernel.
    let first = payload(0, 3000);
    c.write_all(&client_frame(true, 2, &first)).unwrap();
    assert_eq!(server_frame(&mut c), (true, 2, first));
    let big = payload(1, 200_000);
    let frame = client_frame(true, 2, &big);
    write_straddled(&mut c, &frame, 14 + 100_000, || {
        g.terminate();
        g.wait_stderr("drain: a spliced pair's turn", Duration::from_secs(10));
    });
    // The echo of the whole message may come before the Close or be dropped after it.
    until_going_away(&mut c, &big);
    c.write_all(&client_frame(true, 8, &1001u16.to_be_bytes())).unwrap();
    assert!(read_to_eof(&mut c).is_empty(), "nothing but FIN after the Close");
    assert!(g.wait_exit(Duration::from_secs(20)), "wsgate exits once the pair is closed");
    let events: Vec<String> = echo.events.lock().unwrap().iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(events, ["message 3000", "message 200000", "close 1001"]);
    let line = g.wait_log(" 101 ");
    assert!(line.contains("close=drain") && line.contains("mode=splice"), "{line}");
}

#[test]
fn an_upstream_frame_in_progress_at_the_turn_reaches_the_client_whole_then_a_close_1001() {
    if splice_util::splicer_or_skip("an_upstream_frame_in_progress_at_the_turn", 16, 1 << 20).is_none() {
        return;
    }
    let big = payload(2, 150_000);
    let frame = server_frame_bytes(2, &big);
    let (turn_tx, turn_rx) = mpsc::channel::<()>();
    let (got_tx, got_rx) = mpsc::channel::<Vec<u8>>();
    let (turn_rx, got_tx) = (Mutex::new(turn_rx), Mutex::new(got_tx));
    let up = RawUpstream::start(move |mut s| {
        let _ = read_head(&mut s);
        s.set_nodelay(true).unwrap();
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").unwrap();
        write_straddled(&mut s, &frame, 10 + 75_000, || {
            turn_rx.lock().unwrap().recv_timeout(Duration::from_secs(20)).expect("the pair's turn");
        });
        // The gateway's Close (2 + 4 + 12 bytes), then our answer, then its FIN.
        let mut got = utils::read_exact(&mut s, 18);
        s.write_all(&[0x88, 2, 0x03, 0xe9]).unwrap();
        got.extend(read_to_eof(&mut s));
        got_tx.lock().unwrap().send(got).unwrap();
    });
    let mut g = gateway(up.addr);
    let (mut c, rest) = upgraded(&g);
    std::thread::sleep(Duration::from_millis(200));
    g.terminate();
    g.wait_stderr("drain: a spliced pair's turn", Duration::from_secs(10));
    turn_tx.send(()).unwrap();
    // The frame's first byte may have come with the 101.
    let before = until_going_away(std::io::Cursor::new(rest).chain(&mut c), &big);
    assert_eq!(before, 1, "the whole message, then the Close");
    c.write_all(&client_frame(true, 8, &1001u16.to_be_bytes())).unwrap();
    assert!(read_to_eof(&mut c).is_empty(), "nothing but FIN after the Close");
    let got = got_rx.recv_timeout(Duration::from_secs(20)).expect("what the upstream received");
    assert_eq!(got.len(), 18, "one Close frame, then FIN: {got:?}");
    assert_eq!(got[..2], [0x88, 0x80 | 0x0c], "a masked Close with a 12-byte payload");
    let body: Vec<u8> = got[6..].iter().enumerate().map(|(i, b)| b ^ got[2 + i % 4]).collect();
    assert_eq!(&body[..2], &1001u16.to_be_bytes());
    assert_eq!(&body[2..], b"going away");
    assert!(g.wait_exit(Duration::from_secs(20)), "wsgate exits once the pair is closed");
    let line = g.wait_log(" 101 ");
    assert!(line.contains("close=drain") && line.contains("mode=splice"), "{line}");
}
