//! A reload that takes a server out of a group with `drain_removed = true`, over real
//! sockets with strict Python `websockets` clients (a cut frame or a bare FIN fails
//! them): every WebSocket relayed to the removed server gets a Close 1001 at a frame
//! boundary within `drain.window` plus a margin (`close=removed` in the access log and
//! the metrics), every one to the server that stays keeps streaming, every echo
//! checked; alike whether relayed in userspace (plain or TLS) or spliced in the kernel
//! (the program's frame state says where the frame in flight ends). Without the flag,
//! the removed server's WebSockets keep streaming.

mod admin_util;
mod drain_util;
mod tls_util;
mod utils;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use admin_util::{admin_addr, count, eventually, scrape};
use drain_util::{Clients, Ended, assert_going_away, now_secs};
use nix::sys::signal::Signal;
use tls_util::Pki;
use utils::{Gateway, TempDir, WsEcho};

/// Streaming connections, spread by round robin over the two servers.
const N: usize = 20;
/// How long a reload, a close or a log line may take on a loaded 2-core machine.
const WITHIN: Duration = Duration::from_secs(20);
/// `drain.window` (1 s) and a margin for the last frame, the close handshake and a
/// busy client event loop.
const CLOSED_WITHIN: f64 = 1.0 + 9.0;

/// The configuration: `listener`, one group of `servers`, `drain_removed` as given,
/// relayed as `splice` says (`userspace`, or `sockmap` from the 101 on).
fn write_config(path: &Path, (splice, listener): (&str, &str), servers: &[&WsEcho], drain_removed: bool) {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    let text = format!(
        "workers = 2\nsplice = \"{splice}\"\n[relay]\nsplice_after = \"0s\"\n[drain]\nwindow = \"1s\"\njitter = 0.0\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{listener}\
         [[route]]\nupstream = \"g\"\n[upstream.g]\nservers = [{}]\ndrain_removed = {drain_removed}\n",
        servers.join(", ")
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Messages each upstream connection of `echo` has received so far.
fn messages(echo: &WsEcho) -> Vec<usize> {
    let events = echo.events.lock().unwrap();
    let conns = echo.requests.lock().unwrap().len();
    (0..conns).map(|c| events.iter().filter(|(e, m)| *e == c && m.starts_with("message")).count()).collect()
}

/// Every upstream connection of `echo` received more messages after `before`, within
/// `WITHIN`: each one is still streaming.
fn assert_streaming(echo: &WsEcho, before: &[usize], which: &str) {
    let grew = eventually(WITHIN, || messages(echo).iter().zip(before).all(|(now, then)| now > then));
    assert!(grew, "every WebSocket to {which} keeps streaming: {before:?} then {:?}", messages(echo));
}

/// The echo servers, the gateway started on `a` and `b`, its configuration file, and
/// `N` clients that have streamed a while (each saw echoes before the reload).
struct Setup {
    a: WsEcho,
    b: WsEcho,
    gw: Gateway,
    config: PathBuf,
    splice: &'static str,
    listener: String,
    clients: Clients,
    _dir: TempDir,
    _pki: Option<Pki>,
}

/// Starts it all; `tls`: the clients speak wss to a TLS listener (relayed by the TLS
/// relay). `None` when the splice asked for is not there (a failure under `CI`).
fn start(splice: &'static str, drain_removed: bool, tls: bool) -> Option<Setup> {
    let (a, b) = (WsEcho::start(), WsEcho::start());
    let dir = TempDir::new();
    let config = dir.0.join("wsgate.toml");
    let pki = tls.then(Pki::new);
    let cert = pki.as_ref().map(|p| p.issue("localhost", &["localhost"]));
    let listener = tls_util::tls_listener(cert.as_ref(), &[]);
    write_config(&config, (splice, &listener), &[&a, &b], drain_removed);
    let started =
        Gateway::builder().args(&["-c", config.to_str().unwrap()]).log_level("warn,wsgate=info").start_or_exit();
    let gw = match started {
        Ok(gw) => gw,
        Err(exited) => {
            let why = exited.stderr.join("\n");
            assert!(splice != "userspace", "wsgate did not start: {why}");
            eprintln!("\n==================== SKIPPED: no kernel splice: {why} ====================\n");
            assert!(std::env::var_os("CI").is_none(), "the splice case must run in CI: {why}");
            return None;
        }
    };
    let url = match &pki {
        Some(_) => format!("wss://localhost:{}/removed", gw.addr.port()),
        None => gw.ws_url("/removed"),
    };
    let clients = Clients::open_ca(N, &[url], 70_000, pki.as_ref().map(Pki::ca_file).as_deref());
    // Every connection streams a while, and each upstream has its share.
    let both = eventually(WITHIN, || {
        let (on_a, on_b) = (messages(&a), messages(&b));
        on_a.len() + on_b.len() == N && on_a.iter().chain(&on_b).all(|&m| m >= 3)
    });
    assert!(both, "every connection streams: a {:?}, b {:?}", messages(&a), messages(&b));
    std::thread::sleep(Duration::from_secs(1));
    Some(Setup { a, b, gw, config, splice, listener, clients, _dir: dir, _pki: pki })
}

/// Rewrites the configuration without `b` and reloads; returns the wall-clock time
/// of the SIGHUP.
fn remove_b(s: &Setup, drain_removed: bool) -> f64 {
    write_config(&s.config, (s.splice, &s.listener), &[&s.a], drain_removed);
    let at = now_secs();
    s.gw.signal(Signal::SIGHUP);
    s.gw.wait_stderr("configuration reloaded", WITHIN);
    at
}

/// Drains the gateway: the connections left get the SIGTERM drain's Close 1001.
fn drain_rest(s: &mut Setup, left: usize) -> Vec<Ended> {
    s.gw.terminate();
    let ended = s.clients.next_ended(left, Duration::from_secs(40));
    assert!(s.gw.wait_exit(WITHIN), "wsgate exits once its connections are closed");
    ended
}

#[test]
fn a_reload_closes_the_websockets_of_a_removed_server_with_1001_and_leaves_the_others() {
    closes_b_and_leaves_a(start("userspace", true, false).unwrap());
}

#[test]
fn wss_websockets_of_a_removed_server_close_with_1001_through_the_tls_relay() {
    closes_b_and_leaves_a(start("userspace", true, true).unwrap());
}

/// Removes b from the group with `drain_removed`: b's WebSockets close with 1001 at a
/// frame boundary within the window and a margin (`close=removed`), a's keep
/// streaming until the SIGTERM drain.
fn closes_b_and_leaves_a(mut s: Setup) {
    let on_b = s.b.requests.lock().unwrap().len();
    let on_a = N - on_b;
    assert!(on_a > 0 && on_b > 0, "round robin gave each server connections ({on_a}, {on_b})");
    let admin = admin_addr(&s.gw);
    let reloaded = remove_b(&s, true);
    s.gw.wait_stderr("removed from groups with drain_removed", WITHIN);
    // Exactly b's connections close, each with a clean 1001 after whole messages.
    let removed = s.clients.next_ended(on_b, Duration::from_secs_f64(CLOSED_WITHIN + 10.0));
    assert_going_away(&removed);
    for e in &removed {
        assert!(e.echoed > 0, "connection {} streamed nothing before its close", e.conn);
        let after = e.closed_at.unwrap() - reloaded;
        assert!(after <= CLOSED_WITHIN, "connection {} closed {after:.2} s after the reload", e.conn);
    }
    let last_is_1001 = |conn: usize| {
        let events = s.b.events.lock().unwrap();
        events.iter().rfind(|(c, _)| *c == conn).is_some_and(|(_, e)| e == "close 1001")
    };
    let all = eventually(WITHIN, || (0..on_b).all(last_is_1001));
    assert!(all, "each of b's connections got the masked Close 1001: {:?}", s.b.events.lock().unwrap());
    // a's connections go on streaming, every echo checked.
    let before = messages(&s.a);
    s.clients.none_ends_for(Duration::from_secs(3));
    assert_streaming(&s.a, &before, "a");
    let log = s.gw.log_lines();
    assert_eq!(log.iter().filter(|l| l.contains("close=removed")).count(), on_b, "{log:?}");
    let text = scrape(admin);
    assert_eq!(count(&text, "wsgate_connections_closed_total", &[("reason", "removed")]), on_b, "{text}");
    let rest = drain_rest(&mut s, on_a);
    assert_going_away(&rest);
    assert!(rest.iter().all(|e| e.echoed > 0));
    assert_eq!(s.gw.log_lines().iter().filter(|l| l.contains("close=drain")).count(), on_a);
}

#[test]
fn without_drain_removed_the_websockets_of_a_removed_server_keep_streaming() {
    let s = start("userspace", false, false).unwrap();
    keeps_streaming_through_the_removal(s, false);
}

#[test]
fn spliced_pairs_of_a_removed_server_close_with_1001_in_the_kernel_too() {
    let Some(s) = start("sockmap", true, false) else { return };
    closes_b_and_leaves_a(s);
}

#[test]
fn without_drain_removed_spliced_pairs_of_a_removed_server_keep_streaming() {
    let Some(s) = start("sockmap", false, false) else { return };
    keeps_streaming_through_the_removal(s, false);
}

/// Removes b: no connection ends, both servers' keep streaming; the SIGTERM drain
/// then closes them all with 1001.
fn keeps_streaming_through_the_removal(mut s: Setup, drain_removed: bool) {
    let reloaded = Instant::now();
    remove_b(&s, drain_removed);
    let before = (messages(&s.a), messages(&s.b));
    s.clients.none_ends_for(Duration::from_secs(4));
    assert_streaming(&s.a, &before.0, "a");
    assert_streaming(&s.b, &before.1, "the removed b");
    if !drain_removed {
        assert!(s.gw.stderr_since(reloaded, "removed from groups with drain_removed").is_empty());
    }
    assert!(s.gw.log_lines().iter().all(|l| !l.contains("close=")), "no connection ended at the reload");
    let ended = drain_rest(&mut s, N);
    assert_going_away(&ended);
    assert!(ended.iter().all(|e| e.echoed > 0));
    let mode = if s.splice == "sockmap" { "mode=splice" } else { "mode=userspace" };
    let drained: Vec<String> = s.gw.log_lines().into_iter().filter(|l| l.contains("close=drain")).collect();
    assert_eq!(drained.len(), N, "{drained:?}");
    assert!(drained.iter().all(|l| l.contains(mode)), "every pair relayed as {mode}: {drained:?}");
}
