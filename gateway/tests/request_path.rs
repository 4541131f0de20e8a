//! The request path over real sockets: every byte an upstream receives was parsed and
//! rewritten by wsgate. Each test's upstream records everything it gets until wsgate
//! closes the connection, and the test compares those bytes exactly.

mod utils;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use utils::{Gateway, RawUpstream, read_head, read_to_eof, status_of, upgrade_request};

/// Two routes: `/ws/` to `ws`, everything else to `other`. Client keep-alive is off
/// (`client_keepalive = "0s"`): one request per connection, so each test reads its
/// answer up to the close, and a pipelined request is left unserved (kept-alive
/// connections are proven in `keepalive.rs`).
fn config(ws: SocketAddr, other: SocketAddr, extra: &str) -> String {
    format!(
        r#"
workers = 2
splice = "userspace"
[[listener]]
address = "127.0.0.1:0"
[timeouts]
header = "2s"
connect = "2s"
response = "1s"
client_keepalive = "0s"
[[route]]
path = "/ws/"
upstream = "ws"
[[route]]
path = "/"
upstream = "other"
[upstream.ws]
servers = ["{ws}"]
[upstream.other]
servers = ["{other}"]
{extra}
"#
    )
}

/// Everything each upstream connection received, in accept order.
type Received = Arc<Mutex<Vec<Vec<u8>>>>;

/// An upstream that reads a head, answers `response` and keeps reading until wsgate
/// closes (bounded by the harness's 10 s read timeout), recording every byte.
fn recorder(response: &'static [u8]) -> (RawUpstream, Received) {
    recorder_with(response, false)
}

/// The same; with `close_after`, the upstream ends its side after the response (which
/// then needs no length: it is delimited by the close).
fn recorder_with(response: &'static [u8], close_after: bool) -> (RawUpstream, Received) {
    let got: Received = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let up = RawUpstream::start(move |mut s| {
        let (head, rest) = read_head(&mut s);
        let slot = {
            let mut all = g.lock().unwrap();
            let mut first = head.into_bytes();
            first.extend_from_slice(&rest);
            all.push(first);
            all.len() - 1
        };
        if !response.is_empty() {
            let _ = s.write_all(response);
        }
        if close_after {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => g.lock().unwrap()[slot].extend_from_slice(&buf[..n]),
            }
        }
    });
    (up, got)
}

/// Waits (bounded) until `n` upstream connections have ended, then returns what they got.
fn received(got: &Received, up: &RawUpstream, n: usize, ended: impl Fn(&[u8]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = got.lock().unwrap().clone();
        if up.accepted.load(Ordering::SeqCst) >= n && all.len() >= n && all.iter().all(|r| ended(r)) {
            return all.into_iter().map(|r| String::from_utf8_lossy(&r).into_owned()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "upstream got {:?}",
            all.iter().map(|r| String::from_utf8_lossy(r)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The forwarding headers wsgate adds for a client on 127.0.0.1 it does not trust.
const FWD: &str = "X-Real-IP: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n";

const FORBIDDEN: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
/// `OK` as the client gets it: told that its connection ends after it.
const OK_CLOSED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
const PIPELINED: &str = "GET /admin HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n";

/// Sends `request`, reads the whole answer until wsgate closes.
fn exchange(gw: &Gateway, request: &[u8]) -> String {
    let mut c = gw.connect();
    c.write_all(request).unwrap();
    String::from_utf8_lossy(&read_to_eof(&mut c)).into_owned()
}

#[test]
fn a_request_pipelined_behind_a_refused_upgrade_never_reaches_the_upstream() {
    let (ws, got) = recorder(FORBIDDEN);
    let (other, _) = recorder(OK);
    let gw = Gateway::with_config(&config(ws.addr, other.addr, ""), &[]);
    let req = upgrade_request("/ws/chat", "X-Forwarded-For: 10.9.9.9\r\n") + PIPELINED;
    let answer = exchange(&gw, req.as_bytes());
    assert_eq!(answer.as_bytes(), FORBIDDEN);
    let got = received(&got, &ws, 1, |_| true);
    assert_eq!(
        got,
        [format!(
            "GET /ws/chat HTTP/1.1\r\nHost: example.test\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\nConnection: upgrade\r\n{FWD}"
        )]
    );
    assert_eq!(other.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn bytes_behind_an_accepted_upgrade_reach_the_upstream_after_its_101_as_websocket_data() {
    let (ws, got) = recorder(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    let (other, _) = recorder(OK);
    let gw = Gateway::with_config(&config(ws.addr, other.addr, ""), &[]);
    let mut c = gw.connect();
    let frame = utils::client_frame(true, 1, b"early");
    let mut req = upgrade_request("/ws/chat", "").into_bytes();
    req.extend_from_slice(&frame);
    c.write_all(&req).unwrap();
    assert_eq!(status_of(&read_head(&mut c).0), 101);
    drop(c);
    let got = received(&got, &ws, 1, |r| r.ends_with(&frame));
    assert!(got[0].ends_with(&format!("{FWD}{}", String::from_utf8_lossy(&frame))), "{got:?}");
}

#[test]
fn a_request_pipelined_behind_a_plain_get_never_reaches_the_upstream() {
    let (ws, _) = recorder(OK);
    let (other, got) = recorder(OK);
    let gw = Gateway::with_config(&config(ws.addr, other.addr, ""), &[]);
    let req = format!("GET /health HTTP/1.1\r\nHost: example.test\r\n\r\n{PIPELINED}");
    assert_eq!(exchange(&gw, req.as_bytes()).as_bytes(), OK_CLOSED);
    let got = received(&got, &other, 1, |_| true);
    assert_eq!(got, [format!("GET /health HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n{FWD}")]);
    assert_eq!(ws.accepted.load(Ordering::SeqCst), 0);
    gw.wait_log("\"GET /health HTTP/1.1\" 200 ");
}

#[test]
fn only_the_framed_body_of_a_post_reaches_the_upstream() {
    let (ws, _) = recorder(OK);
    let (other, got) = recorder(OK);
    let gw = Gateway::with_config(&config(ws.addr, other.addr, ""), &[]);
    // Content-Length: the five body bytes, not the pipelined request behind them.
    let req = format!("POST /form HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello{PIPELINED}");
    assert_eq!(exchange(&gw, req.as_bytes()).as_bytes(), OK_CLOSED);
    // Chunked: up to the last chunk's empty line, nothing after it.
    let req = format!(
        "POST /form HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{PIPELINED}"
    );
    assert_eq!(exchange(&gw, req.as_bytes()).as_bytes(), OK_CLOSED);
    let got = received(&got, &other, 2, |_| true);
    assert_eq!(
        got,
        [
            format!(
                "POST /form HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nConnection: close\r\n{FWD}hello"
            ),
            format!(
                "POST /form HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n{FWD}5\r\nhello\r\n0\r\n\r\n"
            ),
        ]
    );
}

/// Sends `request`, expects `status` from wsgate itself and no upstream connection.
fn refused(request: &str, status: u16, extra: &str) {
    let (ws, _) = recorder(OK);
    let (other, _) = recorder(OK);
    let gw = Gateway::with_config(&config(ws.addr, other.addr, extra), &[]);
    let answer = exchange(&gw, request.as_bytes());
    assert_eq!(status_of(&answer), status, "{request:?} → {answer}");
    gw.wait_log(&format!("\" {status} "));
    assert_eq!(ws.accepted.load(Ordering::SeqCst) + other.accepted.load(Ordering::SeqCst), 0, "{request:?}");
}

#[test]
fn a_request_without_host_or_with_two_is_400() {
    refused("GET /health HTTP/1.1\r\nUser-Agent: x\r\n\r\n", 400, "");
    refused("GET /health HTTP/1.1\r\nHost: example.test\r\nHost: internal\r\n\r\n", 400, "");
    refused("GET /health HTTP/1.1\r\nHost: example.test\r\nhost: example.test\r\n\r\n", 400, "");
    refused("GET /health HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "");
    refused(&upgrade_request("/ws/", "Host: internal\r\n"), 400, "");
}

#[test]
fn dot_segments_and_double_slashes_are_resolved_before_routing() {
    let (ws, ws_got) = recorder(OK);
    let (other, other_got) = recorder(OK);
    let gw = Gateway::with_config(&config(ws.addr, other.addr, ""), &[]);
    for target in ["/ws/../admin", "/ws/%2e%2e/admin", "/ws/%2E./admin?x=1", "//admin"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: example.test\r\n\r\n");
        assert_eq!(exchange(&gw, req.as_bytes()).as_bytes(), OK_CLOSED, "{target}");
    }
    let req = "GET //ws//./chat HTTP/1.1\r\nHost: example.test\r\n\r\n";
    assert_eq!(exchange(&gw, req.as_bytes()).as_bytes(), OK_CLOSED);
    let got = received(&other_got, &other, 4, |_| true);
    let head = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n{FWD}");
    assert_eq!(got, [head("/admin"), head("/admin"), head("/admin?x=1"), head("/admin")]);
    assert_eq!(received(&ws_got, &ws, 1, |_| true), [head("/ws/chat")]);
    // The access log keeps the target as sent.
    gw.wait_log("\"GET /ws/%2e%2e/admin HTTP/1.1\" 200 ");
}

#[test]
fn ambiguous_paths_are_refused() {
    for target in ["/ws/../../etc/passwd", "/ws/%2f../admin", "/ws/..%5Cadmin", "/ws/%00", "/ws/%zz", "/ws\\..\\admin"]
    {
        refused(&format!("GET {target} HTTP/1.1\r\nHost: example.test\r\n\r\n"), 400, "");
    }
}

#[test]
fn http_1_0_goes_upstream_as_http_1_0_with_its_host_or_is_refused_without_one() {
    let (ws, _) = recorder(OK);
    let (other, got) = recorder_with(b"HTTP/1.0 200 OK\r\n\r\nold", true);
    let gw = Gateway::with_config(&config(ws.addr, other.addr, ""), &[]);
    let answer = exchange(&gw, b"GET /page HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(answer, "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nold");
    let got = received(&got, &other, 1, |_| true);
    assert_eq!(got, [format!("GET /page HTTP/1.0\r\nHost: example.test\r\nConnection: close\r\n{FWD}")]);
    refused("GET /page HTTP/1.0\r\n\r\n", 400, "");
    refused("POST /page HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "");
}

#[test]
fn a_plain_request_to_a_silent_upstream_is_504_after_the_response_timeout() {
    let (ws, _) = recorder(OK);
    let (other, got) = recorder(b"");
    let gw = Gateway::with_config(&config(ws.addr, other.addr, ""), &[]);
    let t0 = Instant::now();
    let answer = exchange(&gw, b"GET /slow HTTP/1.1\r\nHost: example.test\r\n\r\n");
    assert_eq!(status_of(&answer), 504, "{answer}");
    let waited = t0.elapsed();
    // timeouts.response is 1 s; the idle timeout (1 h) must not be what ended it.
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(8), "{waited:?}");
    gw.wait_log("\"GET /slow HTTP/1.1\" 504 ");
    assert_eq!(
        received(&got, &other, 1, |_| true),
        [format!("GET /slow HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n{FWD}")]
    );
}

#[test]
fn the_header_count_limit_is_configurable() {
    let (ws, _) = recorder(OK);
    let (other, got) = recorder(OK);
    let headers = (0..200).fold(String::new(), |mut s, i| {
        use std::fmt::Write as _;
        let _ = write!(s, "X-H{i}: v\r\n");
        s
    });
    let req = format!("GET /many HTTP/1.1\r\nHost: example.test\r\n{headers}\r\n");
    // The default (256) takes 200 small headers, every one forwarded.
    let gw = Gateway::with_config(&config(ws.addr, other.addr, ""), &[]);
    assert_eq!(exchange(&gw, req.as_bytes()).as_bytes(), OK_CLOSED);
    let got = received(&got, &other, 1, |_| true);
    assert_eq!(got, [format!("GET /many HTTP/1.1\r\nHost: example.test\r\n{headers}Connection: close\r\n{FWD}")]);
    // A lower limit refuses them with 431.
    refused(&req, 431, "[limits]\nmax_headers = 100\n");
}

#[test]
fn a_client_reset_right_after_its_upgrade_is_logged_as_a_client_reset() {
    for splice in ["userspace", "auto"] {
        // The 101 comes late, so the reset is already queued when wsgate hands over.
        let ws = RawUpstream::start(|mut s| {
            let _ = read_head(&mut s);
            std::thread::sleep(Duration::from_millis(300));
            let _ =
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
            let _ = read_to_eof(&mut s);
        });
        let (other, _) = recorder(OK);
        let cfg = config(ws.addr, other.addr, "").replace("splice = \"userspace\"", &format!("splice = \"{splice}\""));
        let gw = Gateway::with_config(&cfg, &[]);
        let c = gw.connect();
        (&c).write_all(upgrade_request("/ws/", "").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
        drop(c);
        let line = gw.wait_log("\"GET /ws/ HTTP/1.1\"");
        assert!(line.contains("close=client_reset"), "splice = {splice}: {line}");
    }
}

/// A route's host matches the Host header in any case and with any port.
#[test]
fn a_route_by_host_takes_its_host_in_any_case_and_with_a_port() {
    let (ws, ws_got) = recorder(OK);
    let (other, other_got) = recorder(OK);
    let cfg = config(ws.addr, other.addr, "").replacen(
        "[[route]]",
        "[[route]]\nhost = \"Chat.Example\"\nupstream = \"ws\"\n[[route]]",
        1,
    );
    let gw = Gateway::with_config(&cfg, &[]);
    for host in ["chat.example", "CHAT.example:8080"] {
        let request = format!("GET /a HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(exchange(&gw, request.as_bytes()).as_bytes(), OK_CLOSED, "{host}");
    }
    assert_eq!(exchange(&gw, b"GET /a HTTP/1.1\r\nHost: chat.example.org\r\n\r\n").as_bytes(), OK_CLOSED);
    let to_ws = received(&ws_got, &ws, 2, |_| true);
    assert!(
        to_ws[0].contains("Host: chat.example\r\n") && to_ws[1].contains("Host: CHAT.example:8080\r\n"),
        "{to_ws:?}"
    );
    let to_other = received(&other_got, &other, 1, |_| true);
    assert!(to_other[0].contains("Host: chat.example.org\r\n"), "{to_other:?}");
}

#[test]
fn an_upstream_given_by_host_name_is_resolved() {
    let (ws, _) = recorder(OK);
    let (other, got) = recorder(OK);
    let cfg = config(ws.addr, other.addr, "")
        .replace(&format!("[\"{}\"]", other.addr), &format!("[\"localhost:{}\"]", other.addr.port()));
    assert!(cfg.contains("\"localhost:"), "{cfg}");
    let gw = Gateway::with_config(&cfg, &[]);
    assert_eq!(exchange(&gw, b"GET /named HTTP/1.1\r\nHost: example.test\r\n\r\n").as_bytes(), OK_CLOSED);
    let got = received(&got, &other, 1, |_| true);
    assert_eq!(got, [format!("GET /named HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n{FWD}")]);
    gw.wait_log(&format!("ua=127.0.0.1:{}", other.addr.port()));
}

#[test]
fn a_bad_server_address_says_what_is_accepted() {
    let dir = utils::TempDir::new();
    for (servers, want) in [
        ("[\"localhost\"]", "`localhost`: no port; expected IP:PORT, [IPv6]:PORT or HOST:PORT"),
        ("[{ address = \"bad host:80\" }]", "`bad host:80`: not an IP address or a DNS name; expected IP:PORT"),
        ("[\"backend:http\"]", "the port must be a number from 1 to 65535"),
    ] {
        let path = dir.0.join("bad.toml");
        std::fs::write(
            &path,
            format!("[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.main]\nservers = {servers}\n[[route]]\nupstream = \"main\"\n"),
        )
        .unwrap();
        let out =
            std::process::Command::new(env!("CARGO_BIN_EXE_wsgate")).args(["check", "-c"]).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(want) && stderr.contains("line 4"), "{servers}: {stderr}");
    }
    // A name that does not resolve stops the start with the field named.
    let path = dir.0.join("unresolved.toml");
    std::fs::write(
        &path,
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.main]\nservers = [\"127.0.0.1:1\", \"no-such-host.invalid:80\"]\n[[route]]\nupstream = \"main\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate")).arg("-c").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("upstream.main.servers[1].address: cannot resolve `no-such-host.invalid:80`"),
        "{stderr}"
    );
}
