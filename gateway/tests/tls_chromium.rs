//! A real browser through wsgate: headless Chromium (Debian's `chromium`, driven over
//! the DevTools protocol by a small Node script) trusts the test CA from its NSS
//! database, loads a page over `https://localhost` and opens `wss://` to the same
//! origin. Once with HTTP/2 on (the page comes over `h2` and Chromium opens the
//! WebSocket as an RFC 8441 extended CONNECT stream on that connection) and once with
//! it off (HTTP/1.1 upgrade). The page sends text and binary messages of many sizes and
//! checks every byte of each echo; the access log says which protocol carried the
//! WebSocket.
//!
//! `cargo xtask test` installs what this needs: chromium, libnss3-tools (certutil),
//! nodejs and node-ws. Without them the test fails and says what to install.

mod tls_util;
mod utils;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tls_util::{Pki, tls_listener};
use utils::{Gateway, RawUpstream, TempDir, WsEcho, read_head};

/// The page: opens `wss://<origin>/ws`, sends a binary and a text message of each size,
/// checks every echoed byte, and puts the outcome in `window.result`.
const PAGE: &str = r"<!doctype html><title>wsgate</title><script>
window.result = (async () => {
  const ws = new WebSocket(`wss://${location.host}/ws`);
  ws.binaryType = 'arraybuffer';
  await new Promise((ok, no) => { ws.onopen = ok; ws.onerror = () => no(new Error('WebSocket error')); });
  const got = [];
  ws.onmessage = e => got.push(e.data);
  const sizes = [0, 1, 125, 126, 65535, 65536, 300000];
  const sent = [];
  for (const n of sizes) {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = (i * 7 + n) & 255;
    sent.push(b);
    ws.send(b);
    ws.send('text ' + n + ' \u00e9\u4e2d');
  }
  const deadline = Date.now() + 30000;
  while (got.length < 2 * sizes.length && Date.now() < deadline) await new Promise(r => setTimeout(r, 10));
  let bad = [];
  for (let k = 0; k < sizes.length; k++) {
    const b = new Uint8Array(got[2 * k] || new ArrayBuffer(0));
    const s = sent[k];
    if (b.length !== s.length || b.some((v, i) => v !== s[i])) bad.push('binary ' + sizes[k]);
    if (got[2 * k + 1] !== 'text ' + sizes[k] + ' \u00e9\u4e2d') bad.push('text ' + sizes[k]);
  }
  const closed = new Promise(r => { ws.onclose = e => r(e.code); });
  ws.close(1000);
  const code = await closed;
  const page = performance.getEntriesByType('navigation')[0].nextHopProtocol;
  return JSON.stringify({ echoed: got.length, bad, code, page });
})();
</script>
";

/// The drain page: one WebSocket that echoes continuously (each message checked, the
/// next sent when its echo is back) until the server closes it; reports how.
const DRAIN_PAGE: &str = r"<!doctype html><title>wsgate drain</title><script>
window.result = (async () => {
  const ws = new WebSocket(`wss://${location.host}/ws`);
  ws.binaryType = 'arraybuffer';
  await new Promise((ok, no) => { ws.onopen = ok; ws.onerror = () => no(new Error('WebSocket error')); });
  let echoes = 0, bad = 0, pending = null, n = 0;
  const send = () => {
    const size = [1, 125, 126, 3000, 20000][n++ % 5];
    pending = new Uint8Array(size);
    crypto.getRandomValues(pending);
    ws.send(pending);
  };
  ws.onmessage = e => {
    const b = new Uint8Array(e.data);
    if (pending && b.length === pending.length && b.every((v, i) => v === pending[i])) echoes++; else bad++;
    send();
  };
  send();
  const ev = await new Promise(r => { ws.onclose = r; });
  const page = performance.getEntriesByType('navigation')[0].nextHopProtocol;
  return JSON.stringify({ code: ev.code, reason: ev.reason, clean: ev.wasClean, echoes, bad, page });
})();
</script>
";

/// The DevTools driver: starts Chromium in its own process group with the given
/// profile and HOME (whose NSS database trusts the test CA), opens the URL, waits for
/// `window.result` and prints it; kills the whole group at the end or after a minute.
const DRIVER: &str = r"
const { spawn } = require('child_process');
const fs = require('fs');
const path = require('path');
const WebSocket = require('ws');
const [url, profile, home] = process.argv.slice(1);
const chrome = spawn('chromium', ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
  '--no-first-run', '--no-default-browser-check', '--remote-debugging-port=0', `--user-data-dir=${profile}`,
  'about:blank'], { env: { ...process.env, HOME: home }, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
let log = '';
chrome.stderr.on('data', d => { log = (log + d).slice(-4000); });
const end = (code, text) => {
  console.log(text);
  try { process.kill(-chrome.pid, 'SIGKILL'); } catch (e) {}
  process.exit(code);
};
const fail = why => end(2, 'driver-failed ' + why + '\nchromium stderr:\n' + log);
setTimeout(() => fail('no result within 60 s'), 60000);
chrome.on('exit', c => fail('chromium exited with ' + c));
(async () => {
  const portFile = path.join(profile, 'DevToolsActivePort');
  while (!fs.existsSync(portFile) || fs.readFileSync(portFile, 'utf8').split('\n').length < 2) {
    await new Promise(r => setTimeout(r, 50));
  }
  const port = fs.readFileSync(portFile, 'utf8').split('\n')[0];
  const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
  const ws = new WebSocket(targets.find(t => t.type === 'page').webSocketDebuggerUrl);
  await new Promise((ok, no) => { ws.on('open', ok); ws.on('error', no); });
  let id = 0;
  const pending = new Map();
  ws.on('message', m => {
    const msg = JSON.parse(m);
    if (pending.has(msg.id)) { pending.get(msg.id)(msg); pending.delete(msg.id); }
  });
  const call = (method, params = {}) => new Promise(r => {
    pending.set(++id, r);
    ws.send(JSON.stringify({ id, method, params }));
  });
  const nav = await call('Page.navigate', { url });
  if (nav.error || nav.result.errorText) fail('navigate: ' + JSON.stringify(nav));
  for (;;) {
    const r = await call('Runtime.evaluate', { expression: 'window.result', awaitPromise: true, returnByValue: true });
    if (r.error || r.result.exceptionDetails) fail('page: ' + JSON.stringify(r.error || r.result.exceptionDetails));
    if (r.result.result.value) end(0, 'result ' + r.result.result.value);
    await new Promise(r => setTimeout(r, 100));
  }
})().catch(e => fail(String(e)));
";

/// What the page reported.
#[derive(Debug)]
struct Outcome {
    json: serde_json::Value,
}

/// Serves [`PAGE`] at `/` and [`DRAIN_PAGE`] at `/drain` (HTTP/1.0 or 1.1 request, one response, then close).
fn page_upstream() -> RawUpstream {
    RawUpstream::start(|mut s| {
        let (head, _) = read_head(&mut s);
        let page = if head.starts_with("GET / ") {
            Some(PAGE)
        } else if head.starts_with("GET /drain ") {
            Some(DRAIN_PAGE)
        } else {
            None
        };
        let response = if let Some(page) = page {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        };
        let _ = s.write_all(response.as_bytes());
    })
}

/// A HOME whose NSS database (where Chromium on Linux reads locally trusted roots)
/// trusts the test CA.
fn home_trusting(ca: &Path, dir: &Path) -> std::path::PathBuf {
    let home = dir.join("home");
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    let certutil = |args: &[&str]| {
        let out = Command::new("certutil").args(args).output();
        let out = out.unwrap_or_else(|e| panic!("certutil: {e} (cargo xtask test installs libnss3-tools)"));
        assert!(out.status.success(), "certutil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    certutil(&["-d", &db, "-N", "--empty-password"]);
    certutil(&["-d", &db, "-A", "-t", "C,,", "-n", "wsgate test CA", "-i", ca.to_str().unwrap()]);
    home
}

/// Opens `url` in headless Chromium and returns what the page reported.
fn browse(url: &str, pki: &Pki) -> Outcome {
    browse_with_ca(url, &pki.ca_file())
}

/// [`browse`] with the test CA's file.
fn browse_with_ca(url: &str, ca: &Path) -> Outcome {
    let dir = TempDir::new();
    let home = home_trusting(ca, &dir.0);
    let profile = dir.0.join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", "/usr/share/nodejs").args(["-e", DRIVER, url]).arg(&profile).arg(&home);
    // The driver kills its Chromium itself, within a minute.
    let (ok, text) = utils::run_bounded(&mut cmd, Duration::from_mins(2), "cargo xtask test installs nodejs, node-ws");
    assert!(ok, "Chromium did not report (is Debian's chromium installed? cargo xtask test installs it):\n{text}");
    let json = text.lines().find_map(|l| l.strip_prefix("result ")).expect("a result line");
    Outcome { json: serde_json::from_str(json).unwrap() }
}

/// A gateway on a TLS listener for `localhost`, `/ws` to a WebSocket echo and the rest
/// to the page.
fn gateway(pki: &Pki, echo: &WsEcho, page: &RawUpstream, extra: &str) -> Gateway {
    gateway_with(pki, echo, page, extra, "")
}

/// [`gateway`] with `head` before the listener (top-level settings and tables).
fn gateway_with(pki: &Pki, echo: &WsEcho, page: &RawUpstream, extra: &str, head: &str) -> Gateway {
    let cert = pki.issue("localhost", &["localhost", "127.0.0.1"]);
    let config = format!(
        "workers = 1\n{head}{extra}{}[[route]]\npath = \"/ws\"\nupstream = \"ws\"\n[[route]]\nupstream = \"page\"\n\
         [upstream.ws]\nservers = [\"{}\"]\n[upstream.page]\nservers = [\"{}\"]\n",
        tls_listener(Some(&cert), &[]),
        echo.addr,
        page.addr
    );
    Gateway::builder().config(&config).start()
}

/// Runs the page through a gateway made with `extra` config; checks the echoes, the
/// close and the upstream's view; returns the page's protocol and the WebSocket's
/// access-log line.
fn run(extra: &str, ws_request: &str) -> (String, String) {
    let pki = Pki::new();
    let echo = WsEcho::start();
    let page = page_upstream();
    let gw = gateway(&pki, &echo, &page, extra);
    let url = format!("https://localhost:{}/", gw.addr.port());
    let outcome = browse(&url, &pki);
    let j = &outcome.json;
    assert_eq!(j["echoed"], 14, "{outcome:?}");
    assert_eq!(j["bad"], serde_json::json!([]), "{outcome:?}");
    assert_eq!(j["code"], 1000, "{outcome:?}");
    // The upstream saw an HTTP/1.1 upgrade, rewritten, and all 14 messages.
    let requests = echo.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let get = |k: &str| requests[0].iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("x-forwarded-proto").as_deref(), Some("https"), "{requests:?}");
    assert_eq!(get("host"), Some(format!("localhost:{}", gw.addr.port())), "{requests:?}");
    assert!(get("user-agent").is_some_and(|ua| ua.contains("HeadlessChrome")), "{requests:?}");
    let events = echo.events.lock().unwrap().clone();
    assert_eq!(events.iter().filter(|(_, e)| e.starts_with("message ")).count(), 14, "{events:?}");
    assert!(events.iter().any(|(_, e)| e == "close 1000"), "{events:?}");
    let line = gw.wait_log(ws_request);
    (j["page"].as_str().unwrap_or_default().to_owned(), line)
}

#[test]
fn chromium_websocket_over_http2_extended_connect() {
    let (page, line) = run("", "\"CONNECT /ws HTTP/2\" 200 ");
    assert_eq!(page, "h2", "{line}");
}

#[test]
fn chromium_websocket_over_http11_upgrade() {
    let (page, line) = run("[http2]\nenabled = false\n", "\"GET /ws HTTP/1.1\" 101 ");
    assert_eq!(page, "http/1.1", "{line}");
}

#[test]
fn chromium_gets_a_close_1001_over_http2_in_the_drain() {
    for (extra, request) in
        [("", "\"CONNECT /ws HTTP/2\" 200 "), ("[http2]\nenabled = false\n", "\"GET /ws HTTP/1.1\" 101 ")]
    {
        let pki = Pki::new();
        let echo = WsEcho::start();
        let page = page_upstream();
        let mut gw = gateway_with(&pki, &echo, &page, extra, "[drain]\nwindow = \"1s\"\njitter = 0.0\n");
        let url = format!("https://localhost:{}/drain", gw.addr.port());
        let browsing = std::thread::spawn({
            let pki_ca = pki.ca_file();
            move || browse_with_ca(&url, &pki_ca)
        });
        // The page's WebSocket reached the upstream: let it stream, then drain.
        let deadline = std::time::Instant::now() + Duration::from_mins(1);
        while echo.requests.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the page never opened its WebSocket");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(700));
        gw.terminate();
        let outcome = browsing.join().unwrap();
        let j = &outcome.json;
        assert_eq!(j["code"], 1001, "{request}: {outcome:?}");
        assert_eq!(j["reason"], "going away", "{outcome:?}");
        assert_eq!(j["clean"], true, "the browser saw a complete close handshake: {outcome:?}");
        assert_eq!(j["bad"], 0, "{outcome:?}");
        assert!(j["echoes"].as_u64().unwrap() > 0, "{outcome:?}");
        assert!(gw.wait_exit(Duration::from_secs(20)), "wsgate exits after the drain");
        let line = gw.wait_log(request);
        assert!(line.contains("close=drain"), "{line}");
        let events = echo.events.lock().unwrap().clone();
        assert!(events.iter().any(|(_, e)| e == "close 1001"), "the upstream got a Close 1001: {events:?}");
    }
}
