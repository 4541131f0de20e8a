//! Plain HTTP keep-alive over real sockets: several requests on one client connection,
//! pipelined ones answered in order, upstream connections reused from the worker's pool
//! (`upstream.NAME.keepalive`), stale pooled connections, `Connection: close` both ways,
//! HTTP/1.0, the limits, and a WebSocket upgrade after a plain request. The recording
//! upstream keeps every byte each of its connections received, and the tests compare
//! those bytes exactly.

mod admin_util;
mod utils;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use utils::{Gateway, RawUpstream, read_head, read_to_eof, status_of, upgrade_request};

/// What the recording upstream does on each connection.
#[derive(Clone, Copy)]
struct Script {
    /// Requests answered per connection before `then`.
    answer: usize,
    /// Extra response header lines (each ending in CRLF).
    header: &'static str,
    /// After `answer` responses: read one more request and close without answering
    /// (`true`), or close at once (`false`).
    swallow_next: bool,
}

const SERVE_ALL: Script = Script { answer: usize::MAX, header: "", swallow_next: false };

/// Every byte each upstream connection received, in accept order.
type Conns = Arc<Mutex<Vec<Vec<u8>>>>;

/// An HTTP/1.1 upstream that reads requests (heads and Content-Length bodies) one after
/// the other on each connection, records them, and answers each with a 200 whose body
/// is the request target.
fn recording(script: Script) -> (RawUpstream, Conns) {
    let conns: Conns = Arc::new(Mutex::new(Vec::new()));
    let c2 = conns.clone();
    let up = RawUpstream::start(move |mut s| {
        let slot = {
            let mut all = c2.lock().unwrap();
            all.push(Vec::new());
            all.len() - 1
        };
        let mut buf = Vec::new();
        for served in 0.. {
            let Some(request) = next_request(&mut s, &mut buf) else { return };
            c2.lock().unwrap()[slot].extend_from_slice(&request);
            if served >= script.answer {
                return;
            }
            let head = String::from_utf8_lossy(&request).into_owned();
            let target = head.split(' ').nth(1).unwrap_or("?").to_owned();
            let response =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n{target}", target.len(), script.header);
            if s.write_all(response.as_bytes()).is_err() {
                return;
            }
            if served + 1 == script.answer && !script.swallow_next {
                let _ = s.shutdown(std::net::Shutdown::Write);
                return;
            }
        }
    });
    (up, conns)
}

/// One request (head and Content-Length body) from `s`, after what `buf` holds;
/// `None` at EOF or after the read timeout.
fn next_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let lower = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = lower
                .split("content-length: ")
                .nth(1)
                .and_then(|v| v.split("\r\n").next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + len {
                let rest = buf.split_off(end + len);
                return Some(std::mem::replace(buf, rest));
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One response with a Content-Length body from the client connection.
fn read_response(c: &mut TcpStream) -> (String, Vec<u8>) {
    let (head, mut body) = read_head(c);
    let len: usize = head
        .to_ascii_lowercase()
        .split("content-length: ")
        .nth(1)
        .and_then(|v| v.split("\r\n").next())
        .and_then(|v| v.parse().ok())
        .expect("a Content-Length");
    let mut chunk = [0u8; 4096];
    while body.len() < len {
        let n = c.read(&mut chunk).expect("read body");
        assert!(n > 0, "EOF inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), len, "bytes past the response: {:?}", String::from_utf8_lossy(&body));
    (head, body)
}

/// One worker (one pool), routes `/ws/` to `ws` and the rest to `app` (with
/// `app_extra` lines in its table), `extra` sections at the end.
fn config(app: SocketAddr, ws: SocketAddr, app_extra: &str, extra: &str) -> String {
    format!(
        r#"
workers = 1
splice = "userspace"
[[listener]]
address = "127.0.0.1:0"
[timeouts]
header = "2s"
connect = "2s"
response = "2s"
[drain]
window = "0s"
[[route]]
path = "/ws/"
upstream = "ws"
[[route]]
path = "/"
upstream = "app"
[upstream.ws]
servers = ["{ws}"]
[upstream.app]
servers = ["{app}"]
{app_extra}
{extra}
"#
    )
}

/// The forwarding headers wsgate adds for a client on 127.0.0.1 it does not trust.
const FWD: &str = "X-Real-IP: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n";

/// What `recording` answers to a request for `target`, as the client gets it.
fn ok(target: &str, closing: bool) -> String {
    let close = if closing { "Connection: close\r\n" } else { "" };
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{close}\r\n{target}", target.len())
}

fn as_text(conns: &Conns) -> Vec<String> {
    conns.lock().unwrap().iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect()
}

/// Waits (bounded) until the recording upstream holds `want`.
fn wait_for(conns: &Conns, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while as_text(conns) != want {
        assert!(Instant::now() < deadline, "upstream got {:?}\nwanted {want:?}", as_text(conns));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn several_requests_on_one_client_connection_each_arrive_rewritten() {
    let (app, conns) = recording(SERVE_ALL);
    let gw = Gateway::with_config(&config(app.addr, utils::refused_addr(), "", ""), &[]);
    let mut c = gw.connect();
    // No pool: each request goes on its own upstream connection, with `Connection: close`.
    c.write_all(b"GET /one HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 10.6.6.6\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c), (ok("/one", false).replace("/one", ""), b"/one".to_vec()));
    c.write_all(b"POST /two HTTP/1.1\r\nHost: b.test\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello")
        .unwrap();
    assert_eq!(read_response(&mut c).1, b"/two");
    c.write_all(b"GET /three HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut c)), ok("/three", true));
    wait_for(
        &conns,
        &[
            format!("GET /one HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n{FWD}"),
            format!("POST /two HTTP/1.1\r\nHost: b.test\r\nContent-Length: 5\r\nConnection: close\r\n{FWD}hello"),
            format!("GET /three HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n{FWD}"),
        ],
    );
    // One access-log line per request.
    gw.wait_log("\"GET /one HTTP/1.1\" 200 ");
    gw.wait_log("\"POST /two HTTP/1.1\" 200 ");
    gw.wait_log("\"GET /three HTTP/1.1\" 200 ");
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_pooled_upstream_connection() {
    let (app, conns) = recording(SERVE_ALL);
    let gw = Gateway::with_config(&config(app.addr, utils::refused_addr(), "keepalive = 2", ""), &[]);
    let mut c = gw.connect();
    // Three requests in one write; the last ends the connection.
    c.write_all(
        b"GET /a HTTP/1.1\r\nHost: x.test\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: x.test\r\nContent-Length: 3\r\nX-Forwarded-For: 10.0.0.1\r\n\r\nabc\
          GET /c HTTP/1.1\r\nHost: internal\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let answer = String::from_utf8_lossy(&read_to_eof(&mut c)).into_owned();
    assert_eq!(answer, ok("/a", false) + &ok("/b", false) + &ok("/c", true));
    // One upstream connection carried all three, each head rewritten (pooled: no
    // `Connection: close`), the forged X-Forwarded-For replaced.
    wait_for(
        &conns,
        &[format!(
            "GET /a HTTP/1.1\r\nHost: x.test\r\n{FWD}\
             POST /b HTTP/1.1\r\nHost: x.test\r\nContent-Length: 3\r\n{FWD}abc\
             GET /c HTTP/1.1\r\nHost: internal\r\n{FWD}"
        )],
    );
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn upstream_connections_are_reused_across_client_connections() {
    let (app, conns) = recording(SERVE_ALL);
    let gw = Gateway::with_config(
        &config(app.addr, utils::refused_addr(), "keepalive = 2", ""),
        &["--admin", "127.0.0.1:0"],
    );
    for i in 0..4 {
        let mut c = gw.connect();
        c.write_all(format!("GET /r{i} HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
        assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut c)), ok(&format!("/r{i}"), true));
    }
    let want = (0..4).map(|i| format!("GET /r{i} HTTP/1.1\r\nHost: x.test\r\n{FWD}")).collect::<Vec<_>>().concat();
    wait_for(&conns, &[want]);
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
    // The admin plane counts one miss (the first request) and three hits.
    let text = admin_util::scrape(admin_util::admin_addr(&gw));
    assert_eq!(admin_util::count(&text, "wsgate_upstream_pool_hits_total", &[]), 3, "{text}");
    assert_eq!(admin_util::count(&text, "wsgate_upstream_pool_misses_total", &[]), 1);
    assert_eq!(admin_util::count(&text, "wsgate_upstream_connections_opened_total", &[]), 1);
}

#[test]
fn a_pooled_connection_the_upstream_closed_while_idle_is_not_reused() {
    // The upstream answers one request per connection, then closes (without saying so).
    let (app, conns) = recording(Script { answer: 1, header: "", swallow_next: false });
    let gw = Gateway::with_config(&config(app.addr, utils::refused_addr(), "keepalive = 2", ""), &[]);
    let mut c = gw.connect();
    c.write_all(b"GET /first HTTP/1.1\r\nHost: x.test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c).1, b"/first");
    // Its FIN reaches the pooled connection before the next request takes it.
    std::thread::sleep(Duration::from_millis(200));
    c.write_all(b"GET /second HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut c)), ok("/second", true));
    wait_for(
        &conns,
        &[
            format!("GET /first HTTP/1.1\r\nHost: x.test\r\n{FWD}"),
            format!("GET /second HTTP/1.1\r\nHost: x.test\r\n{FWD}"),
        ],
    );
}

#[test]
fn a_request_a_pooled_connection_dropped_unanswered_is_sent_again_on_a_new_one() {
    // The upstream answers one request per connection, then reads the next one and
    // closes without a response: the race of a keep-alive timeout with a new request.
    let (app, conns) = recording(Script { answer: 1, header: "", swallow_next: true });
    let gw = Gateway::with_config(&config(app.addr, utils::refused_addr(), "keepalive = 2", ""), &[]);
    let mut c = gw.connect();
    c.write_all(b"GET /first HTTP/1.1\r\nHost: x.test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c).1, b"/first");
    c.write_all(b"GET /second HTTP/1.1\r\nHost: x.test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c), (ok("/second", false).replace("/second", ""), b"/second".to_vec()));
    let first = format!("GET /first HTTP/1.1\r\nHost: x.test\r\n{FWD}");
    let second = format!("GET /second HTTP/1.1\r\nHost: x.test\r\n{FWD}");
    wait_for(&conns, &[format!("{first}{second}"), second.clone()]);
    // A POST is not sent twice: the client gets 502.
    c.write_all(b"POST /third HTTP/1.1\r\nHost: x.test\r\nContent-Length: 2\r\n\r\nhi").unwrap();
    let (head, _) = read_response(&mut c);
    assert_eq!(status_of(&head), 502, "{head}");
    let third = format!("POST /third HTTP/1.1\r\nHost: x.test\r\nContent-Length: 2\r\n{FWD}hi");
    wait_for(&conns, &[format!("{first}{second}"), format!("{second}{third}")]);
}

#[test]
fn connection_close_from_the_upstream_ends_only_the_upstream_connection() {
    let (app, conns) = recording(Script { answer: usize::MAX, header: "Connection: close\r\n", swallow_next: false });
    let gw = Gateway::with_config(&config(app.addr, utils::refused_addr(), "keepalive = 2", ""), &[]);
    let mut c = gw.connect();
    c.write_all(b"GET /one HTTP/1.1\r\nHost: x.test\r\n\r\n").unwrap();
    // The upstream's `Connection: close` is about its own connection: not passed on.
    assert_eq!(read_response(&mut c), (ok("/one", false).replace("/one", ""), b"/one".to_vec()));
    c.write_all(b"GET /two HTTP/1.1\r\nHost: x.test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c).1, b"/two");
    wait_for(
        &conns,
        &[format!("GET /one HTTP/1.1\r\nHost: x.test\r\n{FWD}"), format!("GET /two HTTP/1.1\r\nHost: x.test\r\n{FWD}")],
    );
    assert_eq!(app.accepted.load(Ordering::SeqCst), 2, "a connection the upstream said close on was reused");
}

#[test]
fn http_1_0_gets_one_request_per_connection() {
    let (app, conns) = recording(SERVE_ALL);
    let gw = Gateway::with_config(&config(app.addr, utils::refused_addr(), "keepalive = 2", ""), &[]);
    let mut c = gw.connect();
    // Even when it asks for keep-alive: a 1.0 client is answered and closed.
    c.write_all(b"GET /old HTTP/1.0\r\nHost: x.test\r\nConnection: keep-alive\r\n\r\nGET /more HTTP/1.0\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut c)), ok("/old", true));
    assert!(started.elapsed() < Duration::from_secs(5), "not closed after the response");
    wait_for(&conns, &[format!("GET /old HTTP/1.0\r\nHost: x.test\r\nConnection: close\r\n{FWD}")]);
}

#[test]
fn the_last_request_by_max_requests_is_answered_with_connection_close() {
    let (app, _) = recording(SERVE_ALL);
    let gw = Gateway::with_config(&config(app.addr, utils::refused_addr(), "", "[limits]\nmax_requests = 2\n"), &[]);
    let mut c = gw.connect();
    c.write_all(b"GET /1 HTTP/1.1\r\nHost: x.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: x.test\r\n\r\nGET /3 HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut c)), ok("/1", false) + &ok("/2", true));
    assert_eq!(app.accepted.load(Ordering::SeqCst), 2, "the third request must not be served");
}

#[test]
fn an_idle_kept_alive_connection_is_closed_after_client_keepalive() {
    let (app, _) = recording(SERVE_ALL);
    let gw = Gateway::with_config(
        &config(app.addr, utils::refused_addr(), "", "")
            .replace("response = \"2s\"", "response = \"2s\"\nclient_keepalive = \"500ms\""),
        &[],
    );
    let mut c = gw.connect();
    c.write_all(b"GET /x HTTP/1.1\r\nHost: x.test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c).1, b"/x");
    let idle = Instant::now();
    let rest = read_to_eof(&mut c);
    let waited = idle.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(waited >= Duration::from_millis(400), "closed after {waited:?}");
    assert!(waited < Duration::from_secs(8), "not closed: {waited:?}");
}

#[test]
fn a_websocket_upgrade_after_a_plain_request_on_the_same_connection_works() {
    let (app, _) = recording(SERVE_ALL);
    let ws = RawUpstream::switching(b"");
    let gw = Gateway::with_config(&config(app.addr, ws.addr, "keepalive = 2", ""), &[]);
    let mut c = gw.connect();
    c.write_all(b"GET /poll HTTP/1.1\r\nHost: x.test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c).1, b"/poll");
    c.write_all(upgrade_request("/ws/chat", "").as_bytes()).unwrap();
    let (head, early) = read_head(&mut c);
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(early.is_empty());
    // The upstream echoes raw bytes: a client frame comes back as sent.
    let frame = utils::client_frame(true, 1, b"after a poll");
    c.write_all(&frame).unwrap();
    assert_eq!(utils::read_exact(&mut c, frame.len()), frame);
    assert_eq!(ws.accepted.load(Ordering::SeqCst), 1);
}

/// Python's `http.client` on one persistent connection: three GETs and a POST.
const PY_CLIENT: &str = r#"
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
for i, (method, body) in enumerate([("GET", None), ("GET", None), ("POST", b"x=1"), ("GET", None)]):
    c.request(method, f"/py{i}", body=body)
    r = c.getresponse()
    print(r.status, r.read().decode(), r.will_close, c.sock.getsockname()[1])
"#;

#[test]
fn python_http_client_keeps_its_connection_across_requests() {
    let (app, conns) = recording(SERVE_ALL);
    let gw = Gateway::with_config(&config(app.addr, utils::refused_addr(), "keepalive = 2", ""), &[]);
    let out = std::process::Command::new("python3")
        .args(["-c", PY_CLIENT, &gw.addr.ip().to_string(), &gw.addr.port().to_string()])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l[..3], ["200", &format!("/py{i}"), "False"], "{stdout}");
        assert_eq!(l[3], lines[0][3], "the client opened a new connection: {stdout}");
    }
    let want = [
        format!("GET /py0 HTTP/1.1\r\nHost: {}\r\nAccept-Encoding: identity\r\n{FWD}", gw.addr),
        format!("GET /py1 HTTP/1.1\r\nHost: {}\r\nAccept-Encoding: identity\r\n{FWD}", gw.addr),
        format!(
            "POST /py2 HTTP/1.1\r\nHost: {}\r\nAccept-Encoding: identity\r\nContent-Length: 3\r\n{FWD}x=1",
            gw.addr
        ),
        format!("GET /py3 HTTP/1.1\r\nHost: {}\r\nAccept-Encoding: identity\r\n{FWD}", gw.addr),
    ];
    wait_for(&conns, &[want.concat()]);
}

#[test]
fn the_drain_closes_an_idle_kept_alive_connection_and_wsgate_exits() {
    let (app, _) = recording(SERVE_ALL);
    let mut gw = Gateway::with_config(&config(app.addr, utils::refused_addr(), "keepalive = 2", ""), &[]);
    let mut c = gw.connect();
    c.write_all(b"GET /x HTTP/1.1\r\nHost: x.test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c).1, b"/x");
    let signalled = Instant::now();
    gw.terminate();
    assert!(read_to_eof(&mut c).is_empty());
    assert!(signalled.elapsed() < Duration::from_secs(5), "closed after {:?}", signalled.elapsed());
    assert!(gw.wait_exit(Duration::from_secs(10)), "wsgate did not exit cleanly");
}
