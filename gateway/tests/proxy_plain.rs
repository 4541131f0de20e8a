//! Requests without an upgrade are proxied as plain HTTP/1.1 with `Connection: close`
//! (no upstream pool configured here), bodies streamed both ways. The upstream's own
//! `Connection` header speaks of the upstream connection: the client gets its own.

mod utils;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use utils::{Gateway, RawUpstream, read_head, read_to_eof, status_of};

/// An HTTP upstream that records the head and body it got and answers with a chunked body.
/// Request heads and bodies an upstream received.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn http_upstream() -> (RawUpstream, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let up = RawUpstream::start(move |mut s| {
        let (head, mut body) = read_head(&mut s);
        let lower = head.to_ascii_lowercase();
        if lower.contains("transfer-encoding: chunked") {
            while !body.ends_with(b"0\r\n\r\n") {
                let mut b = [0u8; 4096];
                let n = s.read(&mut b).unwrap();
                assert!(n > 0, "EOF inside chunked body");
                body.extend_from_slice(&b[..n]);
            }
        } else if let Some(len) = lower.split("content-length: ").nth(1) {
            let len: usize = len.split("\r\n").next().unwrap().parse().unwrap();
            while body.len() < len {
                let mut b = [0u8; 4096];
                let n = s.read(&mut b).unwrap();
                body.extend_from_slice(&b[..n]);
            }
        }
        let echoed = body.len();
        s2.lock().unwrap().push((head, body));
        // The body: "hello", then what the request carried, echoed as `b`s.
        let mut response =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n".to_vec();
        if echoed > 0 {
            response.extend(format!("{echoed:x}\r\n{}\r\n", "b".repeat(echoed)).into_bytes());
        }
        response.extend_from_slice(b"0\r\n\r\n");
        let _ = s.write_all(&response);
    });
    (up, seen)
}

#[test]
fn plain_get_is_proxied_with_connection_close() {
    let (up, seen) = http_upstream();
    let gw = Gateway::one_line(&[up.addr], &[]);
    let mut c = gw.connect();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive\r\nUser-Agent: probe/1\r\n\r\n")
        .unwrap();
    // The client connection stays open (keep-alive): read the response by its framing.
    let (head, mut body) = read_head(&mut c);
    while !body.ends_with(b"0\r\n\r\n") {
        let mut b = [0u8; 4096];
        let n = c.read(&mut b).unwrap();
        assert!(n > 0, "EOF inside the chunked response");
        body.extend_from_slice(&b[..n]);
    }
    assert_eq!(
        head, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "the head passes byte-exact but for the upstream's `Connection: close`"
    );
    assert_eq!(body, b"5\r\nhello\r\n0\r\n\r\n");
    let (head, _) = seen.lock().unwrap()[0].clone();
    assert_eq!(
        head,
        "GET /health HTTP/1.1\r\nHost: example.test\r\nUser-Agent: probe/1\r\nConnection: close\r\nX-Real-IP: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
    let line = gw.wait_log("\"GET /health HTTP/1.1\" 200 ");
    assert!(line.contains("\"probe/1\""), "{line}");
}

#[test]
fn plain_post_with_chunked_body_is_streamed_both_ways() {
    let (up, seen) = http_upstream();
    let gw = Gateway::one_line(&[up.addr], &[]);
    let mut c = gw.connect();
    c.write_all(b"POST /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
    // The body follows in pieces, after the head was forwarded.
    let chunk = "x".repeat(100_000);
    c.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    c.write_all(b"3\r\nend\r\n0\r\n\r\n").unwrap();
    let (head, _) = read_head(&mut c);
    assert_eq!(status_of(&head), 200);
    let rest = read_to_eof(&mut c);
    let (_, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(body, format!("{:x}\r\n{chunk}\r\n3\r\nend\r\n0\r\n\r\n", chunk.len()).into_bytes());
    assert!(String::from_utf8_lossy(&rest).contains(&"b".repeat(1000)), "response body must stream back");
}

#[test]
fn plain_post_with_content_length_is_proxied() {
    let (up, seen) = http_upstream();
    let gw = Gateway::one_line(&[up.addr], &[]);
    let mut c = gw.connect();
    c.write_all(
        b"POST /form HTTP/1.1\r\nHost: example.test\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
    )
    .unwrap();
    let (head, _) = read_head(&mut c);
    assert_eq!(status_of(&head), 200);
    let _ = read_to_eof(&mut c);
    assert_eq!(seen.lock().unwrap()[0].1, b"hello world");
}

/// `Expect: 100-continue`: the upstream's `100 Continue` reaches the client while the
/// body is still to come, and the body the client then sends reaches the upstream,
/// which answers it.
#[test]
fn a_100_continue_passes_and_the_body_follows_it() {
    let up = RawUpstream::start(|mut s| {
        let (head, early) = read_head(&mut s);
        assert!(head.to_ascii_lowercase().contains("expect: 100-continue"), "{head}");
        assert!(early.is_empty(), "the body came before the 100: {early:?}");
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        let mut body = vec![0u8; 5];
        s.read_exact(&mut body).expect("the body after the 100");
        assert_eq!(body, b"hello");
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").unwrap();
    });
    let gw = Gateway::one_line(&[up.addr], &[]);
    let mut c = gw.connect();
    c.write_all(b"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let (interim, early) = read_head(&mut c);
    assert_eq!(status_of(&interim), 100, "{interim}");
    assert!(early.is_empty(), "bytes after the 100 before the body was sent: {early:?}");
    c.write_all(b"hello").unwrap();
    let (head, mut body) = read_head(&mut c);
    assert_eq!(status_of(&head), 200, "{head}");
    if body.len() < 2 {
        body.extend(utils::read_exact(&mut c, 2 - body.len()));
    }
    assert_eq!(body, b"ok");
}

/// Interim responses are bounded per request, those passed while the body streams
/// included: after 8, a ninth is the upstream's fault (502), not more to pass on.
#[test]
fn more_than_eight_interim_responses_while_the_body_streams_are_a_502() {
    let up = RawUpstream::start(|mut s| {
        let _ = read_head(&mut s);
        let _ = s.write_all(&b"HTTP/1.1 100 Continue\r\n\r\n".repeat(9));
        // Hold the connection until wsgate gives up on it.
        let _ = s.read(&mut [0u8; 16]);
    });
    let config = format!(
        "workers = 1\n[[listener]]\naddress = \"127.0.0.1:0\"\n[timeouts]\nresponse = \"30s\"\n\
         [upstream.main]\nservers = [\"{}\"]\n[[route]]\nupstream = \"main\"\n",
        up.addr
    );
    let gw = Gateway::builder().config(&config).start();
    let mut c = gw.connect();
    c.write_all(b"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    // The connection ends with the 502 (the body was never read).
    let got = String::from_utf8_lossy(&read_to_eof(&mut c)).into_owned();
    let heads: Vec<&str> = got.split("\r\n\r\n").filter(|h| h.starts_with("HTTP/1.1 ")).collect();
    let statuses: Vec<&str> = heads.iter().map(|h| &h[9..12]).collect();
    assert_eq!(statuses, [vec!["100"; 8], vec!["502"]].concat(), "{got}");
}
