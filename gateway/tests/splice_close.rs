//! How spliced pairs end: FIN each way with the other direction still
//! flowing, RST each way, both sides closing at once, an upstream process
//! killed mid-stream, the idle timeout and the drain signal. After each, both
//! sockets must have left the sockhash and the peer links must be gone.
//!
//! All tests share one proxy worker (as connections share a worker in wsgate).

mod splice_util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use splice_util::{Handshake, Job, Proxy, Quad, check, eventually, fill, quad, splicer_or_skip};
use wsgate::close::Close;
use wsgate::shutdown::Phase;
use wsgate::splice::{SpliceOutcome, Splicer};

const STEP: Duration = Duration::from_secs(5);

struct Shared {
    splicer: Splicer,
    proxy: Proxy,
    listener: std::sync::Mutex<std::net::TcpListener>,
}

fn shared(test: &str) -> Option<&'static Shared> {
    static SHARED: OnceLock<Option<Shared>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let splicer = splicer_or_skip(test, 256, 1 << 20)?;
            let proxy = Proxy::start(&splicer);
            let listener = std::sync::Mutex::new(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
            Some(Shared { splicer, proxy, listener })
        })
        .as_ref()
        .or_else(|| {
            eprintln!("SKIPPED: {test}: see above");
            None
        })
}

struct Pair {
    c: TcpStream,
    u: TcpStream,
    outcome: std_mpsc::Receiver<Result<SpliceOutcome, String>>,
    cookies: (u64, u64),
}

fn spliced(s: &Shared) -> Pair {
    spliced_on(s, &s.proxy)
}

/// Splices a new pair on `proxy` (a worker with its own idle timeout or drain signal).
fn spliced_on(s: &Shared, proxy: &Proxy) -> Pair {
    let Quad { c, a, b, u } = quad(&s.listener.lock().unwrap()).unwrap();
    for x in [&c, &u] {
        x.set_read_timeout(Some(STEP)).unwrap();
        x.set_write_timeout(Some(STEP)).unwrap();
    }
    let (done, outcome) = std_mpsc::channel();
    let (ctx, crx) = std_mpsc::channel();
    proxy.submit(Job { client: a, upstream: b, handshake: Handshake::None, done, cookies: Some(ctx) });
    let cookies = crx.recv_timeout(STEP).expect("spliced");
    Pair { c, u, outcome, cookies }
}

fn finish(
    s: &Shared,
    outcome: &std_mpsc::Receiver<Result<SpliceOutcome, String>>,
    cookies: (u64, u64),
) -> SpliceOutcome {
    let o = outcome.recv_timeout(STEP).expect("supervision ended").expect("supervised");
    let (cc, uc) = cookies;
    let gone = eventually(STEP, || {
        !s.splicer.contains(cc).unwrap()
            && !s.splicer.contains(uc).unwrap()
            && !s.splicer.linked(cc).unwrap()
            && !s.splicer.linked(uc).unwrap()
    });
    assert!(gone, "map entries of a finished pair remain");
    o
}

fn eof(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!(s.read(&mut b), Ok(0))
}

fn reset(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    false
}

fn stream(from: &mut TcpStream, to: &mut TcpStream, id: u64, len: usize) {
    let mut data = vec![0u8; len];
    fill(id, 7, 0, &mut data);
    let mut w = from.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
    let mut got = vec![0u8; len];
    to.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(check(id, 7, 0, &got), None);
}

fn rst(s: TcpStream) {
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 })
        .unwrap();
    drop(s);
}

#[test]
fn fin_from_client_half_closes_and_the_upstream_keeps_sending() {
    let Some(s) = shared("fin_from_client") else { return };
    let mut p = spliced(s);
    stream(&mut p.c, &mut p.u, 1, 100_000);
    p.c.shutdown(Shutdown::Write).unwrap();
    assert!(eof(&mut p.u), "upstream did not see the client's FIN");
    stream(&mut p.u, &mut p.c, 2, 4 << 20);
    p.u.shutdown(Shutdown::Write).unwrap();
    assert!(eof(&mut p.c), "client did not see the upstream's FIN");
    let o = finish(s, &p.outcome, p.cookies);
    assert_eq!((o.reason, o.to_upstream, o.to_client), (Close::ClientFin, 100_000, 4 << 20));
}

#[test]
fn fin_from_upstream_half_closes_and_the_client_keeps_sending() {
    let Some(s) = shared("fin_from_upstream") else { return };
    let mut p = spliced(s);
    p.u.shutdown(Shutdown::Write).unwrap();
    assert!(eof(&mut p.c), "client did not see the upstream's FIN");
    stream(&mut p.c, &mut p.u, 3, 4 << 20);
    p.c.shutdown(Shutdown::Write).unwrap();
    assert!(eof(&mut p.u), "upstream did not see the client's FIN");
    let o = finish(s, &p.outcome, p.cookies);
    assert_eq!((o.reason, o.to_upstream, o.to_client), (Close::UpstreamFin, 4 << 20, 0));
}

#[test]
fn rst_from_client_resets_the_upstream() {
    let Some(s) = shared("rst_from_client") else { return };
    let mut p = spliced(s);
    stream(&mut p.u, &mut p.c, 4, 10_000);
    let Pair { c, mut u, outcome, cookies } = p;
    rst(c);
    assert!(reset(&mut u), "upstream was not reset");
    assert_eq!(finish(s, &outcome, cookies).reason, Close::ClientReset);
}

#[test]
fn rst_from_upstream_resets_the_client() {
    let Some(s) = shared("rst_from_upstream") else { return };
    let mut p = spliced(s);
    stream(&mut p.c, &mut p.u, 5, 10_000);
    let Pair { mut c, u, outcome, cookies } = p;
    rst(u);
    assert!(reset(&mut c), "client was not reset");
    assert_eq!(finish(s, &outcome, cookies).reason, Close::UpstreamReset);
}

#[test]
fn both_sides_close_at_once() {
    let Some(s) = shared("both_sides_close") else { return };
    let mut p = spliced(s);
    stream(&mut p.c, &mut p.u, 6, 50_000);
    let c2 = p.c.try_clone().unwrap();
    let t = std::thread::spawn(move || c2.shutdown(Shutdown::Write));
    p.u.shutdown(Shutdown::Write).unwrap();
    t.join().unwrap().unwrap();
    assert!(eof(&mut p.c) && eof(&mut p.u));
    assert!(finish(s, &p.outcome, p.cookies).reason.is_fin());
}

#[test]
fn upstream_killed_mid_stream_resets_the_client() {
    let Some(s) = shared("upstream_killed") else { return };
    let Pair { c: mut client, u, outcome, cookies } = spliced(s);
    // The upstream end lives in a child process that never reads.
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .stdin(std::process::Stdio::from(OwnedFd::from(u)))
        .spawn()
        .unwrap();
    let mut c = client.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..16 {
            if c.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(reset(&mut client), "client was not reset after the upstream died");
    writer.join().unwrap();
    assert_eq!(finish(s, &outcome, cookies).reason, Close::UpstreamReset);
}

#[test]
fn idle_pair_is_closed_after_the_timeout_and_not_before() {
    let Some(s) = shared("idle_timeout") else { return };
    let idle = Duration::from_millis(400);
    let proxy = Proxy::with_idle(&s.splicer, Some(idle));
    let mut p = spliced_on(s, &proxy);
    assert_eq!(proxy.parked(), 1, "an idle spliced pair is parked, not a task");
    let start = Instant::now();
    // Traffic every 100 ms keeps it open past the timeout.
    for i in 0..8 {
        std::thread::sleep(Duration::from_millis(100));
        if i % 2 == 0 { stream(&mut p.c, &mut p.u, 8, 100) } else { stream(&mut p.u, &mut p.c, 9, 100) }
    }
    assert!(p.outcome.try_recv().is_err(), "closed while active");
    assert!(eof(&mut p.c) && eof(&mut p.u), "idle pair not closed");
    let quiet = start.elapsed();
    assert!(quiet >= Duration::from_millis(800) + idle, "closed too early: {quiet:?}");
    assert_eq!(finish(s, &p.outcome, p.cookies).reason, Close::IdleTimeout);
}

#[test]
fn drain_signal_closes_the_pair() {
    let Some(s) = shared("drain_signal") else { return };
    let proxy = Proxy::start(&s.splicer);
    let mut p = spliced_on(s, &proxy);
    stream(&mut p.c, &mut p.u, 10, 1000);
    proxy.shutdown.set(Phase::Stop);
    assert!(eof(&mut p.c) && eof(&mut p.u), "drained pair not closed");
    assert_eq!(finish(s, &p.outcome, p.cookies).reason, Close::Shutdown);
}

/// Pushes `len` bytes of stream `id` from `s` without blocking, until done or blocked for
/// 300 ms; returns how many went.
fn push_until_blocked(s: &mut TcpStream, id: u64, len: u64) -> u64 {
    s.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut sent, mut last) = (0u64, Instant::now());
    while sent < len && last.elapsed() < Duration::from_millis(300) {
        let n = (len - sent).min(buf.len() as u64) as usize;
        fill(id, 7, sent, &mut buf[..n]);
        match s.write(&buf[..n]) {
            Ok(k) => {
                sent += k as u64;
                last = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("push: {e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
    sent
}

/// Reads stream `id` to EOF, checking every byte; returns how many arrived.
fn drain_checked(mut s: TcpStream, id: u64) -> u64 {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).expect("read to EOF");
        if n == 0 {
            return got;
        }
        assert_eq!(check(id, 7, got, &buf[..n]), None, "stream {id} corrupted");
        got += n as u64;
    }
}

/// The client's last bytes, passed to userspace (its direction over budget) while the
/// client socket's psock queue still holds the upstream's bytes redirected to a client
/// that does not read, wait in that queue when its FIN arrives. recv() then says end of
/// stream before they are readable; taking that as the end lost them (the upstream got
/// EOF short of them). Every byte must arrive, then the FIN.
#[test]
fn fin_behind_the_other_directions_queue_loses_no_passed_byte() {
    let Some(s) = shared("fin_behind_queue") else { return };
    let Quad { mut c, a, b, mut u } = quad(&s.listener.lock().unwrap()).unwrap();
    // A small send buffer on wsgate's client socket: most of what the kernel redirects
    // towards the stalled client then waits in the psock queue, not in TCP's.
    nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::SndBuf, &(64 * 1024)).unwrap();
    let (done, outcome) = std_mpsc::channel();
    let (ctx, crx) = std_mpsc::channel();
    s.proxy.submit(Job { client: a, upstream: b, handshake: Handshake::None, done, cookies: Some(ctx) });
    let cookies = crx.recv_timeout(STEP).expect("spliced");
    // Neither end reads: the upstream's bytes pile up in the client socket's psock
    // queue, the client's go over budget towards the upstream and are passed.
    let down = push_until_blocked(&mut u, 31, 64 << 20);
    let up = push_until_blocked(&mut c, 30, 24 << 20);
    c.shutdown(Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (c2, u2) = (c.try_clone().unwrap(), u.try_clone().unwrap());
    let client = std::thread::spawn(move || drain_checked(c2, 31));
    let upstream = std::thread::spawn(move || drain_checked(u2, 30));
    let got_up = upstream.join().unwrap();
    u.shutdown(Shutdown::Write).unwrap();
    let got_down = client.join().unwrap();
    assert_eq!(got_up, up, "the upstream got {got_up} of the client's {up} bytes");
    assert_eq!(got_down, down);
    let o = finish(s, &outcome, cookies);
    eprintln!("fin behind the queue: {o:?}");
    assert!(o.pressure_runs > 0, "the client's direction never went over budget: nothing was passed");
    assert!(o.reason.is_fin(), "{o:?}");
    assert_eq!((o.to_upstream, o.to_client), (up, down));
}
