//! `/metrics` over real scrapes: after known upgrades, refusals and closes of each
//! kind the counters say exactly that, and Python's `prometheus_client` parsers
//! accept both exposition formats.

mod admin_util;
mod utils;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use admin_util::{admin_addr, count, eventually, request, scrape};
use utils::{Gateway, RawUpstream, read_head, status_of, upgrade_request};

const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// An upstream that answers 101 and then ends the connection: with FIN, or (`reset`)
/// with RST after a moment.
fn ending_upstream(reset: bool) -> RawUpstream {
    RawUpstream::start(move |mut s| {
        let _ = read_head(&mut s);
        s.write_all(SWITCHING).unwrap();
        if reset {
            std::thread::sleep(Duration::from_millis(200));
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        }
    })
}

fn config(echo: &RawUpstream, fin: &RawUpstream, rst: &RawUpstream) -> String {
    format!(
        r#"
workers = 2
splice = "userspace"
[[listener]]
address = "127.0.0.1:0"
[timeouts]
idle = "4s"
[[route]]
path = "/fin"
upstream = "fin"
[[route]]
path = "/rst"
upstream = "rst"
[[route]]
path = "/one"
upstream = "echo"
max_connections = 1
[[route]]
path = "/"
upstream = "echo"
[[upstream.echo.servers]]
address = "{}"
[[upstream.fin.servers]]
address = "{}"
[[upstream.rst.servers]]
address = "{}"
"#,
        echo.addr, fin.addr, rst.addr
    )
}

/// Upgrades `path`; returns the client socket after the 101.
fn upgrade(g: &Gateway, path: &str) -> TcpStream {
    let mut c = g.connect();
    c.write_all(upgrade_request(path, "").as_bytes()).unwrap();
    let (head, _) = read_head(&mut c);
    assert_eq!(status_of(&head), 101, "{head}");
    c
}

fn read_until_end(c: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
}

/// Connections ended in each way, and refusals.
const K: usize = 2;
const M: usize = 3;

#[test]
fn counters_say_exactly_what_happened() {
    let (echo, fin, rst) = (RawUpstream::switching(b""), ending_upstream(false), ending_upstream(true));
    let g = Gateway::with_config(&config(&echo, &fin, &rst), &["--admin", "127.0.0.1:0"]);
    let admin = admin_addr(&g);

    // One WebSocket holds the only place of /one; M more are refused there.
    let mut holder = upgrade(&g, "/one/");
    for _ in 0..M {
        let mut c = g.connect();
        c.write_all(upgrade_request("/one/", "").as_bytes()).unwrap();
        let (head, _) = read_head(&mut c);
        assert_eq!(status_of(&head), 503, "{head}");
    }
    holder.shutdown(Shutdown::Write).unwrap();
    read_until_end(&mut holder);

    let mut idle = Vec::new();
    for _ in 0..K {
        // client_fin: 100 bytes echoed, then the client's FIN.
        let mut c = upgrade(&g, "/");
        c.write_all(&[7u8; 100]).unwrap();
        let mut back = [0u8; 100];
        c.read_exact(&mut back).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        read_until_end(&mut c);
        // upstream_fin: the upstream ends first.
        let mut c = upgrade(&g, "/fin");
        read_until_end(&mut c);
        drop(c);
        // client_reset.
        let c = upgrade(&g, "/");
        socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
        drop(c);
        // upstream_reset.
        let mut c = upgrade(&g, "/rst");
        read_until_end(&mut c);
        // idle_timeout (4 s of silence; every other connection here ends well before).
        idle.push(upgrade(&g, "/"));
    }
    for c in &mut idle {
        read_until_end(c);
    }

    let upgrades = 1 + 5 * K;
    let accepted = upgrades + M;
    let mut text = String::new();
    let settled = eventually(Duration::from_secs(15), || {
        text = scrape(admin);
        count(&text, "wsgate_connections_closed_total", &[]) == accepted
            && count(&text, "wsgate_connections_active", &[]) == 0
    });
    assert!(settled, "not every connection was counted closed:\n{text}");
    let n = |name: &str, labels: &[(&str, &str)]| count(&text, name, labels);
    assert_eq!(n("wsgate_connections_accepted_total", &[]), accepted);
    assert_eq!(n("wsgate_upgrade_requests_total", &[]), accepted);
    assert_eq!(n("wsgate_upgrade_requests_total", &[("route", "/one"), ("upstream", "echo")]), 1 + M);
    assert_eq!(n("wsgate_upgrades_total", &[]), upgrades);
    assert_eq!(n("wsgate_upgrades_total", &[("route", "/fin"), ("upstream", "fin")]), K);
    assert_eq!(n("wsgate_handshake_responses_total", &[("code", "101")]), upgrades);
    assert_eq!(n("wsgate_handshake_responses_total", &[("code", "503")]), M);
    assert_eq!(n("wsgate_admission_refusals_total", &[("reason", "route_max_connections")]), M);
    assert_eq!(n("wsgate_admission_refusals_total", &[]), M);
    for (reason, count) in [
        ("client_fin", K + 1),
        ("upstream_fin", K),
        ("client_reset", K),
        ("upstream_reset", K),
        ("idle_timeout", K),
        ("error", M),
        ("shutdown", 0),
        ("drain", 0),
    ] {
        assert_eq!(
            n("wsgate_connections_closed_total", &[("reason", reason)]),
            count,
            "close reason {reason}:\n{text}"
        );
    }
    assert_eq!(n("wsgate_handshake_duration_seconds_count", &[]), upgrades);
    assert_eq!(n("wsgate_connection_duration_seconds_count", &[]), upgrades);
    assert_eq!(n("wsgate_upstream_connect_duration_seconds_count", &[]), upgrades);
    // The idle ones lived at least the idle timeout (4 s), and none a minute.
    assert!(n("wsgate_connection_duration_seconds_bucket", &[("le", "1")]) <= upgrades - K, "{text}");
    assert_eq!(n("wsgate_connection_duration_seconds_bucket", &[("le", "60")]), upgrades, "{text}");
    assert_eq!(n("wsgate_relayed_bytes_total", &[("direction", "to_upstream")]), 100 * K);
    assert!(n("wsgate_relayed_bytes_total", &[("direction", "to_client")]) >= 100 * K + SWITCHING.len() * (1 + 3 * K));
    assert_eq!(n("wsgate_splice_mode", &[("mode", "userspace")]), 1);
    assert_eq!(n("wsgate_upstream_up", &[]), 3);
    assert_eq!(n("wsgate_draining", &[]), 0);
}

/// Runs `/usr/bin/python3` (where the Debian package puts `prometheus_client`) on
/// `script` with the exposition on stdin; returns its stdout.
fn python(script: &str, input: &str) -> String {
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (cargo xtask test installs python3-prometheus-client)");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the exposition: {}\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const PARSE: &str = r"
import sys
from prometheus_client.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        print(f.type, s.name, sorted(s.labels.items()), s.value)
";

const PARSE_OPENMETRICS: &str = r"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        print(f.type, s.name, sorted(s.labels.items()), s.value)
";

#[test]
fn python_prometheus_client_parses_both_formats() {
    let echo = RawUpstream::switching(b"");
    let g = Gateway::one_line(&[echo.addr], &["--admin", "127.0.0.1:0", "--splice", "userspace"]);
    let admin = admin_addr(&g);
    let mut c = upgrade(&g, "/");
    c.shutdown(Shutdown::Write).unwrap();
    read_until_end(&mut c);
    assert!(eventually(Duration::from_secs(10), || count(&scrape(admin), "wsgate_connections_closed_total", &[]) == 1));

    let (status, head, text) = request(admin, "/metrics", None);
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    let parsed = python(PARSE, &text);
    assert!(parsed.contains("counter wsgate_connections_accepted_total [('worker', "), "{parsed}");
    assert!(parsed.contains("histogram wsgate_handshake_duration_seconds_bucket [('le', '+Inf')] 1.0"), "{parsed}");
    assert!(parsed.contains("counter wsgate_upgrades_total [('route', '/'), ('upstream', 'default')] 1.0"), "{parsed}");

    let (status, head, text) = request(admin, "/metrics", Some("application/openmetrics-text; version=1.0.0"));
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: application/openmetrics-text"), "{head}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let parsed = python(PARSE_OPENMETRICS, &text);
    assert!(
        parsed.contains("counter wsgate_connections_closed_total [('reason', 'client_fin'), ('worker', "),
        "{parsed}"
    );
    assert!(parsed.contains("gauge wsgate_upstream_up [('server', "), "{parsed}");
}
