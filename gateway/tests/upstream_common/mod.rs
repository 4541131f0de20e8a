//! Harness of the upstream and admission tests: the real `wsgate` binary started with a
//! configuration file (through `utils::Gateway`), test origins that answer 101 with
//! their identity (and a toggleable `/health`), and clients that can connect from any
//! 127.0.0.0/8 address.
//! Every wait is bounded in time.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub use crate::utils::Gateway;

/// wsgate with `toml` (which must listen on 127.0.0.1:0) and the userspace relay,
/// diagnostics at `warn` collected.
pub fn gateway(toml: &str) -> Gateway {
    Gateway::builder().config(toml).args(&["--splice", "userspace"]).log_level("warn").start()
}

/// A config with `workers = 2`, access log off, one route `/` to group `g`.
pub fn config(group: &str, extra: &str) -> String {
    format!(
        "workers = 2\n[[listener]]\naddress = \"127.0.0.1:0\"\n[access_log]\npath = \"off\"\n[timeouts]\nconnect = \"2s\"\nresponse = \"5s\"\n{extra}\n[[route]]\npath = \"/\"\nupstream = \"g\"\n[upstream.g]\n{group}\n"
    )
}

/// What a test origin saw and does.
#[derive(Default)]
pub struct OriginState {
    /// Status of `/health`.
    pub health: AtomicU16,
    /// Upgrades answered with 101.
    pub upgrades: AtomicU64,
    /// Upgraded connections open right now.
    pub live: AtomicU64,
    stopped: AtomicBool,
    /// Close every upgrade request without answering (a crashing application).
    pub mute: AtomicBool,
    /// Last request head seen.
    pub last_head: Mutex<String>,
}

/// A test origin on its own thread and runtime: `GET /health` → `health` status;
/// an upgrade → 101 with `X-Server: NAME` and `X-Seen-Peer`, held open until the client
/// closes; stops (listener and connections closed) on [`Origin::kill`] or drop.
pub struct Origin {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<OriginState>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Origin {
    pub fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    /// Starts on `addr` (e.g. the address of a killed origin, to bring it back).
    pub fn start_on(name: &str, addr: SocketAddr) -> Self {
        let state = Arc::new(OriginState::default());
        state.health.store(200, Ordering::Relaxed);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (tx, rx) = std::sync::mpsc::channel();
        let (st, label) = (state.clone(), name.to_owned());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind(addr).await.expect("bind origin");
                tx.send(listener.local_addr().unwrap()).unwrap();
                let mut stop_rx2 = stop_rx.clone();
                loop {
                    tokio::select! {
                        r = listener.accept() => if let Ok((s, peer)) = r {
                            tokio::spawn(serve(s, peer, label.clone(), st.clone(), stop_rx.clone()));
                        },
                        _ = stop_rx2.changed() => break,
                    }
                }
                drop(listener);
                st.stopped.store(true, Ordering::Relaxed);
                // Give connection tasks a moment to see the stop and close.
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        });
        let addr = rx.recv_timeout(Duration::from_secs(5)).expect("origin started");
        Self { name: name.to_owned(), addr, state, stop: Some(stop), thread: Some(thread) }
    }

    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::Relaxed);
    }

    pub fn upgrades(&self) -> u64 {
        self.state.upgrades.load(Ordering::Relaxed)
    }

    pub fn live(&self) -> u64 {
        self.state.live.load(Ordering::Relaxed)
    }

    /// Closes the listener and every connection, like a crashed process.
    pub fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve(
    mut s: TcpStream,
    peer: SocketAddr,
    name: String,
    st: Arc<OriginState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head = loop {
        let n = tokio::select! {
            r = s.read(&mut chunk) => match r { Ok(n) if n > 0 => n, _ => return },
            _ = stop.changed() => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break String::from_utf8_lossy(&buf[..i + 4]).into_owned();
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    };
    if head.starts_with("GET /health ") {
        let status = st.health.load(Ordering::Relaxed);
        let _ = s
            .write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
            .await;
        return;
    }
    if st.mute.load(Ordering::Relaxed) {
        return;
    }
    st.last_head.lock().unwrap().clone_from(&head);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Server: {name}\r\nX-Seen-Peer: {}\r\nX-Seen-Real-IP: {}\r\nX-Seen-XFF: {}\r\n\r\n",
        peer.ip(),
        header("x-real-ip"),
        header("x-forwarded-for"),
    );
    // Counted before the 101 leaves: a client that has read it must see it counted.
    st.upgrades.fetch_add(1, Ordering::Relaxed);
    st.live.fetch_add(1, Ordering::Relaxed);
    if s.write_all(resp.as_bytes()).await.is_err() {
        st.upgrades.fetch_sub(1, Ordering::Relaxed);
        st.live.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    // Hold until the client closes (or the origin is killed).
    loop {
        tokio::select! {
            r = s.read(&mut chunk) => if !matches!(r, Ok(n) if n > 0) { break },
            _ = stop.changed() => break,
        }
    }
    st.live.fetch_sub(1, Ordering::Relaxed);
}

/// A client's view of one handshake.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    /// Kept open (for long-lived connections) until dropped.
    pub stream: TcpStream,
}

impl Answer {
    /// A header of the response (case-insensitive), or "".
    pub fn header(&self, name: &str) -> String {
        self.head
            .lines()
            .find_map(|l| {
                l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default()
    }

    /// The origin that answered (`X-Server`).
    pub fn server(&self) -> String {
        self.header("x-server")
    }
}

/// One WebSocket handshake through `gw` from local address `from` (any 127/8 address),
/// with extra header lines. Bounded by 10 s.
pub async fn handshake(gw: SocketAddr, from: Option<IpAddr>, target: &str, extra: &str) -> Result<Answer, String> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if let Some(ip) = from {
            sock.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let mut s = sock.connect(gw).await.map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
                let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad head {head:?}"))?;
                return Ok(Answer { status, head, stream: s });
            }
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("closed before the head; got {:?}", String::from_utf8_lossy(&buf)));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| "handshake timed out".to_owned())?
}

/// `n` short-lived handshakes, `parallel` at a time; returns the answering server of
/// each (or `Err`). `make` builds (from, target, extra headers) for handshake `i`.
pub async fn many<F>(gw: SocketAddr, n: usize, parallel: usize, make: F) -> Vec<Result<String, String>>
where
    F: Fn(usize) -> (Option<IpAddr>, String, String) + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + parallel).min(n))
            .map(|k| {
                let make = make.clone();
                tokio::spawn(async move {
                    let (from, target, extra) = make(k);
                    match handshake(gw, from, &target, &extra).await {
                        Ok(a) if a.status == 101 => Ok(a.server()),
                        Ok(a) => Err(format!("status {}", a.status)),
                        Err(e) => Err(e),
                    }
                })
            })
            .collect();
        for t in batch {
            out.push(t.await.unwrap());
        }
        i += parallel;
    }
    out
}

/// Count of answers per server name, with failures under "ERR".
pub fn tally(results: &[Result<String, String>]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in results {
        *m.entry(r.clone().unwrap_or_else(|_| "ERR".into())).or_insert(0) += 1;
    }
    m
}

/// The `i`-th of many distinct client addresses in 127.1.0.0/16.
pub fn client_addr(i: usize) -> IpAddr {
    IpAddr::from([127, 1, (i / 250) as u8, (i % 250 + 1) as u8])
}
