//! Start-up self-test of the kernel splice: a loopback pair inside the process
//! checks bytes queued before insertion, both directions, half-close and close
//! (including that the sockets leave the sockhash), before any client relies on it.
//!
//! Sockmap behaviour has regressed in stable kernels before; this is what lets
//! `auto` fall back instead of corrupting traffic. Must never use a port other
//! than an ephemeral one on 127.0.0.1, and must finish within a few seconds.
//!
//! Test hook: `WSGATE_SPLICE_SELFTEST_FAIL=1` in the environment makes the
//! self-test fail on purpose (to exercise the fallback path).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use super::kernel::{self, Inner, InsertError};
use super::shared::{DirField, TO_CLIENT, TO_UPSTREAM};

/// Environment variable that forces the self-test to fail (test hook).
pub const FORCE_FAIL_ENV: &str = "WSGATE_SPLICE_SELFTEST_FAIL";

const STEP_TIMEOUT: Duration = Duration::from_secs(3);
const BULK: usize = 256 * 1024;

/// Why the self-test failed.
#[derive(Debug, thiserror::Error)]
#[error("splice self-test failed at `{step}`: {detail}")]
pub struct SelfTestError {
    pub step: &'static str,
    pub detail: String,
}

fn fail(step: &'static str, detail: impl std::fmt::Display) -> SelfTestError {
    SelfTestError { step, detail: detail.to_string() }
}

/// Client end, wsgate's client socket, wsgate's upstream socket, upstream end.
struct Loop {
    c: TcpStream,
    a: TcpStream,
    b: TcpStream,
    u: TcpStream,
}

fn pair(l: &TcpListener) -> io::Result<(TcpStream, TcpStream)> {
    let near = TcpStream::connect(l.local_addr()?)?;
    let (far, _) = l.accept()?;
    for s in [&near, &far] {
        s.set_read_timeout(Some(STEP_TIMEOUT))?;
        s.set_write_timeout(Some(STEP_TIMEOUT))?;
    }
    Ok((near, far))
}

fn read_exact(s: &mut TcpStream, n: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0; n];
    s.read_exact(&mut v)?;
    Ok(v)
}

fn expect_eof(s: &mut TcpStream) -> io::Result<bool> {
    let mut b = [0u8; 1];
    Ok(s.read(&mut b)? == 0)
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// See [`Splicer::self_test`](super::Splicer::self_test).
pub(super) fn run(inner: &Inner) -> Result<Duration, SelfTestError> {
    let started = Instant::now();
    if std::env::var_os(FORCE_FAIL_ENV).is_some_and(|v| v == "1") {
        return Err(fail("start", format!("forced by {FORCE_FAIL_ENV}=1")));
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| fail("listen", e))?;
    let (c, a) = pair(&listener).map_err(|e| fail("connect", e))?;
    let (b, u) = pair(&listener).map_err(|e| fail("connect", e))?;
    check(inner, Loop { c, a, b, u })?;
    Ok(started.elapsed())
}

fn check(inner: &Inner, mut t: Loop) -> Result<(), SelfTestError> {
    let io = |step| move |e: io::Error| fail(step, e);
    // Queued before insertion, in both directions.
    t.c.write_all(b"early-client").map_err(io("write before insertion"))?;
    t.u.write_all(b"early-upstream").map_err(io("write before insertion"))?;
    std::thread::sleep(Duration::from_millis(5));
    let ins =
        match kernel::insert_pair(inner, t.a.as_raw_fd(), t.b.as_raw_fd(), [crate::drain::FrameTracker::lost(); 2]) {
            Ok(i) => i,
            Err(InsertError::NotSpliceable(why)) => return Err(fail("insert", why)),
            Err(InsertError::Failed(e)) => return Err(fail("insert", e)),
        };
    let result = check_inserted(&mut t);
    let carried = [TO_UPSTREAM, TO_CLIENT].map(|dir| {
        let word = |f| inner.dir_word(ins.slot, dir, f).load(Ordering::Acquire);
        (word(DirField::Redirected), word(DirField::Passed))
    });
    kernel::release(inner, ins);
    result?;
    let expected = [12 + BULK as u64, 14 + BULK as u64 + 16];
    if carried.map(|(redirected, _)| redirected) != expected || carried.iter().any(|&(_, passed)| passed != 0) {
        return Err(fail(
            "kernel counters",
            format!("redirected/passed {carried:?}, expected {expected:?} redirected"),
        ));
    }
    // Close: once wsgate's sockets are closed the kernel drops both entries.
    drop(t.a);
    drop(t.b);
    for cookie in [ins.client_cookie, ins.upstream_cookie] {
        if crate::io::bpf::keys(inner.sock_hash_fd).map_err(io("sockhash lookup"))?.contains(&cookie) {
            return Err(fail("close", "a closed socket is still in the sockhash"));
        }
    }
    Ok(())
}

fn check_inserted(t: &mut Loop) -> Result<(), SelfTestError> {
    let io = |step| move |e: io::Error| fail(step, e);
    let got = read_exact(&mut t.u, 12).map_err(io("bytes queued before insertion, client to upstream"))?;
    if got != b"early-client" {
        return Err(fail("bytes queued before insertion", "client to upstream corrupted"));
    }
    let got = read_exact(&mut t.c, 14).map_err(io("bytes queued before insertion, upstream to client"))?;
    if got != b"early-upstream" {
        return Err(fail("bytes queued before insertion", "upstream to client corrupted"));
    }
    // Both directions at once.
    let (up, down) = (pattern(1, BULK), pattern(2, BULK));
    let mut cw = t.c.try_clone().map_err(io("dup"))?;
    let mut uw = t.u.try_clone().map_err(io("dup"))?;
    let (up2, down2) = (up.clone(), down.clone());
    let writer = std::thread::spawn(move || -> io::Result<()> {
        cw.write_all(&up2)?;
        uw.write_all(&down2)
    });
    let at_u = read_exact(&mut t.u, BULK).map_err(io("bulk client to upstream"))?;
    let at_c = read_exact(&mut t.c, BULK).map_err(io("bulk upstream to client"))?;
    writer.join().map_err(|_| fail("bulk", "writer panicked"))?.map_err(io("bulk write"))?;
    if at_u != up || at_c != down {
        return Err(fail("bulk both directions", "bytes corrupted"));
    }
    // Half-close: client FIN reaches wsgate as EOF, is passed on, and the
    // other direction keeps flowing.
    t.c.shutdown(Shutdown::Write).map_err(io("half-close"))?;
    if !expect_eof(&mut t.a).map_err(io("half-close: EOF on wsgate's client socket"))? {
        return Err(fail("half-close", "data instead of EOF on wsgate's client socket"));
    }
    crate::io::shutdown(&t.b, std::net::Shutdown::Write).map_err(io("half-close: shutdown"))?;
    if !expect_eof(&mut t.u).map_err(io("half-close: EOF at upstream"))? {
        return Err(fail("half-close", "upstream saw data instead of EOF"));
    }
    t.u.write_all(b"after-half-close").map_err(io("half-close: upstream write"))?;
    let got = read_exact(&mut t.c, 16).map_err(io("half-close: client read"))?;
    if got != b"after-half-close" {
        return Err(fail("half-close", "bytes after half-close corrupted"));
    }
    // Close from the upstream side.
    t.u.shutdown(Shutdown::Write).map_err(io("close"))?;
    if !expect_eof(&mut t.b).map_err(io("close: EOF on wsgate's upstream socket"))? {
        return Err(fail("close", "data instead of EOF on wsgate's upstream socket"));
    }
    crate::io::shutdown(&t.a, std::net::Shutdown::Write).map_err(io("close: shutdown"))?;
    if !expect_eof(&mut t.c).map_err(io("close: EOF at client"))? {
        return Err(fail("close", "client saw data instead of EOF"));
    }
    Ok(())
}
