//! Shared harness for the gateway's integration tests: the real `wsgate` binary, a
//! real WebSocket echo upstream (tokio-tungstenite), scripted raw upstreams, and raw
//! clients that assert exact bytes. Every wait is bounded.

#![allow(dead_code)] // each test binary uses a different subset of the harness

mod gateway;
pub mod netns;

#[allow(unused_imports)] // each test binary uses a different subset of the harness
pub use gateway::{Exited, Gateway, GatewayBuilder};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};

/// A request that is a valid WebSocket upgrade for `path`.
pub fn upgrade_request(path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

/// A WebSocket configuration for messages and frames up to 64 MiB (both ends of the
/// large-message tests).
pub fn large_messages() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        max_message_size: Some(64 << 20),
        max_frame_size: Some(64 << 20),
        ..Default::default()
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("wsgate-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads until `\r\n\r\n` (bounded by the stream's read timeout); returns the head and
/// any bytes read past it.
pub fn read_head(s: &mut impl Read) -> (String, Vec<u8>) {
    match next_head(s) {
        Ok(Some(head)) => head,
        Ok(None) => panic!("EOF before a head"),
        Err(e) => panic!("read head: {e}"),
    }
}

/// Like [`read_head`] for a server's loop: `None` at the end of the stream before a
/// head began, an error for one cut short.
pub fn next_head(s: &mut impl Read) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok(Some((String::from_utf8_lossy(&buf).into_owned(), rest)));
        }
        match s.read(&mut chunk)? {
            0 if buf.is_empty() => return Ok(None),
            0 => {
                let got = String::from_utf8_lossy(&buf).into_owned();
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("EOF in a head: {got:?}")));
            }
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads until EOF (bounded by the read timeout); returns everything.
pub fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Reads exactly `n` bytes.
pub fn read_exact(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).expect("read_exact");
    v
}

/// A masked client frame (RFC 6455 §5.2).
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0xfe);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0xff);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one unmasked server frame: (fin, opcode, payload).
pub fn server_frame(s: &mut impl Read) -> (bool, u8, Vec<u8>) {
    let h = read_exact(s, 2);
    let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
    let len = match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes(read_exact(s, 2).try_into().unwrap())),
        127 => u64::from_be_bytes(read_exact(s, 8).try_into().unwrap()),
        n => u64::from(n),
    };
    (fin, opcode, read_exact(s, usize::try_from(len).unwrap()))
}

/// Header names and values of one request, in order.
pub type Headers = Vec<(String, String)>;

/// A tokio-tungstenite echo upstream that records every request head it accepts, and
/// what each connection (numbered in accept order) received: `message N` (its length),
/// `close CODE` (a Close frame; tungstenite refuses an unmasked one from a client) or
/// `error TEXT` (a protocol error).
pub struct WsEcho {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Headers>>>,
    pub events: Arc<Mutex<Vec<(usize, String)>>>,
    _rt: tokio::runtime::Runtime,
}

impl WsEcho {
    #[allow(clippy::result_large_err)] // tungstenite's handshake callback type, not ours
    pub fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        let evs = events.clone();
        rt.spawn(async move {
            for conn in 0.. {
                let Ok((stream, _)) = listener.accept().await else { return };
                let reqs = reqs.clone();
                let evs = evs.clone();
                tokio::spawn(async move {
                    let cb =
                        |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                         resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                            let h = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())
                                })
                                .collect();
                            reqs.lock().unwrap().push(h);
                            Ok(resp)
                        };
                    let Ok(mut ws) =
                        tokio_tungstenite::accept_hdr_async_with_config(stream, cb, Some(large_messages())).await
                    else {
                        return;
                    };
                    let event = |e: String| evs.lock().unwrap().push((conn, e));
                    while let Some(msg) = ws.next().await {
                        let msg = match msg {
                            Ok(m) => m,
                            Err(e) => return event(format!("error {e}")),
                        };
                        if msg.is_text() || msg.is_binary() {
                            event(format!("message {}", msg.len()));
                            if ws.send(msg).await.is_err() {
                                return;
                            }
                        } else if let tokio_tungstenite::tungstenite::Message::Close(frame) = msg {
                            event(format!("close {}", frame.map_or(0, |f| u16::from(f.code))));
                            // Reading on sends tungstenite's queued Close reply (the
                            // client then sees a completed close handshake, not 1006)
                            // and ends once the handshake is over.
                            let _ = ws.close(None).await;
                            while let Some(Ok(_)) = ws.next().await {}
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, requests, events, _rt: rt }
    }
}

/// A scripted raw upstream: for each accepted connection, runs `script` on a thread.
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl RawUpstream {
    pub fn start<F>(script: F) -> Self
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(script);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let acc = accepted.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let script = script.clone();
                std::thread::spawn(move || script(s));
            }
        });
        Self { addr, accepted }
    }

    /// An upstream that answers 101 (with `after` in the same write) and then echoes raw bytes.
    pub fn switching(after: &'static [u8]) -> Self {
        Self::start(move |mut s| {
            let (_, early) = read_head(&mut s);
            let mut resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_vec();
            resp.extend_from_slice(after);
            resp.extend_from_slice(&early);
            s.write_all(&resp).unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    }
}

/// Runs `cmd` (a client program this test starts) to its end, for at most `within`;
/// returns its success and its stdout then stderr. Past `within` it is killed (by its
/// own id, nothing else) and the test fails. `missing` says what installs the program.
pub fn run_bounded(cmd: &mut std::process::Command, within: Duration, missing: &str) -> (bool, String) {
    use std::process::Stdio;
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let child = child.unwrap_or_else(|e| panic!("{cmd:?}: {e} ({missing})"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(within) else {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.cast_signed()), nix::sys::signal::Signal::SIGKILL);
        panic!("{cmd:?} did not finish within {within:?}");
    };
    let out = out.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// An address on which nothing listens (connection refused).
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The status code of a response head.
pub fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A helper process (a client script) whose stdout lines arrive as they are written;
/// killed on drop.
pub struct LineChild {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl LineChild {
    /// Spawns `command` with its stdout piped; `what` names it in the panic if it cannot
    /// start.
    pub fn spawn(command: &mut std::process::Command, what: &str) -> Self {
        use std::io::BufRead as _;
        let mut child = command.stdout(std::process::Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line, or `None` if none came within `within` (or the process ended).
    pub fn line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// Waits (at most `within`) for the `READY n` line a client script prints once its
    /// `n` connections are open.
    pub fn ready(&self, n: usize, within: Duration) {
        let ready = self.line(within).unwrap_or_else(|| panic!("the clients did not open within {within:?}"));
        assert_eq!(ready, format!("READY {n}"), "every client connection opens");
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
