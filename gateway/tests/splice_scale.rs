//! 5000 spliced pairs at once echo correctly in both directions.
//!
//! 5000 proxied connections are 20000 sockets, the open-files limit of one
//! process here; so the client and upstream ends live in a child process
//! (10000 fds) and wsgate's sides in this one (10000 fds), as in production.
//! The child is this binary itself, started again with `WSGATE_SPLICE_SCALE_ENDS`
//! set, which `main` turns into the ends' part instead of the test.

mod reexec;
mod splice_util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use splice_util::{Proxy, eventually, meminfo, splicer_or_skip};

const PAIRS_DEFAULT: usize = 5000;

/// Pairs (`SPLICE_SCALE_PAIRS` overrides, for debugging).
fn pairs() -> usize {
    std::env::var("SPLICE_SCALE_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(PAIRS_DEFAULT)
}
const ROLE: &str = "WSGATE_SPLICE_SCALE_ENDS";

fn message(i: usize, dir: u8) -> [u8; 64] {
    let mut m = [0u8; 64];
    for (k, b) in m.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13) ^ (k as u8).wrapping_mul(7) ^ dir.wrapping_mul(101) ^ ((i >> 8) as u8);
    }
    m
}

fn main() {
    reexec::main(ROLE, ends, reexec::trials![five_thousand_spliced_pairs_echo]);
}

/// The child: client and upstream ends of every pair, connecting through `proxy_addr`.
/// A failed assertion panics, so the child exits non-zero and the test reports it.
fn ends(proxy_addr: &str) {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("UPSTREAM {}", upstream.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let n = pairs();
    let mut ends = Vec::with_capacity(n);
    for _ in 0..n {
        // Lockstep: wsgate accepts this client, then connects to the upstream.
        let c = TcpStream::connect(proxy_addr).unwrap();
        let (u, _) = upstream.accept().unwrap();
        for s in [&c, &u] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_nodelay(true).unwrap();
        }
        ends.push((c, u));
    }
    println!("CONNECTED");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "GO");
    let mut buf = [0u8; 64];
    for (i, (c, _)) in ends.iter_mut().enumerate() {
        c.write_all(&message(i, 0)).unwrap();
    }
    for (i, (_, u)) in ends.iter_mut().enumerate() {
        u.read_exact(&mut buf).unwrap();
        assert_eq!(buf, message(i, 0), "pair {i}: client to upstream");
        u.write_all(&message(i, 1)).unwrap();
    }
    for (i, (c, _)) in ends.iter_mut().enumerate() {
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, message(i, 1), "pair {i}: upstream to client");
    }
    println!("ECHO OK {}", ends.len());
    std::io::stdout().flush().unwrap();
}

fn five_thousand_spliced_pairs_echo() {
    let n = pairs();
    let Some(splicer) = splicer_or_skip("five_thousand_spliced_pairs_echo", n as u32 + 64, 1 << 20) else { return };
    let proxy = Proxy::start(&splicer);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, listener.local_addr().unwrap().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut next_line = |want: &str| -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "child ended before {want}");
            if let Some(at) = line.find(want) {
                return line[at..].trim().to_string();
            }
        }
    };
    let upstream = next_line("UPSTREAM").split_whitespace().nth(1).unwrap().to_string();
    let (mem0, slab0) = meminfo();
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(n);
    for _ in 0..n {
        let (a, _) = listener.accept().unwrap();
        let b = TcpStream::connect(&upstream).unwrap();
        outcomes.push(proxy.splice(a, b));
    }
    eprintln!("accepted {n}");
    next_line("CONNECTED");
    assert!(
        eventually(Duration::from_secs(20), || splicer.counts().active == n as u64),
        "not all pairs spliced: {:?}",
        splicer.counts()
    );
    let took = started.elapsed();
    let (mem1, slab1) = meminfo();
    let entries = splicer.sockhash_entries().unwrap();
    eprintln!(
        "{n} pairs connected and spliced in {took:?}; sockhash entries {entries}; per pair (4 sockets, 2 processes): \
         MemAvailable -{:.1} KiB, Slab +{:.1} KiB",
        (mem0 - mem1) as f64 / 1024.0 / n as f64,
        (slab1 - slab0) as f64 / 1024.0 / n as f64
    );
    assert_eq!(entries, 2 * n);
    assert_eq!(proxy.parked(), n, "every idle spliced pair is a parked row, not a task");
    child.stdin.take().unwrap().write_all(b"GO\n").unwrap();
    let echoed = next_line("ECHO OK");
    assert_eq!(echoed, format!("ECHO OK {n}"));
    assert!(child.wait().unwrap().success(), "ends process failed");
    for o in outcomes {
        let o = o.recv_timeout(Duration::from_secs(20)).unwrap().unwrap();
        assert!(o.reason.is_fin(), "{o:?}");
        assert_eq!((o.to_upstream, o.to_client), (64, 64));
    }
    assert!(eventually(Duration::from_secs(10), || splicer.sockhash_entries().unwrap() == 0));
    assert_eq!(splicer.link_entries().unwrap(), 0);
    assert_eq!(splicer.counts().active, 0);
    assert_eq!(proxy.parked(), 0, "finished pairs leave the table");
}
