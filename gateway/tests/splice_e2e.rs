//! The splice through the real `wsgate` binary: `--splice sockmap` relays a
//! real WebSocket session in the kernel; a forced self-test failure or missing
//! capabilities make `auto` fall back to the userspace relay (which still
//! works) with one warning, and make `sockmap` refuse to start.

mod splice_util;
mod utils;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use utils::WsEcho;
use wsgate::splice::FORCE_FAIL_ENV;

/// A wsgate process with its stdout (access log) and stderr (diagnostics) collected.
struct Wsgate {
    child: Child,
    addr: Option<SocketAddr>,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

impl Wsgate {
    fn start(upstream: SocketAddr, mode: &str, force_fail: bool, unprivileged: bool) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
        cmd.args(["--listen", "127.0.0.1:0", "--workers", "2", "--upstream", &upstream.to_string(), "--splice", mode])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if force_fail {
            cmd.env(FORCE_FAIL_ENV, "1");
        }
        if unprivileged {
            cmd.uid(65_534).gid(65_534);
        }
        let mut child = cmd.spawn().expect("start wsgate");
        let (tx, rx) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let (o, stdout) = (out.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("wsgate: listening on ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                o.lock().unwrap().push(line);
            }
        });
        let (e, stderr) = (err.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                e.lock().unwrap().push(line);
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20)).ok();
        Self { child, addr, out, err }
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().join("\n")
    }

    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self.out.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "no log line with {needle:?}: {:#?}", self.out.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Wsgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket session of messages of growing sizes, each echoed intact.
fn echo_session(gw: &Wsgate) {
    let url = format!("ws://{}/chat", gw.addr.expect("listening"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..200usize {
            let len = (i * 331) % 70_000;
            let mut payload = vec![0u8; len];
            splice_util::fill(i as u64, 3, 0, &mut payload);
            ws.send(Message::binary(payload.clone())).await.unwrap();
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(got) => assert_eq!(got, payload, "message {i} corrupted"),
                other => panic!("unexpected {other:?}"),
            }
        }
        ws.close(None).await.unwrap();
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    });
}

fn wait_exit(gw: &mut Wsgate) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = gw.child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn sockmap_mode_relays_a_websocket_session_in_the_kernel() {
    if splice_util::splicer_or_skip("sockmap_mode_e2e", 16, 1 << 20).is_none() {
        return;
    }
    let echo = WsEcho::start();
    let gw = Wsgate::start(echo.addr, "sockmap", false, false);
    echo_session(&gw);
    let line = gw.wait_log("\"GET /chat HTTP/1.1\" 101 ");
    assert!(line.contains("mode=splice"), "not spliced: {line}");
}

#[test]
fn auto_falls_back_to_userspace_when_the_self_test_fails() {
    if splice_util::splicer_or_skip("auto_fallback_self_test_e2e", 16, 1 << 20).is_none() {
        return;
    }
    let echo = WsEcho::start();
    let gw = Wsgate::start(echo.addr, "auto", true, false);
    echo_session(&gw);
    let line = gw.wait_log("\"GET /chat HTTP/1.1\" 101 ");
    assert!(line.contains("mode=userspace"), "{line}");
    let err = gw.stderr();
    assert_eq!(err.matches("falling back to the userspace relay").count(), 1, "one warning expected:\n{err}");
    assert!(err.contains(FORCE_FAIL_ENV), "{err}");
}

#[test]
fn auto_falls_back_to_userspace_without_capabilities() {
    if splice_util::splicer_or_skip("auto_fallback_nocap_e2e", 16, 1 << 20).is_none() {
        return;
    }
    let echo = WsEcho::start();
    let gw = Wsgate::start(echo.addr, "auto", false, true);
    assert!(gw.addr.is_some(), "wsgate did not start unprivileged:\n{}", gw.stderr());
    echo_session(&gw);
    let line = gw.wait_log("\"GET /chat HTTP/1.1\" 101 ");
    assert!(line.contains("mode=userspace"), "{line}");
    let err = gw.stderr();
    assert!(err.contains("falling back") && err.contains("CAP_BPF"), "{err}");
}

#[test]
fn sockmap_mode_refuses_to_start_when_the_splice_is_unavailable() {
    if splice_util::splicer_or_skip("sockmap_refuses_e2e", 16, 1 << 20).is_none() {
        return;
    }
    let echo = WsEcho::start();
    for (force_fail, unprivileged) in [(true, false), (false, true)] {
        let mut gw = Wsgate::start(echo.addr, "sockmap", force_fail, unprivileged);
        assert!(gw.addr.is_none(), "wsgate listened although the splice is unavailable");
        let status = wait_exit(&mut gw).expect("wsgate kept running");
        assert!(!status.success());
        let err = gw.stderr();
        assert!(err.contains("splice = \"sockmap\"") && err.contains("unavailable"), "unclear refusal:\n{err}");
    }
}
