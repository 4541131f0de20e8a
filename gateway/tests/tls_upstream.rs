//! TLS to upstreams (`[upstream.NAME] tls`): wsgate connects to a rustls upstream,
//! verifies its certificate against the configured CA for `server_name` (sent as SNI),
//! presents a client certificate when configured (mutual TLS), and relays WebSockets
//! and plain requests over it — every byte checked — from plain clients, TLS clients
//! and HTTP/2 clients alike. A certificate that does not verify (unknown CA, wrong
//! name), or a missing client certificate, is a 502 with the reason in the log, never
//! a connection to an unverified server; active health checks speak TLS too; bad TLS
//! settings stop the start with the field named. The admin plane counts the upstream
//! handshakes by group and failure reason.

mod admin_util;
mod tls_util;
mod utils;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use admin_util::{admin_addr, count, scrape};
use tls_util::{Pki, TlsEcho, tls_connect, tls_listener, ws_echo};
use utils::{Gateway, read_head, status_of, upgrade_request};

const BASE: &str = "workers = 1\n[timeouts]\nheader = \"5s\"\nconnect = \"5s\"\n";
/// [`BASE`] with a plain listener.
const PLAIN: &str =
    "workers = 1\n[timeouts]\nheader = \"5s\"\nconnect = \"5s\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n";

/// A gateway on a plain listener whose only route goes to `upstream` with `tls` (the
/// TOML value of `upstream.main.tls`).
fn gateway(upstream: std::net::SocketAddr, tls: &str) -> Gateway {
    let config = format!(
        "{PLAIN}[[route]]\nupstream = \"main\"\n[upstream.main]\nservers = [\"{upstream}\"]\nmax_fails = 0\ntls = {tls}\n"
    );
    Gateway::builder().config(&config).log_level("wsgate=debug").start()
}

/// The first diagnostic line of `gw` holding `needle` (waiting for it at most 20 s).
fn stderr_line(gw: &Gateway, needle: &str) -> String {
    gw.wait_stderr(needle, Duration::from_secs(20));
    gw.stderr().into_iter().find(|l| l.contains(needle)).unwrap()
}

fn plain_client(gw: &Gateway) -> TcpStream {
    let s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends `GET path` on `s` and returns the body of its 200 (framed by Content-Length).
fn get(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: example.test\r\n\r\n").as_bytes()).unwrap();
    let (head, mut body) = read_head(s);
    assert_eq!(status_of(&head), 200, "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("a Content-Length");
    while body.len() < length {
        let mut chunk = [0u8; 256];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the end of the body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), length, "more than the body");
    String::from_utf8(body).unwrap()
}

/// The status of an upgrade sent through `gw` on a plain client connection.
fn upgrade_status(gw: &Gateway) -> u16 {
    upgrade_status_on(gw, "/ws")
}

/// The status of an upgrade of `path` sent through `gw` on a plain client connection.
fn upgrade_status_on(gw: &Gateway, path: &str) -> u16 {
    let mut s = plain_client(gw);
    s.write_all(upgrade_request(path, "").as_bytes()).unwrap();
    status_of(&read_head(&mut s).0)
}

#[test]
fn websockets_to_a_tls_upstream_echo_every_byte_verified_for_server_name() {
    let pki = Pki::new();
    let backend = pki.issue("backend", &["backend.test"]);
    let up = TlsEcho::start(&backend, None);
    let ca = pki.ca_file();
    let gw = gateway(up.addr, &format!("{{ server_name = \"backend.test\", ca = \"{}\" }}", ca.display()));

    // A plain client: WebSocket frames from 1 byte to 200 KB, echoed exactly.
    let mut s = plain_client(&gw);
    ws_echo(&mut s, "/ws/plain", 24);
    drop(s);

    // A wss client through a TLS listener of the same gateway: TLS on both sides.
    let front = pki.issue("front", &["gw.test"]);
    let config = format!(
        "{BASE}{}[[route]]\nupstream = \"main\"\n[upstream.main]\nservers = [\"{}\"]\ntls = {{ server_name = \"backend.test\", ca = \"{}\" }}\n",
        tls_listener(Some(&front), &[]),
        up.addr,
        ca.display()
    );
    let gw2 = Gateway::builder().config(&config).start();
    let mut tls = tls_connect(gw2.addr, "gw.test", &pki.client(&[b"http/1.1"])).unwrap();
    ws_echo(&mut tls, "/ws/tls", 24);

    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.sni.as_deref(), Some("backend.test"), "{s:?}");
        assert!(s.request.starts_with("GET /ws/"), "{s:?}");
        assert!(s.client_cert.is_none(), "{s:?}");
    }
    // Each pair was relayed in userspace (TLS), and its bytes counted.
    let line = gw.wait_log("/ws/plain");
    assert!(line.contains("mode=userspace") && line.contains("\" 101 "), "{line}");
}

#[test]
fn a_server_name_taken_from_the_configured_host_name() {
    let pki = Pki::new();
    let backend = pki.issue("localhost", &["localhost"]);
    let up = TlsEcho::start(&backend, None);
    let config = format!(
        "{PLAIN}[[route]]\nupstream = \"main\"\n[upstream.main]\nservers = [\"localhost:{}\"]\ntls = {{ ca = \"{}\" }}\n",
        up.addr.port(),
        pki.ca_file().display()
    );
    let gw = Gateway::builder().config(&config).start();
    let mut s = plain_client(&gw);
    ws_echo(&mut s, "/by-name", 6);
    assert_eq!(up.seen()[0].sni.as_deref(), Some("localhost"));
}

#[test]
fn a_certificate_that_does_not_verify_is_a_502_with_the_reason() {
    let pki = Pki::new();
    // Valid, but for another name than the one configured.
    let other = pki.issue("other", &["other.test"]);
    let up = TlsEcho::start(&other, None);
    let gw = gateway(up.addr, &format!("{{ server_name = \"backend.test\", ca = \"{}\" }}", pki.ca_file().display()));
    assert_eq!(upgrade_status(&gw), 502);
    let line = stderr_line(&gw, "TLS handshake");
    assert!(line.contains("certificate not valid for name \"backend.test\""), "{line}");

    // For the right name, from a CA wsgate was not told to trust.
    let stranger = Pki::new();
    let backend = stranger.issue("backend", &["backend.test"]);
    let up2 = TlsEcho::start(&backend, None);
    let gw2 = gateway(up2.addr, &format!("{{ server_name = \"backend.test\", ca = \"{}\" }}", pki.ca_file().display()));
    assert_eq!(upgrade_status(&gw2), 502);
    let line = stderr_line(&gw2, "TLS handshake");
    // (The stranger CA has the test CA's name: its signature is what fails.)
    assert!(line.contains("invalid peer certificate"), "{line}");

    // The same with the system's roots: the test CA is not among them.
    let gw3 = gateway(up2.addr, "{ server_name = \"backend.test\" }");
    assert_eq!(upgrade_status(&gw3), 502);
    let line = stderr_line(&gw3, "TLS handshake");
    assert!(line.contains("invalid peer certificate: UnknownIssuer"), "{line}");
    // Nothing of a request reached an unverified server.
    for s in up.seen().iter().chain(&up2.seen()) {
        assert!(s.request.is_empty(), "a request went to an unverified server: {s:?}");
    }
}

#[test]
fn upstream_handshakes_are_counted_by_group_and_failure_reason() {
    let pki = Pki::new();
    let good = TlsEcho::start(&pki.issue("backend", &["backend.test"]), None);
    // The right name from a CA wsgate does not trust (it has the test CA's name: its
    // signature is what fails), and a trusted certificate for another name.
    let stranger = Pki::new();
    let untrusted = TlsEcho::start(&stranger.issue("backend", &["backend.test"]), None);
    let misnamed = TlsEcho::start(&pki.issue("other", &["other.test"]), None);
    let tls = format!("{{ server_name = \"backend.test\", ca = \"{}\" }}", pki.ca_file().display());
    let mut config = format!("{PLAIN}[admin]\nlisten = \"127.0.0.1:0\"\n");
    for (group, up) in [("good", &good), ("untrusted", &untrusted), ("misnamed", &misnamed)] {
        let _ = write!(
            config,
            "[[route]]\npath = \"/{group}\"\nupstream = \"{group}\"\n\
             [upstream.{group}]\nservers = [\"{}\"]\nmax_fails = 0\ntls = {tls}\n",
            up.addr
        );
    }
    let gw = Gateway::builder().config(&config).log_level("wsgate=debug").start();
    let admin = admin_addr(&gw);

    for _ in 0..2 {
        assert_eq!(upgrade_status_on(&gw, "/untrusted"), 502);
    }
    for _ in 0..3 {
        assert_eq!(upgrade_status_on(&gw, "/misnamed"), 502);
    }
    let mut s = plain_client(&gw);
    ws_echo(&mut s, "/good", 6);
    drop(s);

    // Counted before each 502 and 101 was sent: one scrape sees them all.
    let text = scrape(admin);
    let handshakes = |group| count(&text, "wsgate_upstream_tls_handshakes_total", &[("upstream", group)]);
    assert_eq!((handshakes("good"), handshakes("untrusted"), handshakes("misnamed")), (1, 0, 0), "{text}");
    let failures = "wsgate_upstream_tls_handshake_failures_total";
    assert_eq!(count(&text, failures, &[("upstream", "untrusted"), ("reason", "bad_certificate")]), 2, "{text}");
    assert_eq!(count(&text, failures, &[("upstream", "misnamed"), ("reason", "name_mismatch")]), 3, "{text}");
    // Nothing else: no other reason, no failure of the good group.
    assert_eq!(count(&text, failures, &[]), 5, "{text}");
    // The listener side's counters are another family: a plain listener, none there.
    assert_eq!(count(&text, "wsgate_tls_handshake_failures_total", &[]), 0, "{text}");
    // Each failure said why, once, at debug level.
    let lines = gw.stderr();
    let said = |reason: &str| {
        lines.iter().filter(|l| l.contains("upstream TLS handshake failed") && l.contains(reason)).count()
    };
    assert_eq!((said("bad_certificate"), said("name_mismatch")), (2, 3), "{lines:#?}");
    assert!(lines.iter().filter(|l| l.contains("upstream TLS handshake failed")).all(|l| l.contains("DEBUG")));
}

#[test]
fn mutual_tls_presents_the_client_certificate() {
    let pki = Pki::new();
    let backend = pki.issue("backend", &["backend.test"]);
    let up = TlsEcho::start(&backend, Some(&pki));
    let ca = pki.ca_file();

    // Without a client certificate the upstream refuses the handshake.
    let gw = gateway(up.addr, &format!("{{ server_name = \"backend.test\", ca = \"{}\" }}", ca.display()));
    assert_eq!(upgrade_status(&gw), 502);

    let client = pki.issue("wsgate-client", &["wsgate-client.test"]);
    let gw2 = gateway(
        up.addr,
        &format!(
            "{{ server_name = \"backend.test\", ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
            ca.display(),
            client.cert.display(),
            client.key.display()
        ),
    );
    let mut s = plain_client(&gw2);
    ws_echo(&mut s, "/mtls", 12);
    let seen = up.seen();
    let with_cert: Vec<_> = seen.iter().filter(|s| s.client_cert.is_some()).collect();
    assert_eq!(with_cert.len(), 1, "{seen:?}");
    assert_eq!(with_cert[0].client_cert.as_deref(), Some(client.der.as_ref()));
    assert!(with_cert[0].request.starts_with("GET /mtls"), "{seen:?}");
}

#[test]
fn plain_requests_to_a_tls_upstream() {
    let pki = Pki::new();
    let backend = pki.issue("backend", &["backend.test"]);
    let up = TlsEcho::start(&backend, None);
    let gw = gateway(up.addr, &format!("{{ server_name = \"backend.test\", ca = \"{}\" }}", pki.ca_file().display()));
    // Two requests on one client connection: each goes on a new TLS connection.
    let mut s = plain_client(&gw);
    for path in ["/one", "/two?x=1"] {
        assert_eq!(get(&mut s, path), format!("sni=backend.test path={path}"));
    }
    assert_eq!(up.seen().len(), 2);
}

#[test]
fn health_checks_speak_tls_and_verify() {
    let pki = Pki::new();
    let good = TlsEcho::start(&pki.issue("good", &["backend.test"]), None);
    let bad = TlsEcho::start(&pki.issue("bad", &["elsewhere.test"]), None);
    let config = format!(
        "{PLAIN}[[route]]\nupstream = \"main\"\n[upstream.main]\nservers = [\"{}\", \"{}\"]\nmax_fails = 0\ntls = {{ server_name = \"backend.test\", ca = \"{}\" }}\n[upstream.main.health_check]\ninterval = \"200ms\"\ntimeout = \"5s\"\nfall = 1\nrise = 1\n",
        good.addr,
        bad.addr,
        pki.ca_file().display()
    );
    let gw = Gateway::builder().config(&config).start();
    let line = stderr_line(&gw, "failed its health checks");
    assert!(line.contains(&bad.addr.to_string()) && line.contains("TLS handshake"), "{line}");
    // The good server's checks pass over TLS (requests reached it) and it stays in.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !good.seen().iter().any(|s| s.request.starts_with("GET /health ")) {
        assert!(std::time::Instant::now() < deadline, "no health check reached the good server");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!gw.stderr().iter().any(|l| l.contains("failed its health checks") && l.contains(&good.addr.to_string())));
    // New connections all go to the server that passed.
    for _ in 0..4 {
        let mut s = plain_client(&gw);
        ws_echo(&mut s, "/after-checks", 2);
    }
    assert_eq!(good.seen().iter().filter(|s| s.request.starts_with("GET /after-checks")).count(), 4);
}

#[test]
fn bad_tls_settings_stop_the_start_naming_the_field() {
    let pki = Pki::new();
    let up = TlsEcho::start(&pki.issue("backend", &["backend.test"]), None);
    let cases = [
        ("{ ca = \"/nonexistent/ca.pem\" }", "upstream.main.tls.ca"),
        ("{ cert = \"/x.pem\" }", "upstream.main.tls.key"),
        ("{ server_name = \"not a name\" }", "upstream.main.tls.server_name"),
        ("\"yes\"", "upstream.main.tls"),
    ];
    for (tls, field) in cases {
        let config = format!(
            "{PLAIN}[[route]]\nupstream = \"main\"\n[upstream.main]\nservers = [\"{}\"]\ntls = {tls}\n",
            up.addr
        );
        let Err(exited) = Gateway::builder().config(&config).start_or_exit() else {
            panic!("started with tls = {tls}");
        };
        let text = exited.stderr.join("\n");
        assert!(text.contains(field), "tls = {tls}: expected `{field}` in:\n{text}");
        // `wsgate check` says the same, without starting.
        let dir = utils::TempDir::new();
        let path = dir.0.join("wsgate.toml");
        std::fs::write(&path, &config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .arg("check")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains(field), "check with tls = {tls}: {said}");
    }
    // A good one passes the check.
    let dir = utils::TempDir::new();
    let path = dir.0.join("wsgate.toml");
    let config = format!(
        "{PLAIN}[[route]]\nupstream = \"main\"\n[upstream.main]\nservers = [\"{}\"]\ntls = {{ ca = \"{}\" }}\n",
        up.addr,
        pki.ca_file().display()
    );
    std::fs::write(&path, config).unwrap();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_wsgate")).arg("check").arg("-c").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Frame `i`'s payload in the backpressure test.
fn payload(i: u64) -> Vec<u8> {
    (0..65_536u64).map(|j| (j.wrapping_mul(7) ^ i.wrapping_mul(13)) as u8).collect()
}

#[test]
fn a_client_that_stops_reading_stops_the_tls_upstream_and_nothing_is_lost() {
    // More than this pushed without reading would mean a relay reads past what the
    // other side takes (four loopback sockets' buffers and the echo's own frame).
    const HELD_AT_MOST: u64 = 160 << 20;
    let pki = Pki::new();
    let up = TlsEcho::start(&pki.issue("backend", &["backend.test"]), None);
    let gw = gateway(up.addr, &format!("{{ server_name = \"backend.test\", ca = \"{}\" }}", pki.ca_file().display()));
    let mut s = plain_client(&gw);
    s.write_all(upgrade_request("/pressure", "").as_bytes()).unwrap();
    let (head, rest) = read_head(&mut s);
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(rest.is_empty());

    // Write 64 KiB frames and read nothing until a write stalls for 3 s.
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let (mut frames, mut pushed, mut at) = (0u64, 0u64, 0usize);
    let mut current = utils::client_frame(true, 2, &payload(0));
    loop {
        match s.write(&current[at..]) {
            Ok(n) => {
                at += n;
                pushed += n as u64;
                assert!(pushed <= HELD_AT_MOST, "{pushed} bytes taken without the client reading");
                if at == current.len() {
                    frames += 1;
                    current = utils::client_frame(true, 2, &payload(frames));
                    at = 0;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => panic!("write failed: {e}"),
        }
    }
    eprintln!("stalled after {pushed} bytes ({frames} whole frames)");
    assert!(frames >= 4, "stalled after only {pushed} bytes");

    // Read again: every frame comes back, whole and in order (the one cut by the
    // stall is finished first).
    let total = frames + u64::from(at > 0);
    let mut r = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        for i in 0..total {
            let (fin, opcode, data) = utils::server_frame(&mut r);
            assert!(fin && opcode == 2 && data == payload(i), "frame {i} differs ({} bytes)", data.len());
        }
        total
    });
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    if at > 0 {
        s.write_all(&current[at..]).unwrap();
    }
    let frames = total;
    assert_eq!(reader.join().unwrap(), frames);
}

#[test]
fn plain_requests_reuse_pooled_tls_connections() {
    let pki = Pki::new();
    let up = TlsEcho::start(&pki.issue("backend", &["backend.test"]), None);
    let config = format!(
        "{PLAIN}[[route]]\nupstream = \"main\"\n[upstream.main]\nservers = [\"{}\"]\nkeepalive = 4\n\
         tls = {{ server_name = \"backend.test\", ca = \"{}\" }}\n",
        up.addr,
        pki.ca_file().display()
    );
    let gw = Gateway::builder().config(&config).start();
    // Three clients one after the other, three requests each: one TLS connection
    // upstream carries all nine.
    for c in 0..3 {
        let mut s = plain_client(&gw);
        for r in 0..3 {
            let path = format!("/keep/{c}/{r}");
            assert_eq!(get(&mut s, &path), format!("sni=backend.test path={path}"));
        }
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 9, "{seen:?}");
    assert!(seen.iter().all(|s| s.conn == seen[0].conn), "more than one upstream connection: {seen:?}");
    // A response that closes its connection is not pooled: the next request opens another.
    let mut s = plain_client(&gw);
    for path in ["/close/a", "/keep/b"] {
        assert_eq!(get(&mut s, path), format!("sni=backend.test path={path}"));
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 11, "{seen:?}");
    assert_ne!(seen[9].conn, seen[10].conn, "{seen:?}");
}
