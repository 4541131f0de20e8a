//! Shared harness of the splice tests: a proxy thread running the splice on a
//! tokio-uring runtime (as a worker would), loopback socket quads, byte
//! patterns, and the root/BPF gate.
//!
//! The splice needs root (CAP_BPF + CAP_NET_ADMIN). Without it each test prints
//! a loud `SKIPPED:` line and passes, except under `CI`, where it fails.
#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

pub mod slow_reader;
pub mod torture;

use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;
use wsgate::drain::FrameTracker;
use wsgate::readiness::{self, Ring};
use wsgate::shutdown::{Phase, ShutdownTx};
use wsgate::splice::{HandoverError, SpliceOutcome, Splicer, WorkerPairs};

/// Loads a splicer, or explains loudly why the test cannot run here.
pub fn splicer_or_skip(test: &str, capacity: u32, budget: u64) -> Option<Splicer> {
    let why = if nix::unistd::geteuid().is_root() {
        match Splicer::load(capacity, budget) {
            Ok(s) => return Some(s),
            Err(e) => format!("eBPF splice unavailable: {e}"),
        }
    } else {
        "not root (the splice needs CAP_BPF and CAP_NET_ADMIN)".to_string()
    };
    eprintln!("\n==================== SKIPPED: {test}: {why} ====================\n");
    assert!(std::env::var_os("CI").is_none(), "{test} must run in CI: {why}");
    None
}

/// What the proxy does with the wsgate-side sockets of one connection.
pub enum Handshake {
    /// Splice right away.
    None,
    /// Read the request head from the client, forward it, peek the upstream's
    /// 101 head, then splice with the client bytes read after the head.
    Http,
}

pub struct Job {
    pub client: std::net::TcpStream,
    pub upstream: std::net::TcpStream,
    pub handshake: Handshake,
    pub done: std_mpsc::Sender<Result<SpliceOutcome, String>>,
    pub cookies: Option<std_mpsc::Sender<(u64, u64)>>,
}

enum Msg {
    Job(Job),
    /// Asks how many pairs are parked on the worker (rows, not tasks).
    Parked(std_mpsc::Sender<usize>),
}

/// A worker thread with a tokio-uring runtime that splices and parks pairs, as a
/// wsgate worker does.
pub struct Proxy {
    tx: Option<mpsc::UnboundedSender<Msg>>,
    pub shutdown: ShutdownTx,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A worker without idle timeout.
    pub fn start(splicer: &Splicer) -> Self {
        Self::with_idle(splicer, None)
    }

    /// A worker whose pairs close after `idle` without traffic.
    pub fn with_idle(splicer: &Splicer, idle: Option<Duration>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let (shutdown, shutdown_rx) = wsgate::shutdown::channel();
        let splicer = splicer.clone();
        let thread = std::thread::spawn(move || {
            tokio_uring::start(async move {
                let ring = Ring::start(4096).expect("poll ring");
                let pairs = splicer.init_worker(&ring, idle, shutdown_rx);
                while let Some(msg) = rx.recv().await {
                    let job = match msg {
                        Msg::Job(job) => job,
                        Msg::Parked(reply) => {
                            let _ = reply.send(pairs.parked());
                            continue;
                        }
                    };
                    let (pairs, ring) = (pairs.clone(), ring.clone());
                    tokio_uring::spawn(async move {
                        let done = job.done.clone();
                        if let Err(e) = run_job(&pairs, &ring, job).await {
                            let _ = done.send(Err(e));
                        }
                    });
                }
            });
        });
        Self { tx: Some(tx), shutdown, thread: Some(thread) }
    }

    /// Hands a pair of wsgate-side sockets to the proxy.
    pub fn submit(&self, job: Job) {
        self.tx.as_ref().expect("proxy running").send(Msg::Job(job)).expect("proxy thread alive");
    }

    /// Pairs parked on the worker right now.
    pub fn parked(&self) -> usize {
        let (reply, rx) = std_mpsc::channel();
        self.tx.as_ref().expect("proxy running").send(Msg::Parked(reply)).expect("proxy thread alive");
        rx.recv_timeout(Duration::from_secs(5)).expect("proxy answers")
    }

    /// Splices a pair without handshake; returns the outcome receiver.
    pub fn splice(
        &self,
        client: std::net::TcpStream,
        upstream: std::net::TcpStream,
    ) -> std_mpsc::Receiver<Result<SpliceOutcome, String>> {
        let (done, rx) = std_mpsc::channel();
        self.submit(Job { client, upstream, handshake: Handshake::None, done, cookies: None });
        rx
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.set(Phase::Stop);
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Splices and parks one pair; the outcome goes to `job.done` when it ends.
async fn run_job(pairs: &WorkerPairs, ring: &Ring, job: Job) -> Result<(), String> {
    let Job { client, upstream, handshake, done, cookies } = job;
    // Without a handshake both streams start between two frames, and the program
    // follows them (the torture's streams are WebSocket frames); after one, where the
    // frames stand is left unknown.
    let (early, frames) = match handshake {
        Handshake::None => (Vec::new(), [FrameTracker::default(); 2]),
        Handshake::Http => {
            let early = http_handshake(ring, client.as_raw_fd(), upstream.as_raw_fd())
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            (early, [FrameTracker::lost(); 2])
        }
    };
    let client = tokio_uring::net::TcpStream::from_std(client);
    let upstream = tokio_uring::net::TcpStream::from_std(upstream);
    let pair = match pairs.splice_frames(client, upstream, early, frames).await {
        Ok(p) => p,
        Err(HandoverError::NotSpliced { reason, .. }) => return Err(format!("not spliced: {reason}")),
        Err(e) => return Err(e.to_string()),
    };
    if let Some(tx) = cookies {
        let _ = tx.send(pair.cookies());
    }
    pair.park(0, move |outcome| {
        let _ = done.send(Ok(outcome));
    });
    Ok(())
}

fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags | libc::MSG_DONTWAIT) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n.cast_unsigned()) }
}

fn send_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is valid for reads of its length.
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        data = &data[n.cast_unsigned()..];
    }
    Ok(())
}

struct Fd(RawFd);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

fn head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// What the gateway's handshake does, minus HTTP checks: consume the request
/// head (keeping the bytes after it), forward it, peek the 101 until complete.
async fn http_handshake(ring: &Ring, client: RawFd, upstream: RawFd) -> io::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let end = loop {
        ring.ready(&Fd(client), readiness::READABLE).await?;
        match recv(client, &mut buf, 0) {
            Ok(0) => return Err(io::Error::other("client closed before its head")),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        if let Some(end) = head_end(&got) {
            break end;
        }
    };
    send_all(upstream, &got[..end])?;
    loop {
        ring.ready(&Fd(upstream), readiness::READABLE).await?;
        match recv(upstream, &mut buf, libc::MSG_PEEK) {
            Ok(0) => return Err(io::Error::other("upstream closed before its 101")),
            Ok(n) if head_end(&buf[..n]).is_some() => break,
            Ok(_) => tokio::time::sleep(Duration::from_micros(200)).await,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got.split_off(end))
}

/// Client end, wsgate's client socket, wsgate's upstream socket, upstream end.
pub struct Quad {
    pub c: std::net::TcpStream,
    pub a: std::net::TcpStream,
    pub b: std::net::TcpStream,
    pub u: std::net::TcpStream,
}

/// Two loopback connections through one listener (not thread-safe per listener: use one per thread).
pub fn quad(listener: &std::net::TcpListener) -> io::Result<Quad> {
    let c = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (a, _) = listener.accept()?;
    let b = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (u, _) = listener.accept()?;
    for s in [&c, &a, &b, &u] {
        s.set_nodelay(true)?;
    }
    Ok(Quad { c, a, b, u })
}

/// Key of stream `dir` of connection `id`: the pattern's 8-byte words are their
/// word index xored with it, so every offset of every stream has its own bytes.
fn key(id: u64, dir: u64) -> u64 {
    let mut z =
        id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ dir.wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ 0x94D0_49BB_1331_11EB;
    z ^= z >> 31;
    z.wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

fn byte_at(k: u64, off: u64) -> u8 {
    ((off / 8) ^ k).to_le_bytes()[(off % 8) as usize]
}

/// Fills `buf` with bytes `start..` of stream `dir` of connection `id`.
pub fn fill(id: u64, dir: u64, start: u64, buf: &mut [u8]) {
    let k = key(id, dir);
    let len = buf.len();
    let head = ((8 - start % 8) % 8).min(len as u64) as usize;
    let (first, rest) = buf.split_at_mut(head);
    for (i, b) in first.iter_mut().enumerate() {
        *b = byte_at(k, start + i as u64);
    }
    let base = (start + head as u64) / 8;
    let mut words = rest.chunks_exact_mut(8);
    for (j, w) in (&mut words).enumerate() {
        w.copy_from_slice(&((base + j as u64) ^ k).to_le_bytes());
    }
    let tail = words.into_remainder();
    let tail_start = start + (len - tail.len()) as u64;
    for (i, b) in tail.iter_mut().enumerate() {
        *b = byte_at(k, tail_start + i as u64);
    }
}

/// Offset of the first byte of `buf` that differs from the stream, if any.
pub fn check(id: u64, dir: u64, start: u64, buf: &[u8]) -> Option<u64> {
    let mut want = vec![0u8; buf.len()];
    fill(id, dir, start, &mut want);
    if want == buf {
        return None;
    }
    buf.iter().zip(&want).position(|(a, b)| a != b).map(|i| start + i as u64)
}

/// Diagnosis of a corruption at `bad`: which stream offsets the received bytes
/// from there on carry (each aligned word names its own offset).
pub fn explain(id: u64, dir: u64, start: u64, buf: &[u8], bad: u64) -> String {
    let k = key(id, dir);
    let mut out = format!("first bad byte at {bad}; received:");
    let mut off = bad.next_multiple_of(8);
    let mut last: Option<u64> = None;
    let mut runs = 0;
    while off + 16 <= start + buf.len() as u64 && runs < 8 {
        let i = (off - start) as usize;
        // The received bytes may be shifted by any amount: find the alignment at
        // which a word decodes to a plausible offset.
        let src = (0..8).find_map(|s| {
            let w = u64::from_le_bytes(buf[i + s..i + s + 8].try_into().unwrap()) ^ k;
            (w < 1 << 40).then(|| (w * 8).wrapping_sub(s as u64))
        });
        match src {
            Some(src) if last.is_none_or(|l| l + 8 != src) => {
                let _ = write!(out, " [at {off}: stream {src} ({:+})]", src.cast_signed() - off.cast_signed());
                runs += 1;
                last = Some(src);
            }
            Some(src) => last = Some(src),
            None => {
                if last.is_some() || runs == 0 {
                    let _ = write!(out, " [at {off}: not this stream]");
                    runs += 1;
                }
                last = None;
            }
        }
        off += 8;
    }
    out
}

/// `MemAvailable` and `Slab` from /proc/meminfo, in bytes.
pub fn meminfo() -> (i64, i64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("MemAvailable:"), field("Slab:"))
}

/// Waits until `f` holds, for at most `limit`.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}
