//! Real TLS clients through a wsgate TLS listener, with the test CA: `openssl
//! s_client` (SNI picks the certificate, ALPN `http/1.1`, TLS 1.2 and 1.3 accepted,
//! TLS 1.1 refused and counted), Python `websockets` and Node `ws` over `wss://`
//! (messages of many sizes echoed both ways, every byte checked).
//!
//! `cargo xtask test` installs what these need: openssl, python3-websockets, node-ws.

mod tls_util;
mod utils;

use std::process::Command;
use std::time::Duration;

use tls_util::{Issued, Pki, tls_listener};
use utils::{Gateway, WsEcho};

const BASE: &str = "workers = 1\n[timeouts]\nheader = \"2s\"\n";

/// A gateway with a default certificate (`gw.test`, 127.0.0.1) and `api.test` by SNI,
/// in front of a WebSocket echo.
fn gateway(pki: &Pki, echo: &WsEcho) -> (Gateway, Issued, Issued) {
    let default = pki.issue("default", &["gw.test", "127.0.0.1"]);
    let api = pki.issue("api", &["api.test"]);
    let config = format!(
        "{BASE}{}[[route]]\nupstream = \"main\"\n[upstream.main]\nservers = [\"{}\"]\n",
        tls_listener(Some(&default), &[(&["api.test"], &api)]),
        echo.addr
    );
    let gw = Gateway::builder().config(&config).log_level("wsgate=debug").start();
    (gw, default, api)
}

/// Runs a client program to its end (at most a minute); returns its success and output.
fn run(cmd: &mut Command) -> (bool, String) {
    utils::run_bounded(cmd, Duration::from_mins(1), "cargo xtask test installs it")
}

fn s_client(gw: &Gateway, pki: &Pki, extra: &[&str]) -> (bool, String) {
    let addr = gw.addr.to_string();
    let ca = pki.ca_file();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr, "-verify_return_error", "-CAfile"]).arg(&ca).args(extra);
    run(&mut cmd)
}

#[test]
fn openssl_sees_the_sni_certificate_alpn_and_versions() {
    let pki = Pki::new();
    let echo = WsEcho::start();
    let (gw, _, _) = gateway(&pki, &echo);

    let (ok, out) = s_client(&gw, &pki, &["-servername", "api.test", "-alpn", "http/1.1"]);
    assert!(ok, "{out}");
    assert!(out.contains("subject=CN = api.test"), "{out}");
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");

    let (ok, out) = s_client(&gw, &pki, &["-servername", "gw.test", "-tls1_2"]);
    assert!(ok, "{out}");
    assert!(out.contains("subject=CN = gw.test") && out.contains("Protocol  : TLSv1.2"), "{out}");

    // TLS 1.1 (allowed on the client's side with security level 0): refused by wsgate.
    let (ok, out) = s_client(&gw, &pki, &["-servername", "gw.test", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(!ok, "{out}");
    assert!(out.contains("alert") && !out.contains("BEGIN CERTIFICATE"), "{out}");
    // A TLS 1.1 ClientHello has none of what TLS 1.2 requires (signature_algorithms).
    gw.wait_stderr("reason=\"no_shared_version\"", Duration::from_secs(10));
}

const PYTHON_CLIENT: &str = r#"
import asyncio, random, ssl, sys, websockets
async def main(url, ca):
    ctx = ssl.create_default_context(cafile=ca)
    rnd = random.Random(7)
    sizes = [0, 1, 125, 126, 4096, 65535, 65536, 300000]
    async with websockets.connect(url, ssl=ctx, max_size=None) as ws:
        for i in range(48):
            n = sizes[i % len(sizes)]
            msg = rnd.randbytes(n) if i % 2 == 0 else "".join(rnd.choice("aé€𝄞z") for _ in range(n // 4))
            await ws.send(msg)
            got = await ws.recv()
            assert got == msg, f"message {i}: {len(got)} back of {len(msg)}, or different"
        await ws.close()
    print("python-ok", 48)
asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[test]
fn python_websockets_over_wss() {
    let pki = Pki::new();
    let echo = WsEcho::start();
    let (gw, _, _) = gateway(&pki, &echo);
    let url = format!("wss://{}/py", gw.addr);
    let (ok, out) = run(Command::new("/usr/bin/python3").args(["-c", PYTHON_CLIENT, &url]).arg(pki.ca_file()));
    assert!(ok && out.contains("python-ok 48"), "{out}");
    let requests = echo.requests.lock().unwrap().clone();
    assert!(requests[0].iter().any(|(k, v)| k == "x-forwarded-proto" && v == "https"), "{requests:?}");
}

const NODE_CLIENT: &str = r"
const WebSocket = require('ws');
const fs = require('fs');
const crypto = require('crypto');
const [url, ca] = process.argv.slice(1);
const sizes = [0, 1, 125, 126, 4096, 65535, 65536, 300000];
const ws = new WebSocket(url, { ca: fs.readFileSync(ca), maxPayload: 0 });
let i = 0, sent;
function next() {
  if (i === 40) { ws.close(1000); return; }
  const n = sizes[i % sizes.length];
  sent = i % 2 === 0 ? crypto.randomBytes(n) : 'x€'.repeat(n >> 2);
  ws.send(sent);
}
ws.on('open', next);
ws.on('message', (data, isBinary) => {
  const ok = isBinary ? Buffer.compare(data, sent) === 0 : data.toString() === sent;
  if (!ok) { console.error('message ' + i + ' differs'); process.exit(2); }
  i++; next();
});
ws.on('close', () => { console.log('node-ok ' + i); process.exit(i === 40 ? 0 : 3); });
ws.on('error', (e) => { console.error('error ' + e.message); process.exit(4); });
";

#[test]
fn node_ws_over_wss() {
    let pki = Pki::new();
    let echo = WsEcho::start();
    let (gw, _, _) = gateway(&pki, &echo);
    let url = format!("wss://{}/node", gw.addr);
    let mut cmd = Command::new("node");
    // Debian's node-ws lives here; the node binary may come from elsewhere.
    cmd.env("NODE_PATH", "/usr/share/nodejs").args(["-e", NODE_CLIENT, &url]).arg(pki.ca_file());
    let (ok, out) = run(&mut cmd);
    assert!(ok && out.contains("node-ok 40"), "{out}");
}
