//! Backpressure through the TLS relay, over real sockets: a side that stops reading
//! stops the other side's writer (TCP flow control), whichever the direction; the
//! gateway holds no more than its sockets' buffers meanwhile, and every byte held
//! arrives once the reader reads again.

mod tls_util;
mod utils;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tls_util::{Pki, tls_connect, tls_listener};
use utils::{Gateway, RawUpstream, read_head, upgrade_request};

/// More than this held for a stalled reader would mean the relay reads past what
/// the other side takes (the loopback sockets' buffers hold ~20 MiB at most).
const HELD_AT_MOST: u64 = 48 << 20;
/// What the writer tries to push (far more than any buffer).
const PUSHED: u64 = 512 << 20;

const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

fn gateway(pki: &Pki, upstream: std::net::SocketAddr) -> Gateway {
    let cert = pki.issue("gw", &["gw.test"]);
    let config = format!(
        "workers = 1\n{}[[route]]\nupstream = \"main\"\n[upstream.main]\nservers = [\"{upstream}\"]\n",
        tls_listener(Some(&cert), &[])
    );
    Gateway::builder().config(&config).start()
}

/// Byte `i` of a stream.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// Writes the pattern with `write` until a write fails (the writer's write timeout:
/// it stalled) or `PUSHED` went; returns the bytes the writer took.
fn push_until_stalled(w: &mut impl Write) -> u64 {
    let chunk: Vec<u8> = (0..1u64 << 20).map(pattern).collect();
    let mut total = 0u64;
    while total < PUSHED {
        let at = (total % 251) as usize;
        match w.write(&chunk[at..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    total
}

#[test]
fn a_client_that_stops_reading_stops_the_upstream() {
    let pki = Pki::new();
    let written = Arc::new(AtomicU64::new(u64::MAX));
    let w = written.clone();
    let upstream = RawUpstream::start(move |mut s| {
        read_head(&mut s);
        s.write_all(SWITCH).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = push_until_stalled(&mut s);
        w.store(n, Ordering::SeqCst);
        // The end: the client reads everything up to here, then the close.
        let _ = s.shutdown(std::net::Shutdown::Write);
        std::thread::sleep(Duration::from_secs(30));
    });
    let gw = gateway(&pki, upstream.addr);
    let mut tls = tls_connect(gw.addr, "gw.test", &pki.client(&[])).unwrap();
    tls.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (head, mut got) = read_head(&mut tls);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Not reading: the upstream's writes must stall.
    let deadline = Instant::now() + Duration::from_mins(1);
    while written.load(Ordering::SeqCst) == u64::MAX {
        assert!(Instant::now() < deadline, "the upstream never stalled");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stalled_at = written.load(Ordering::SeqCst);
    assert!(stalled_at < HELD_AT_MOST, "the upstream wrote {stalled_at} bytes to a client that read nothing");
    assert!(stalled_at > 0);
    // Now read it all: every byte, in order, then the end.
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("after {} bytes: {e}", got.len()),
        }
    }
    assert_eq!(got.len() as u64, stalled_at, "bytes lost or added");
    assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(i as u64)), "bytes changed");
}

#[test]
fn an_upstream_that_stops_reading_stops_the_client() {
    let pki = Pki::new();
    let upstream = RawUpstream::start(move |mut s| {
        read_head(&mut s);
        s.write_all(SWITCH).unwrap();
        // Reads nothing more for a while.
        std::thread::sleep(Duration::from_secs(30));
    });
    let gw = gateway(&pki, upstream.addr);
    let mut tls = tls_connect(gw.addr, "gw.test", &pki.client(&[])).unwrap();
    tls.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (head, _) = read_head(&mut tls);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.sock.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let took = push_until_stalled(&mut tls);
    assert!(took < HELD_AT_MOST, "the client wrote {took} bytes to an upstream that read nothing");
    assert!(took > 0);
}
