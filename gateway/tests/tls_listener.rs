//! TLS listeners over real sockets, with a rustls client and the test CA: SNI picks
//! the certificate, WebSockets and plain HTTP go through over TLS with
//! `X-Forwarded-Proto: https`, plain and TLS listeners serve side by side, bad
//! handshakes are counted by reason and leave the worker serving, and `wsgate check`
//! validates the files.

mod admin_util;
mod tls_util;
mod utils;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tls_util::{Pki, listeners, peer_leaf, tls_connect, tls_listener, ws_echo};
use utils::{Gateway, RawUpstream, WsEcho, read_head, upgrade_request};

const BASE: &str = "workers = 1\nsplice = \"auto\"\n[timeouts]\nheader = \"1s\"\n";

fn routes(upstream: std::net::SocketAddr) -> String {
    format!("[[route]]\nupstream = \"main\"\n[upstream.main]\nservers = [\"{upstream}\"]\n")
}

#[test]
fn sni_picks_exact_then_wildcard_then_default() {
    let pki = Pki::new();
    let default = pki.issue("default", &["default.test"]);
    let api = pki.issue("api", &["api.test"]);
    let wild = pki.issue("wild", &["*.wild.test"]);
    let echo = WsEcho::start();
    let config = format!(
        "{BASE}{}{}",
        tls_listener(Some(&default), &[(&["api.test"], &api), (&["*.wild.test"], &wild)]),
        routes(echo.addr)
    );
    let gw = Gateway::builder().config(&config).start();
    let client = pki.client(&[b"http/1.1"]);
    for (sni, want) in [("api.test", &api), ("a.wild.test", &wild), ("default.test", &default)] {
        let tls = tls_connect(gw.addr, sni, &client).unwrap();
        assert!(peer_leaf(&tls) == want.der, "{sni}: wrong certificate");
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "{sni}: ALPN");
    }
    // A name no entry has gets the default, which does not cover it: the client refuses.
    let err = tls_connect(gw.addr, "other.test", &client).expect_err("the default does not cover other.test");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn unknown_name_without_default_is_refused_and_counted() {
    let pki = Pki::new();
    let api = pki.issue("api", &["api.test"]);
    let echo = WsEcho::start();
    let config = format!("{BASE}{}{}", tls_listener(None, &[(&["api.test"], &api)]), routes(echo.addr));
    let gw = Gateway::builder().config(&config).log_level("wsgate=debug").start();
    let client = pki.client(&[b"http/1.1"]);
    assert!(tls_connect(gw.addr, "nobody.test", &client).is_err());
    gw.wait_stderr("reason=\"unknown_sni\"", Duration::from_secs(10));
    // The listener still serves the name it has.
    let mut tls = tls_connect(gw.addr, "api.test", &client).unwrap();
    ws_echo(&mut tls, "/ws", 6);
}

#[test]
fn wss_echoes_every_byte_with_forwarded_proto_https_beside_a_plain_listener() {
    let pki = Pki::new();
    let cert = pki.issue("gw", &["gw.test"]);
    let echo = WsEcho::start();
    let config = format!(
        "{BASE}{}[[listener]]\naddress = \"127.0.0.1:0\"\n{}",
        tls_listener(Some(&cert), &[]),
        routes(echo.addr)
    );
    let gw = Gateway::builder().config(&config).log_level("wsgate=info").start();
    let addrs = listeners(&gw, 2);
    let client = pki.client(&[b"http/1.1"]);
    let mut tls = tls_connect(addrs[0], "gw.test", &client).unwrap();
    ws_echo(&mut tls, "/tls", 12);
    let mut plain = std::net::TcpStream::connect(addrs[1]).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ws_echo(&mut plain, "/plain", 12);
    // A plain client on the TLS port and a TLS client on the plain port get nowhere.
    assert!(tls_connect(addrs[1], "gw.test", &client).is_err());

    let requests = echo.requests.lock().unwrap().clone();
    let proto = |path_marker: usize| {
        requests[path_marker].iter().find(|(k, _)| k == "x-forwarded-proto").map(|(_, v)| v.clone()).unwrap_or_default()
    };
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(proto(0), "https");
    assert_eq!(proto(1), "http");
}

#[test]
fn plain_http_over_tls_is_proxied_and_closed() {
    let pki = Pki::new();
    let cert = pki.issue("gw", &["gw.test"]);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen2 = seen.clone();
    let upstream = RawUpstream::start(move |mut s| {
        let (head, _) = read_head(&mut s);
        *seen2.lock().unwrap() = head;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
    });
    let config = format!("{BASE}{}{}", tls_listener(Some(&cert), &[]), routes(upstream.addr));
    let gw = Gateway::builder().config(&config).start();
    let mut tls = tls_connect(gw.addr, "gw.test", &pki.client(&[])).unwrap();
    tls.write_all(b"GET /page HTTP/1.1\r\nHost: gw.test\r\n\r\n").unwrap();
    let mut got = Vec::new();
    // The gateway closes after the response (close_notify, then FIN).
    let _ = tls.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nhello"), "{got}");
    let head = seen.lock().unwrap().to_ascii_lowercase();
    assert!(head.contains("x-forwarded-proto: https"), "{head}");
}

/// Reads until the gateway closes (EOF or reset), bounded by the read timeout.
fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("not closed within {within:?}: {e}"),
        }
    }
}

/// The first bytes of a real ClientHello (from a rustls client), cut in half.
fn half_client_hello(pki: &Pki) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(pki.client(&[]), "gw.test".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 100 && hello[0] == 0x16, "a ClientHello record");
    hello.truncate(hello.len() / 2);
    hello
}

#[test]
fn bad_handshakes_are_counted_and_the_worker_serves_the_next_client() {
    let pki = Pki::new();
    let cert = pki.issue("gw", &["gw.test"]);
    let echo = WsEcho::start();
    let config =
        format!("{BASE}[admin]\nlisten = \"127.0.0.1:0\"\n{}{}", tls_listener(Some(&cert), &[]), routes(echo.addr));
    // One worker: a stuck one would stop every later connection.
    let gw = Gateway::builder().config(&config).log_level("wsgate=debug").start();
    let client = pki.client(&[b"http/1.1"]);

    // Garbage instead of a ClientHello: refused at once.
    let mut s = gw.connect();
    s.write_all(&upgrade_request("/", "").into_bytes()).unwrap();
    closed_within(&mut s, Duration::from_secs(10));
    gw.wait_stderr("reason=\"not_tls\"", Duration::from_secs(10));

    // Half a ClientHello, then the client leaves.
    let mut s = gw.connect();
    s.write_all(&half_client_hello(&pki)).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    closed_within(&mut s, Duration::from_secs(10));
    gw.wait_stderr("reason=\"closed_early\"", Duration::from_secs(10));

    // Half a ClientHello, then nothing: the header timeout (1s) ends it, and meanwhile
    // the worker serves others.
    let mut slow = gw.connect();
    slow.write_all(&half_client_hello(&pki)).unwrap();
    let mut tls = tls_connect(gw.addr, "gw.test", &client).unwrap();
    ws_echo(&mut tls, "/during", 6);
    let waited = closed_within(&mut slow, Duration::from_secs(15));
    assert!(waited >= Duration::from_millis(500), "closed after {waited:?}, before the timeout");
    gw.wait_stderr("reason=\"timeout\"", Duration::from_secs(10));

    let mut tls = tls_connect(gw.addr, "gw.test", &client).unwrap();
    ws_echo(&mut tls, "/after", 6);
    assert!(gw.stderr().iter().all(|l| !l.contains("ERROR")), "{:#?}", gw.stderr());

    // Counted by reason in /metrics: one of each, and the two good handshakes.
    let text = admin_util::scrape(admin_util::admin_addr(&gw));
    for reason in ["not_tls", "closed_early", "timeout"] {
        let n = admin_util::sample(&text, "wsgate_tls_handshake_failures_total", &[("reason", reason)]);
        assert!((n - 1.0).abs() < f64::EPSILON, "{reason}: {n}");
    }
    assert!(admin_util::sample(&text, "wsgate_tls_handshake_failures_total", &[("reason", "unknown_sni")]) < 0.5);
    let done = admin_util::sample(&text, "wsgate_tls_handshakes_total", &[]);
    assert!((done - 2.0).abs() < f64::EPSILON, "{done}");
}

/// `wsgate check -c FILE`: exit status and output.
fn check(config: &str) -> (bool, String) {
    let dir = utils::TempDir::new();
    let path = dir.0.join("wsgate.toml");
    std::fs::write(&path, config).unwrap();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_wsgate")).arg("check").arg("-c").arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn check_validates_certificates_and_keys() {
    let pki = Pki::new();
    let good = pki.issue("good", &["good.test"]);
    let other = pki.issue("other", &["other.test"]);
    let soon = pki.issue_for("soon", &["soon.test"], 5);
    let up = routes("127.0.0.1:9".parse().unwrap());

    let (ok, out) = check(&format!("{BASE}{}{up}", tls_listener(Some(&good), &[(&["soon.test"], &soon)])));
    assert!(ok, "{out}");
    assert!(out.contains("warning: listener[0].tls.sni[0].cert: the certificate expires in"), "{out}");
    assert!(!out.contains("listener[0].tls.cert"), "the good one is not warned about: {out}");

    let mismatched = tls_util::Issued { cert: good.cert.clone(), key: other.key.clone(), der: good.der.clone() };
    let (ok, out) = check(&format!("{BASE}{}{up}", tls_listener(Some(&mismatched), &[])));
    assert!(!ok && out.contains("listener[0].tls.key:") && out.contains("does not match"), "{out}");

    let missing = tls_util::Issued { cert: pki.dir.0.join("nope.pem"), key: good.key.clone(), der: good.der.clone() };
    let (ok, out) = check(&format!("{BASE}{}{up}", tls_listener(None, &[(&["x.test"], &missing)])));
    assert!(!ok && out.contains("listener[0].tls.sni[0].cert:") && out.contains("nope.pem"), "{out}");

    let (ok, out) = check(&format!("{BASE}{}{up}", tls_listener(Some(&good), &[(&["*.a.*"], &good)])));
    assert!(!ok && out.contains("listener[0].tls.sni[0].names:"), "{out}");

    let (ok, out) =
        check(&format!("{BASE}[[listener]]\naddress = \"127.0.0.1:0\"\ntls = {{ cert = \"/x.pem\" }}\n{up}"));
    assert!(!ok && out.contains("listener[0].tls.key: required with `cert`"), "{out}");
}

#[test]
fn one_line_form_makes_tls_listeners() {
    let pki = Pki::new();
    let cert = pki.issue("gw", &["gw.test"]);
    let echo = WsEcho::start();
    let (c, k) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
    let gw = Gateway::builder().one_line(&[echo.addr]).args(&["--tls-cert", c, "--tls-key", k]).start();
    let mut tls = tls_connect(gw.addr, "gw.test", &pki.client(&[b"http/1.1"])).unwrap();
    ws_echo(&mut tls, "/", 6);
}
