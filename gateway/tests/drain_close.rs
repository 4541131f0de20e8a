//! The paced drain, over real sockets, with strict Python `websockets` clients and the
//! tokio-tungstenite echo upstream (both fail a connection on any protocol error): a
//! SIGTERM closes every WebSocket with a Close 1001 between frames, spread over
//! `--drain-window`; a second SIGTERM closes at once; SIGHUP never ends the process.

mod drain_util;
mod tls_util;
mod utils;

use std::time::{Duration, Instant};

use drain_util::{Clients, assert_all_going_away, assert_going_away, histogram, now_secs};
use nix::sys::signal::Signal;
use utils::{Gateway, WsEcho};

/// The drain window of these tests.
const WINDOW: f64 = 5.0;
/// Past the window: a connection's last frame, the close handshake and a loaded
/// 2-core machine's scheduling.
const MARGIN: f64 = 4.0;

fn gateway(echo: &WsEcho, splice: &str, window: &str) -> Gateway {
    Gateway::one_line(&[echo.addr], &["--splice", splice, "--drain-window", window])
}

/// Drains `gateways` (SIGTERM to each at once) under `n` streaming clients; returns
/// their ends and the SIGTERM's time (wall clock, and as an `Instant`).
fn drain_under_load(gateways: &mut [Gateway], n: usize, max_size: usize) -> (Vec<drain_util::Ended>, f64, Instant) {
    let urls: Vec<String> = gateways.iter().map(|g| g.ws_url("/drain")).collect();
    let mut clients = Clients::open_with(n, &urls, max_size);
    // Let every connection stream a while first.
    std::thread::sleep(Duration::from_secs(3));
    let start = now_secs();
    let sigterm = Instant::now();
    for g in gateways.iter() {
        g.terminate();
    }
    let ended = clients.ended(Duration::from_secs_f64(WINDOW + MARGIN + 30.0));
    for g in gateways.iter_mut() {
        assert!(g.wait_exit(Duration::from_secs(20)), "wsgate exits once its connections are closed");
    }
    (ended, start, sigterm)
}

#[test]
fn sigterm_closes_every_websocket_with_1001_spread_over_the_window() {
    let echo = WsEcho::start();
    // Its debug line for each Close it sends says when the pacing sent it.
    let gw = Gateway::builder()
        .one_line(&[echo.addr])
        .args(&["--workers", "2", "--splice", "userspace", "--drain-window", "5s"])
        .log_level("warn,wsgate::relay=debug")
        .start();
    let mut gateways = vec![gw];
    let n = 400;
    let (ended, start, sigterm) = drain_under_load(&mut gateways, n, 70_000);
    assert_all_going_away(&ended);
    // What the clients saw (their event loop, busy with 400 streams, adds its lag).
    let seen = histogram(&ended, start);
    eprintln!("client-side close times after SIGTERM (whole seconds, closes): {seen:?}");
    let latest = ended.iter().map(|e| e.closed_at.unwrap() - start).fold(0.0, f64::max);
    assert!(latest <= WINDOW + MARGIN + 6.0, "a client saw its close {latest:.2} s after SIGTERM: {seen:?}");
    let drained = gateways[0].log_lines().iter().filter(|l| l.contains("close=drain")).count();
    assert_eq!(drained, n, "every WebSocket's access-log line says close=drain");
    // When wsgate sent each Close: the pacing itself.
    let times = gateways[0].stderr_times("drain: sending Close 1001");
    assert_eq!(times.len(), n, "one Close sent to each WebSocket");
    assert_spread(&times, sigterm, n);
}

/// A gateway with the kernel splice, or a loud reason why there is none here (a
/// failure under `CI`).
fn spliced_gateway_or_skip(echo: &WsEcho, test: &str) -> Option<Gateway> {
    let started = Gateway::builder()
        .one_line(&[echo.addr])
        .args(&["--workers", "2", "--splice", "sockmap", "--drain-window", "5s"])
        .log_level("warn,wsgate::splice::worker=debug")
        .start_or_exit();
    match started {
        Ok(gw) => Some(gw),
        Err(exited) => {
            let why = exited.stderr.join("\n");
            eprintln!("\n==================== SKIPPED: {test}: no kernel splice: {why} ====================\n");
            assert!(std::env::var_os("CI").is_none(), "{test} must run in CI: {why}");
            None
        }
    }
}

/// Spliced pairs too: the program follows each direction's frames, so at its turn a
/// pair relays the rest of each frame in progress and both sides get a Close 1001
/// (the client's checked by the strict client, the upstream's masked: tungstenite
/// refuses an unmasked frame from a client); the turns are spread over the window.
#[test]
fn spliced_pairs_close_with_1001_at_frame_boundaries_over_the_window() {
    let echo = WsEcho::start();
    let Some(gw) = spliced_gateway_or_skip(&echo, "spliced_pairs_close_with_1001") else { return };
    let n = 200;
    let mut gateways = [gw];
    let (ended, start, sigterm) = drain_under_load(&mut gateways, n, 70_000);
    let h = histogram(&ended, start);
    eprintln!("spliced close times after SIGTERM (whole seconds, closes): {h:?}");
    // A cut frame or a stray byte would be a protocol error (1002), a FIN without a
    // Close 1006.
    assert_all_going_away(&ended);
    let latest = ended.iter().map(|e| e.closed_at.unwrap() - start).fold(0.0, f64::max);
    assert!(latest <= WINDOW + MARGIN + 6.0, "a client saw its close {latest:.2} s after SIGTERM: {h:?}");
    let drained = gateways[0].log_lines().iter().filter(|l| l.contains("close=drain")).count();
    assert_eq!(drained, n, "every spliced pair's access-log line says close=drain");
    assert_spread(&gateways[0].stderr_times("drain: a spliced pair's turn"), sigterm, n);
    assert_upstreams_got_1001(&echo, n);
}

/// Each of the `n` upstream connections of `echo` received whole messages, then a
/// Close 1001, and no protocol error.
fn assert_upstreams_got_1001(echo: &WsEcho, n: usize) {
    let events = echo.events.lock().unwrap().clone();
    for conn in 0..n {
        let mine: Vec<&str> = events.iter().filter(|(c, _)| *c == conn).map(|(_, e)| e.as_str()).collect();
        assert!(
            mine.last() == Some(&"close 1001") && mine.iter().all(|e| !e.starts_with("error")),
            "upstream connection {conn} did not end with a Close 1001: {:?}",
            &mine[mine.len().saturating_sub(3)..]
        );
    }
}

/// `times` (one per connection, `n` of them) fall in at least 3 distinct seconds of
/// the window after `sigterm`, none after the window plus a margin, and no second
/// holds half of them.
fn assert_spread(times: &[Instant], sigterm: Instant, n: usize) {
    assert_eq!(times.len(), n, "one turn per connection");
    let mut h = std::collections::BTreeMap::new();
    for t in times {
        *h.entry(t.saturating_duration_since(sigterm).as_secs()).or_insert(0usize) += 1;
    }
    eprintln!("gateway-side close times after SIGTERM (whole seconds, closes): {h:?}");
    let last = times.iter().map(|t| t.saturating_duration_since(sigterm)).max().unwrap();
    assert!(last.as_secs_f64() <= WINDOW + MARGIN, "a close came {last:?} after SIGTERM: {h:?}");
    let in_window = h.keys().filter(|s| (**s as f64) < WINDOW).count();
    assert!(in_window >= 3, "the closes fall in at least 3 distinct seconds of the window: {h:?}");
    let most = h.values().copied().max().unwrap();
    assert!(most <= n / 2, "no second holds half of the closes: {h:?}");
}

/// The issue's figure: 2000 streaming WebSockets, half relayed in userspace and half
/// spliced (two gateways), drained over 5 s. Long and heavy for a shared 2-core
/// machine, so run by hand: `cargo test -p wsgate --test drain_close -- --ignored`.
#[test]
#[ignore = "2000 connections: run by hand"]
fn two_thousand_websockets_half_spliced_drain_over_five_seconds() {
    let echo = WsEcho::start();
    let Some(spliced) = spliced_gateway_or_skip(&echo, "two_thousand_websockets") else { return };
    let mut gateways = vec![gateway(&echo, "userspace", "5s"), spliced];
    let (ended, start, _) = drain_under_load(&mut gateways, 2000, 4000);
    let (userspace, spliced): (Vec<_>, Vec<_>) = ended.into_iter().partition(|e| e.url == 0);
    eprintln!("userspace close times (s, closes): {:?}", histogram(&userspace, start));
    eprintln!("spliced close times (s, closes): {:?}", histogram(&spliced, start));
    assert_going_away(&userspace);
    assert_going_away(&spliced);
    let silent = userspace.iter().chain(&spliced).filter(|e| e.echoed == 0).count();
    let echoed: u64 = userspace.iter().chain(&spliced).map(|e| e.echoed).sum();
    eprintln!("{echoed} messages echoed intact; {silent} connections saw no echo before their close");
    let latest = userspace.iter().chain(&spliced).map(|e| e.closed_at.unwrap() - start).fold(0.0, f64::max);
    eprintln!("last close {latest:.2} s after SIGTERM");
}

#[test]
fn a_second_sigterm_closes_at_once() {
    let echo = WsEcho::start();
    let mut gw = gateway(&echo, "userspace", "60s");
    let n = 40;
    let mut clients = Clients::open(n, &[gw.ws_url("/again")]);
    std::thread::sleep(Duration::from_millis(500));
    gw.terminate();
    std::thread::sleep(Duration::from_millis(500));
    let second = now_secs();
    gw.terminate();
    let ended = clients.ended(Duration::from_secs(30));
    let latest = ended.iter().map(|e| e.closed_at.unwrap() - second).fold(0.0, f64::max);
    assert!(latest < 5.0, "every connection closed soon after the second SIGTERM, the last after {latest:.2} s");
    let paced = ended.iter().filter(|e| e.code == Some(1001)).count();
    assert!(paced < n, "a 60 s window did not close them all in the first second ({paced} of {n} did)");
    assert!(gw.wait_exit(Duration::from_secs(20)), "wsgate exits after the second SIGTERM");
}

#[test]
fn sighup_and_sigalrm_leave_the_process_serving() {
    let echo = WsEcho::start();
    let mut gw = Gateway::builder()
        .one_line(&[echo.addr])
        .args(&["--splice", "userspace", "--drain-window", "2s"])
        .log_level("wsgate=info")
        .start();
    let mut clients = Clients::open(10, &[gw.ws_url("/hup")]);
    let since = Instant::now();
    // SIGHUP reloads the same configuration (a new generation for new connections).
    gw.signal(Signal::SIGHUP);
    gw.wait_stderr("configuration reloaded", Duration::from_secs(10));
    // SIGALRM would end a process by default: logged and ignored (SIGUSR2, the binary
    // upgrade, has its own test: upgrade_live).
    gw.signal(Signal::SIGALRM);
    gw.wait_stderr("SIGALRM: ignored", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert!(gw.running(), "wsgate is still running after SIGHUP and SIGALRM");
    assert!(gw.stderr_since(since, "ERROR").is_empty(), "{:?}", gw.stderr());
    // New connections are still served, and the live ones were never touched.
    let mut more = Clients::open(5, &[gw.ws_url("/hup-after")]);
    // Each streams a while first (the drain may close one within milliseconds, before
    // its first echo, which `assert_all_going_away` would count as streaming nothing).
    std::thread::sleep(Duration::from_secs(1));
    gw.terminate();
    let mut ended = clients.ended(Duration::from_secs(30));
    ended.extend(more.ended(Duration::from_secs(30)));
    assert_all_going_away(&ended);
    assert!(gw.wait_exit(Duration::from_secs(20)));
}

#[test]
fn wsgate_drain_wait_returns_once_every_websocket_closed_and_the_process_exited() {
    let echo = WsEcho::start();
    let dir = utils::TempDir::new();
    let pid = dir.0.join("wsgate.pid");
    let mut gw = Gateway::builder()
        .one_line(&[echo.addr])
        .args(&["--splice", "userspace", "--drain-window", "2s", "--pid-file", pid.to_str().unwrap()])
        .start();
    let mut clients = Clients::open(20, &[gw.ws_url("/prestop")]);
    // Each streams a while first (on a loaded machine 0.5 s left one without an echo).
    std::thread::sleep(Duration::from_secs(1));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["drain", "--wait", "--wait-timeout", "60s", "--pid-file", pid.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("drained and exited after"), "{text}");
    // It returned only after the process was gone: every client already has its 1001.
    assert!(!gw.running(), "wsgate drain --wait returned while wsgate still ran");
    assert!(!pid.exists(), "the pid file is removed at exit");
    let ended = clients.ended(Duration::from_secs(5));
    assert_all_going_away(&ended);
    // Nothing left to drain: a second call says so and fails.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["drain", "--wait", "--pid-file", pid.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(gw.wait_exit(Duration::from_secs(1)));
}

#[test]
fn wss_websockets_close_with_1001_through_tls_over_the_window() {
    let echo = WsEcho::start();
    let pki = tls_util::Pki::new();
    let cert = pki.issue("localhost", &["localhost"]);
    let config = format!(
        "workers = 2\n[drain]\nwindow = \"3s\"\njitter = 0.0\n{}[[route]]\nupstream = \"e\"\n[upstream.e]\nservers = [\"{}\"]\n",
        tls_util::tls_listener(Some(&cert), &[]),
        echo.addr
    );
    let mut gw = Gateway::builder().config(&config).start();
    let n = 100;
    let url = format!("wss://localhost:{}/tls-drain", gw.addr.port());
    let mut clients = Clients::open_ca(n, &[url], 70_000, Some(&pki.ca_file()));
    std::thread::sleep(Duration::from_secs(1));
    let start = now_secs();
    gw.terminate();
    let ended = clients.ended(Duration::from_secs(40));
    // Strict clients: a frame cut by the Close would be a protocol error.
    assert_all_going_away(&ended);
    let latest = ended.iter().map(|e| e.closed_at.unwrap() - start).fold(0.0, f64::max);
    assert!(latest < 3.0 + MARGIN + 6.0, "the last close came {latest:.2} s after SIGTERM");
    assert!(gw.wait_exit(Duration::from_secs(20)), "wsgate exits once its connections are closed");
    let drained = gw.log_lines().iter().filter(|l| l.contains("GET /tls-drain ") && l.contains("close=drain")).count();
    assert_eq!(drained, n, "every wss WebSocket's access-log line says close=drain");
    assert_upstreams_got_1001(&echo, n);
}

#[test]
fn websockets_to_a_tls_upstream_close_with_1001_both_ways() {
    let pki = tls_util::Pki::new();
    let backend = tls_util::TlsEcho::start(&pki.issue("backend", &["backend.test"]), None);
    let config = format!(
        "workers = 2\n[drain]\nwindow = \"3s\"\njitter = 0.0\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nupstream = \"e\"\n[upstream.e]\nservers = [\"{}\"]\n\
         tls = {{ server_name = \"backend.test\", ca = \"{}\" }}\n",
        backend.addr,
        pki.ca_file().display()
    );
    let mut gw = Gateway::builder().config(&config).start();
    let n = 60;
    let mut clients = Clients::open_with(n, &[gw.ws_url("/tls-up-drain")], 70_000);
    std::thread::sleep(Duration::from_secs(1));
    gw.terminate();
    let ended = clients.ended(Duration::from_secs(40));
    // Strict clients: a frame cut by the Close would be a protocol error.
    assert_all_going_away(&ended);
    assert!(gw.wait_exit(Duration::from_secs(20)), "wsgate exits once its connections are closed");
    let drained =
        gw.log_lines().iter().filter(|l| l.contains("GET /tls-up-drain ") && l.contains("close=drain")).count();
    assert_eq!(drained, n, "every WebSocket's access-log line says close=drain");
    // Each upstream connection got wsgate's masked Close 1001 through TLS.
    let closes = backend.closes.lock().unwrap().clone();
    assert_eq!(closes.len(), n, "{closes:?}");
    assert!(closes.iter().all(|&c| c == 1001), "{closes:?}");
}
