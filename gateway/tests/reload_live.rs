//! Reload over real sockets: live WebSockets (plain ones spliced in the kernel, wss ones
//! relayed in userspace) stream through reloads that move the route between upstream
//! groups, take a server out of its group, swap the TLS certificate on disk, plus an
//! invalid file and a bad certificate; not one is dropped and every echoed byte is
//! checked (Python `websockets`). New connections follow each new configuration, the
//! refused ones leave the old behaviour with a log line naming the field, `wsgate
//! reload` finds the process by its pid file, the metrics count reloads by result, and
//! SIGUSR1 after the reloads still reopens the moved access log.

mod admin_util;
mod reload_util;
mod tls_util;
mod utils;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use admin_util::{admin_addr, count, eventually, scrape};
use reload_util::{Clients, echo_once, replace, websocket};
use tls_util::{Issued, Pki, listeners, peer_leaf, tls_connect};
use utils::{Gateway, TempDir, WsEcho, read_head, status_of, upgrade_request};

/// Plain (spliced) and wss (userspace) streaming connections: modest, so the test is
/// fast on a loaded 2-core machine.
const PLAIN: usize = 60;
const TLS: usize = 40;
/// How long a reload or a log line may take on a loaded machine.
const WITHIN: Duration = Duration::from_secs(20);

/// What one configuration of the test says.
struct Shape<'a> {
    /// The group the route sends new connections to.
    route_to: &'a str,
    /// Upstream groups and their servers.
    groups: &'a [(&'a str, SocketAddr)],
    /// Something appended (an invalid value, for the refused reload).
    extra: &'a str,
}

/// The files of the running gateway.
struct Files {
    dir: TempDir,
    config: PathBuf,
    pid: PathBuf,
    log: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = TempDir::new();
        let p = |n: &str| dir.0.join(n);
        Self {
            config: p("wsgate.toml"),
            pid: p("wsgate.pid"),
            log: p("access.log"),
            cert: p("live.crt"),
            key: p("live.key"),
            dir,
        }
    }

    /// Writes the configuration. The certificate file watch is off: here each reload
    /// is a signal's, so the counts of reloads are exact (`tls_cert_watch` tests the
    /// watch).
    fn write_config(&self, shape: &Shape) {
        let mut groups = String::new();
        for (name, server) in shape.groups {
            let _ = write!(groups, "[upstream.{name}]\nservers = [\"{server}\"]\n");
        }
        let text = format!(
            "workers = 2\nsplice = \"auto\"\npid_file = \"{pid}\"\n[relay]\nsplice_after = \"0s\"\n\
             [drain]\nwindow = \"1s\"\njitter = 0.0\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [reload]\nwatch_tls = \"0s\"\n\
             [access_log]\npath = \"{log}\"\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
             [[route]]\nupstream = \"{route}\"\n{groups}{extra}",
            pid = self.pid.display(),
            log = self.log.display(),
            cert = self.cert.display(),
            key = self.key.display(),
            route = shape.route_to,
            extra = shape.extra,
        );
        replace(&self.config, text.as_bytes());
    }

    /// Puts `issued` where the TLS listener reads its certificate and key.
    fn install(&self, issued: &Issued) {
        replace(&self.cert, &std::fs::read(&issued.cert).unwrap());
        replace(&self.key, &std::fs::read(&issued.key).unwrap());
    }
}

/// Opens one new WebSocket and says which upstream received it.
fn probe(gw: &Gateway, a: &WsEcho, b: &WsEcho) -> &'static str {
    use std::io::Write as _;
    let before = (a.requests.lock().unwrap().len(), b.requests.lock().unwrap().len());
    let mut c = gw.connect();
    c.write_all(upgrade_request("/probe", "").as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut c).0), 101);
    let after = (a.requests.lock().unwrap().len(), b.requests.lock().unwrap().len());
    match (after.0 - before.0, after.1 - before.1) {
        (1, 0) => "a",
        (0, 1) => "b",
        other => panic!("the probe reached {other:?} (a, b) upstreams"),
    }
}

/// The wall-clock now, as the Python clients write it.
fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Waits for the `n`-th line saying `needle`; returns it.
fn nth_line(gw: &Gateway, needle: &str, n: usize) -> String {
    gw.wait_stderr_count(needle, n, WITHIN);
    gw.stderr().into_iter().filter(|l| l.contains(needle)).nth(n - 1).unwrap()
}

/// Lets the streams flow a moment between two reloads.
fn stream_a_while() {
    std::thread::sleep(Duration::from_millis(700));
}

#[test]
#[allow(clippy::too_many_lines, reason = "one story: each reload and what it must leave behind, in order")]
fn live_websockets_stream_through_reloads_and_new_ones_follow_the_new_config() {
    let (a, b) = (WsEcho::start(), WsEcho::start());
    let pki = Pki::new();
    let (first_cert, second_cert) = (pki.issue("first", &["localhost"]), pki.issue("second", &["localhost"]));
    let files = Files::new();
    files.install(&first_cert);
    files.write_config(&Shape { route_to: "a", groups: &[("a", a.addr), ("b", b.addr)], extra: "" });
    let mut gw = Gateway::builder().args(&["-c", files.config.to_str().unwrap()]).log_level("wsgate=info").start();
    let addrs = listeners(&gw, 2);
    let (plain, tls) = (addrs[0], addrs[1]);
    let admin = admin_addr(&gw);
    assert_eq!(probe(&gw, &a, &b), "a");

    // Every live connection opens to `a` under generation 1.
    let mut urls = vec![format!("ws://{plain}/live/plain"); 3];
    urls.extend(vec![format!("wss://{tls}/live/tls"); 2]);
    let mut clients = Clients::open(PLAIN + TLS, &urls, &pki.ca_file(), files.dir.0.join("stop"), 120);
    assert_eq!(a.requests.lock().unwrap().len(), 1 + PLAIN + TLS);
    stream_a_while();

    // 1. SIGHUP: the route moves to `b`.
    files.write_config(&Shape { route_to: "b", groups: &[("a", a.addr), ("b", b.addr)], extra: "" });
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    nth_line(&gw, "configuration reloaded", 1);
    assert_eq!(probe(&gw, &a, &b), "b", "new connections follow generation 2");
    stream_a_while();

    // 2. `wsgate reload`: group `a` loses server A (its live WebSockets keep going) for
    //    B, and the route comes back to `a`.
    files.write_config(&Shape { route_to: "a", groups: &[("a", b.addr)], extra: "" });
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["reload", "--pid-file", files.pid.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "wsgate reload: {}", String::from_utf8_lossy(&out.stderr));
    nth_line(&gw, "configuration reloaded", 2);
    assert_eq!(probe(&gw, &a, &b), "b", "group `a` is server B now");
    stream_a_while();

    // 3. An invalid file: refused, the field named, generation 3 still serves.
    files.write_config(&Shape {
        route_to: "a",
        groups: &[("a", a.addr)],
        extra: "[limits]\nmax_connections = \"many\"\n",
    });
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    let refused = nth_line(&gw, "reload refused", 1);
    assert!(refused.contains("max_connections"), "the error names the field: {refused}");
    assert_eq!(probe(&gw, &a, &b), "b", "the refused file changed nothing");
    stream_a_while();

    // 4. A new certificate on disk and group `a` back to server A.
    files.install(&second_cert);
    files.write_config(&Shape { route_to: "a", groups: &[("a", a.addr)], extra: "" });
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    nth_line(&gw, "configuration reloaded", 3);
    assert_eq!(probe(&gw, &a, &b), "a");
    let client = pki.client(&[b"http/1.1"]);
    assert!(
        peer_leaf(&tls_connect(tls, "localhost", &client).unwrap()) == second_cert.der,
        "the new certificate is served"
    );
    stream_a_while();

    // 5. A certificate that does not parse: refused, the listener named, the last good
    //    certificate still served.
    replace(&files.cert, b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n");
    files.write_config(&Shape { route_to: "b", groups: &[("a", a.addr), ("b", b.addr)], extra: "" });
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    let refused = nth_line(&gw, "reload refused", 2);
    assert!(refused.contains("listener[1].tls"), "the error names the listener: {refused}");
    assert!(peer_leaf(&tls_connect(tls, "localhost", &client).unwrap()) == second_cert.der);
    assert_eq!(probe(&gw, &a, &b), "a", "the refused reload left the route alone");
    let last_reload = now_secs();
    // Long enough for every connection to echo again on a loaded machine (each sends
    // every 10–50 ms).
    std::thread::sleep(Duration::from_secs(2));

    let text = scrape(admin);
    assert_eq!(count(&text, "wsgate_reloads_total", &[("result", "ok")]), 3, "{text}");
    assert_eq!(count(&text, "wsgate_reloads_total", &[("result", "failed")]), 2);
    assert_eq!(count(&text, "wsgate_config_generation", &[]), 4);

    // Zero dropped, every echo exact, every connection still streaming after the last
    // reload, every close clean.
    let reports = clients.finish(PLAIN + TLS);
    for r in &reports {
        assert!(r["error"].is_null() && r["clean"] == true, "{r}");
        assert_eq!(r["bad"], 0, "{r}");
        assert!(r["last_echo"].as_f64().unwrap() > last_reload, "stopped streaming before the last reload: {r}");
    }
    let echoed: u64 = reports.iter().map(|r| r["echoed"].as_u64().unwrap()).sum();
    assert!(echoed >= 5 * (PLAIN + TLS) as u64, "{echoed} echoes");

    // The plain ones were spliced, the wss ones relayed in userspace (access log).
    let lines = || std::fs::read_to_string(&files.log).unwrap_or_default();
    let closed = |path: &str| lines().lines().filter(|l| l.contains(&format!("GET {path} "))).count();
    assert!(eventually(WITHIN, || closed("/live/plain") == PLAIN && closed("/live/tls") == TLS), "{}", lines());
    for l in lines().lines() {
        if l.contains("GET /live/plain ") {
            assert!(l.contains("mode=splice") || l.contains("mode=userspace+splice"), "not spliced: {l}");
        } else if l.contains("GET /live/tls ") {
            assert!(l.contains("mode=userspace"), "{l}");
        }
    }

    // SIGUSR1 after the reloads: the moved access log is reopened.
    let rotated = files.dir.0.join("access.log.1");
    std::fs::rename(&files.log, &rotated).unwrap();
    gw.signal(nix::sys::signal::Signal::SIGUSR1);
    assert!(eventually(WITHIN, || files.log.exists()), "the access log was not reopened");
    assert_eq!(probe(&gw, &a, &b), "a");
    assert!(gw.running());
    gw.terminate();
    assert!(gw.wait_exit(WITHIN), "wsgate did not exit cleanly");
    assert!(lines().contains("GET /probe "), "the probe's line went to the reopened file: {}", lines());
    assert!(!files.pid.exists(), "the pid file is removed at exit");
}

#[test]
fn listeners_are_added_and_removed_on_reload_and_their_websockets_go_on() {
    let echo = WsEcho::start();
    let dir = TempDir::new();
    let file = dir.0.join("wsgate.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let write = |listeners: &[String]| {
        let mut text = String::from(
            "workers = 2\nsplice = \"auto\"\n[relay]\nsplice_after = \"0s\"\n[drain]\nwindow = \"1s\"\njitter = 0.0\n",
        );
        for a in listeners {
            let _ = write!(text, "[[listener]]\naddress = \"{a}\"\n");
        }
        let _ = write!(text, "[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [\"{}\"]\n", echo.addr);
        replace(&file, text.as_bytes());
    };
    let (first, added) = ("127.0.0.1:0".to_owned(), format!("127.0.0.1:{port}"));
    write(std::slice::from_ref(&first));
    let mut gw = Gateway::builder().args(&["-c", file.to_str().unwrap()]).log_level("wsgate=info").start();
    let mut live = websocket(gw.addr);
    echo_once(&mut live, 0);

    // Added: the new address serves at once; the first one still does.
    write(&[first.clone(), added.clone()]);
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    nth_line(&gw, "configuration reloaded", 1);
    let added: SocketAddr = added.parse().unwrap();
    echo_once(&mut websocket(added), 1);
    echo_once(&mut websocket(gw.addr), 2);
    echo_once(&mut live, 3);

    // Removed: the first address stops accepting; the WebSocket it accepted goes on.
    write(&[added.to_string()]);
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    nth_line(&gw, "configuration reloaded", 2);
    assert!(
        eventually(WITHIN, || std::net::TcpStream::connect(gw.addr).is_err()),
        "the removed listener still accepts"
    );
    echo_once(&mut live, 4);
    echo_once(&mut websocket(added), 5);

    // An address that cannot be bound refuses the whole reload, by listener.
    write(&[added.to_string(), busy.local_addr().unwrap().to_string()]);
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    let refused = nth_line(&gw, "reload refused", 1);
    assert!(refused.contains("listener[1]: cannot listen on"), "{refused}");
    echo_once(&mut websocket(added), 6);
    echo_once(&mut live, 7);

    drop(live);
    gw.terminate();
    assert!(gw.wait_exit(WITHIN), "wsgate did not exit cleanly");
}

/// Issue 16's figure: 2000 live WebSockets (1000 plain, spliced; 1000 wss, relayed in
/// userspace) streaming through 20 reloads that move the route between groups and swap
/// the certificate, plus one invalid file; zero dropped, every echo exact, each reload
/// applied (new connections follow it, the new certificate served). Prints how long
/// each reload took and the longest gap any connection saw between two echoes.
#[test]
#[ignore = "2000 connections and 21 reloads: run by hand (cargo test --release --test reload_live -- --ignored --nocapture)"]
fn two_thousand_websockets_stream_through_twenty_reloads() {
    const N: usize = 1000;
    let (a, b) = (WsEcho::start(), WsEcho::start());
    let pki = Pki::new();
    let certs = [pki.issue("first", &["localhost"]), pki.issue("second", &["localhost"])];
    let files = Files::new();
    files.install(&certs[0]);
    let groups = [("a", a.addr), ("b", b.addr)];
    files.write_config(&Shape { route_to: "a", groups: &groups, extra: "" });
    let gw = Gateway::builder().args(&["-c", files.config.to_str().unwrap()]).log_level("wsgate=info").start();
    let addrs = listeners(&gw, 2);
    let (plain, tls) = (addrs[0], addrs[1]);
    let urls = [format!("ws://{plain}/live/plain"), format!("wss://{tls}/live/tls")];
    let opened = std::time::Instant::now();
    let mut clients = Clients::open(2 * N, &urls, &pki.ca_file(), files.dir.0.join("stop"), 600);
    eprintln!("{} connections open in {:.1} s", 2 * N, opened.elapsed().as_secs_f64());
    stream_a_while();
    let client = pki.client(&[b"http/1.1"]);
    let mut took = Vec::new();
    let (mut applied, mut refused) = (0, 0);
    for i in 0..21 {
        let sent = std::time::Instant::now();
        if i == 10 {
            files.write_config(&Shape { route_to: "a", groups: &groups, extra: "[limits]\nmax_connections = -1\n" });
            gw.signal(nix::sys::signal::Signal::SIGHUP);
            refused += 1;
            nth_line(&gw, "reload refused", refused);
            took.push(sent.elapsed().as_secs_f64() * 1000.0);
        } else {
            let route = if applied % 2 == 0 { "b" } else { "a" };
            let cert = &certs[(applied / 2 + 1) % 2];
            files.install(cert);
            files.write_config(&Shape { route_to: route, groups: &groups, extra: "" });
            gw.signal(nix::sys::signal::Signal::SIGHUP);
            applied += 1;
            nth_line(&gw, "configuration reloaded", applied);
            took.push(sent.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(probe(&gw, &a, &b), route, "reload {i}: new connections follow it");
            assert!(peer_leaf(&tls_connect(tls, "localhost", &client).unwrap()) == cert.der, "reload {i}: certificate");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let last_reload = now_secs();
    std::thread::sleep(Duration::from_secs(10));
    let reports = clients.finish(2 * N);
    let mut worst_gap = 0.0f64;
    for r in &reports {
        assert!(r["error"].is_null() && r["clean"] == true, "{r}");
        assert_eq!(r["bad"], 0, "{r}");
        assert!(r["last_echo"].as_f64().unwrap() > last_reload, "stopped streaming before the last reload: {r}");
        worst_gap = worst_gap.max(r["max_gap"].as_f64().unwrap());
    }
    let echoed: u64 = reports.iter().map(|r| r["echoed"].as_u64().unwrap()).sum();
    took.sort_by(f64::total_cmp);
    eprintln!(
        "{} live connections, 20 reloads applied + 1 refused: 0 dropped, {echoed} echoes exact; \
         SIGHUP to applied (ms): median {:.0}, max {:.0}; longest gap between two echoes on any connection: {:.0} ms",
        reports.len(),
        took[took.len() / 2],
        took[took.len() - 1],
        worst_gap * 1000.0
    );
}
