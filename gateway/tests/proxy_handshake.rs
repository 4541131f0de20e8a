//! The handshake phases over real sockets: what the upstream receives, what the
//! client receives, and every error status.

mod utils;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use utils::{Gateway, RawUpstream, read_head, read_to_eof, refused_addr, status_of, upgrade_request};

const ROUTED: &str = r#"
workers = 2
splice = "userspace"
[[listener]]
address = "127.0.0.1:0"
[timeouts]
header = "1s"
connect = "1s"
response = "1s"
[[route]]
path = "/ws/"
upstream = "main"
"#;

fn routed_config(upstream: std::net::SocketAddr) -> String {
    format!("{ROUTED}\n[upstream.main]\nservers = [\"{upstream}\"]\n")
}

/// The same, with the test client's address as a trusted proxy.
fn trusting_config(upstream: std::net::SocketAddr) -> String {
    format!("{}\n[admission]\ntrusted_proxies = [\"127.0.0.1\"]\n", routed_config(upstream))
}

/// An upstream that records the raw request head it received, then answers 101.
fn recording_upstream() -> (RawUpstream, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let up = RawUpstream::start(move |mut s| {
        let (head, _) = read_head(&mut s);
        s2.lock().unwrap().push(head);
        let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Upstream-Id: a\r\nSec-WebSocket-Protocol: chat\r\n\r\n");
        let _ = read_to_eof(&mut s);
    });
    (up, seen)
}

#[test]
fn upgrade_from_a_trusted_proxy_is_forwarded_with_x_forwarded_for_appended_and_hop_by_hop_stripped() {
    let (up, seen) = recording_upstream();
    let gw = Gateway::with_config(&trusting_config(up.addr), &[]);
    let mut c = gw.connect();
    let req = "GET /ws/chat?room=1 HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nCookie: session=abc; theme=dark\r\nOrigin: https://example.test\r\nX-Forwarded-For: 203.0.113.9\r\nX-Real-IP: 198.51.100.1\r\nX-Forwarded-Proto: https\r\n\r\n";
    c.write_all(req.as_bytes()).unwrap();
    let (resp, _) = read_head(&mut c);
    assert_eq!(
        resp,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Upstream-Id: a\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
        "the 101 must pass byte-exact"
    );
    let head = seen.lock().unwrap()[0].clone();
    assert_eq!(
        head,
        "GET /ws/chat?room=1 HTTP/1.1\r\nHost: example.test\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nCookie: session=abc; theme=dark\r\nOrigin: https://example.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\nX-Real-IP: 203.0.113.9\r\nX-Forwarded-For: 203.0.113.9, 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
}

#[test]
fn forwarded_headers_from_an_untrusted_client_are_replaced() {
    let (up, seen) = recording_upstream();
    let gw = Gateway::with_config(&routed_config(up.addr), &[]);
    let mut c = gw.connect();
    let req = upgrade_request("/ws/", "X-Forwarded-For: 203.0.113.9\r\nX-Real-IP: 198.51.100.1\r\n");
    c.write_all(req.as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut c).0), 101);
    let head = seen.lock().unwrap()[0].clone();
    assert!(
        head.ends_with("X-Real-IP: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n"),
        "{head}"
    );
    assert!(!head.contains("203.0.113.9") && !head.contains("198.51.100.1"), "{head}");
}

#[test]
fn refused_upstream_moves_to_the_next_server() {
    let (up, seen) = recording_upstream();
    let gw = Gateway::one_line(&[refused_addr(), up.addr], &["--splice", "userspace"]);
    for _ in 0..4 {
        let mut c = gw.connect();
        c.write_all(upgrade_request("/x", "").as_bytes()).unwrap();
        let (resp, _) = read_head(&mut c);
        assert_eq!(status_of(&resp), 101, "{resp}");
    }
    assert_eq!(seen.lock().unwrap().len(), 4);
}

fn expect_status(gw: &Gateway, request: &[u8], status: u16) -> String {
    let mut c = gw.connect();
    c.write_all(request).unwrap();
    let all = read_to_eof(&mut c);
    let text = String::from_utf8_lossy(&all).into_owned();
    assert_eq!(
        status_of(&text),
        status,
        "request {:?} got {text:?}",
        String::from_utf8_lossy(&request[..request.len().min(80)])
    );
    text
}

#[test]
fn all_upstreams_down_is_502() {
    let gw = Gateway::one_line(&[refused_addr(), refused_addr()], &[]);
    expect_status(&gw, upgrade_request("/", "").as_bytes(), 502);
    gw.wait_log("\" 502 ");
}

#[test]
fn silent_upstream_is_504() {
    let silent = RawUpstream::start(|mut s| {
        let _ = read_head(&mut s);
        std::thread::sleep(Duration::from_secs(3));
    });
    let gw = Gateway::with_config(&routed_config(silent.addr), &[]);
    let t0 = Instant::now();
    expect_status(&gw, upgrade_request("/ws/", "").as_bytes(), 504);
    assert!(t0.elapsed() < Duration::from_millis(2500), "504 must come after the 1 s response timeout");
}

#[test]
fn non_101_response_is_passed_back_as_is_and_closed() {
    let up = RawUpstream::start(|mut s| {
        let _ = read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nX-Why: token\r\n\r\nnope!\n");
        // Keep the connection open: wsgate must end the exchange after the body.
        std::thread::sleep(Duration::from_secs(3));
    });
    let gw = Gateway::with_config(&routed_config(up.addr), &[]);
    let t0 = Instant::now();
    let text = expect_status(&gw, upgrade_request("/ws/", "").as_bytes(), 403);
    assert_eq!(text, "HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nX-Why: token\r\n\r\nnope!\n");
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_101_head_that_arrives_in_pieces_is_read_whole_and_what_follows_it_kept() {
    // The head in three writes, the last one with the first bytes after it.
    const HEAD: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let up = RawUpstream::start(|mut s| {
        let _ = read_head(&mut s);
        for piece in [&HEAD[..9], &HEAD[9..40]] {
            s.write_all(piece.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        s.write_all(format!("{}hello", &HEAD[40..]).as_bytes()).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        std::thread::sleep(Duration::from_secs(3));
    });
    let gw = Gateway::with_config(&routed_config(up.addr), &[]);
    let mut c = gw.connect();
    c.write_all(upgrade_request("/ws/", "").as_bytes()).unwrap();
    let mut got = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = std::io::Read::read_to_end(&mut c, &mut got);
    assert_eq!(String::from_utf8_lossy(&got), format!("{HEAD}hello"));
}

#[test]
fn a_body_that_breaks_its_framing_after_the_head_ends_the_connection_without_a_second_response() {
    // The head is passed; the chunk size that follows is not hex: the client gets the
    // head, no 502 after it, and the end of the connection.
    const HEAD: &str = "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n";
    let up = RawUpstream::start(|mut s| {
        let _ = read_head(&mut s);
        let _ = s.write_all(format!("{HEAD}zz\r\nnope\r\n0\r\n\r\n").as_bytes());
        std::thread::sleep(Duration::from_secs(3));
    });
    let gw = Gateway::with_config(&routed_config(up.addr), &[]);
    let mut c = gw.connect();
    c.write_all(upgrade_request("/ws/", "").as_bytes()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut c, &mut got);
    assert_eq!(String::from_utf8_lossy(&got), HEAD);
}

#[test]
fn a_non_101_body_in_the_heads_segment_is_passed_exactly_and_no_further() {
    // Head, a body longer than the read that takes the head, and bytes past the body,
    // all in one write: the client gets the head and the body, not one byte more.
    let body: String = (0..3000u16).map(|i| char::from(b'a' + u8::try_from(i % 26).unwrap())).collect();
    let response = format!("HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let sent = format!("{response}HTTP/1.1 200 OK\r\n\r\njunk");
    let up = RawUpstream::start(move |mut s| {
        let _ = read_head(&mut s);
        let _ = s.write_all(sent.as_bytes());
        std::thread::sleep(Duration::from_secs(3));
    });
    let gw = Gateway::with_config(&routed_config(up.addr), &[]);
    let text = expect_status(&gw, upgrade_request("/ws/", "").as_bytes(), 401);
    assert_eq!(text, response);
}

#[test]
fn client_errors_get_their_status() {
    let (up, seen) = recording_upstream();
    let gw = Gateway::with_config(&routed_config(up.addr), &[]);
    // No route.
    expect_status(&gw, upgrade_request("/other", "").as_bytes(), 404);
    // Wrong version → 426 with the supported version.
    let req = upgrade_request("/ws/", "").replace("Version: 13", "Version: 8");
    let text = expect_status(&gw, req.as_bytes(), 426);
    assert!(text.contains("Sec-WebSocket-Version: 13\r\n"), "{text}");
    // Malformed key, wrong method → 400.
    let req = upgrade_request("/ws/", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
    expect_status(&gw, req.as_bytes(), 400);
    let req = upgrade_request("/ws/", "").replace("GET", "PUT");
    expect_status(&gw, req.as_bytes(), 400);
    // 20 KiB of headers → 431.
    let big = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    expect_status(&gw, upgrade_request("/ws/", &big).as_bytes(), 431);
    // Garbage → 400.
    expect_status(&gw, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400);
    expect_status(&gw, b"GET /ws/ HTTP/1.1\r\nHost a\r\n\r\n", 400);
    // Smuggling shape → 400.
    expect_status(
        &gw,
        b"POST /ws/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    );
    assert!(seen.lock().unwrap().is_empty(), "no bad request may reach the upstream");
    // The gateway still serves.
    let mut c = gw.connect();
    c.write_all(upgrade_request("/ws/", "").as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut c).0), 101);
}

#[test]
fn truncated_and_random_inputs_never_break_the_gateway() {
    let (up, _) = recording_upstream();
    let gw = Gateway::with_config(&routed_config(up.addr), &[]);
    let full = upgrade_request("/ws/", "");
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..200 {
        let mut c = gw.connect();
        let input: Vec<u8> = if i % 2 == 0 {
            full.as_bytes()[..(i * 7) % full.len()].to_vec()
        } else {
            (0..(i * 13) % 3000)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        };
        let _ = c.write_all(&input);
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        if !out.is_empty() {
            let s = status_of(&String::from_utf8_lossy(&out));
            assert!((400..500).contains(&s), "input {i} got {:?}", String::from_utf8_lossy(&out));
        }
    }
    let mut c = gw.connect();
    c.write_all(full.as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut c).0), 101, "gateway must still serve after hostile input");
}

#[test]
fn incomplete_head_is_closed_after_header_timeout() {
    let (up, seen) = recording_upstream();
    let gw = Gateway::with_config(&routed_config(up.addr), &[]);
    let mut c = gw.connect();
    let t0 = Instant::now();
    c.write_all(b"GET /ws/ HTTP/1.1\r\nHost: slow\r\n").unwrap();
    let out = read_to_eof(&mut c);
    let waited = t0.elapsed();
    assert!(out.is_empty(), "nothing is sent on a header timeout: {out:?}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "closed after {waited:?}");
    assert!(seen.lock().unwrap().is_empty());
    gw.wait_log("\" 408 ");
}
