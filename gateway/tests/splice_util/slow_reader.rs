//! The slow-reader scenario shared by `splice_backpressure*.rs`.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Handshake, Job, Proxy, check, eventually, fill, meminfo, quad, splicer_or_skip};

/// Memory figures are machine-wide: never run two at once.
static SERIAL: Mutex<()> = Mutex::new(());

const BUDGET: u64 = 1 << 20;
const TOTAL: u64 = 256 << 20;
const CONNS: usize = 4;
/// Most a sender may push into a stalled reader per connection: TCP's own
/// buffers (sender's send queue, wsgate's receive queue, the reader's receive
/// queue; ≤ 4 + 6 + 6 MiB at the default tcp_wmem/tcp_rmem maxima) + budget.
const PUSH_LIMIT: u64 = 20 << 20;

/// Stalls one reader while the other side pushes `TOTAL` bytes in 64 KiB writes,
/// checks the sender is stopped, then resumes and checks every byte.
pub fn slow_reader(upstream_stalls: bool) {
    slow_reader_in(upstream_stalls, 64 * 1024);
}

/// [`slow_reader`] with the stalled phase pushed in writes of `write` bytes (below a
/// segment's size with `TCP_NODELAY`, so that the kernel sees one small skb per write).
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
pub fn slow_reader_in(upstream_stalls: bool, write: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let side = if upstream_stalls { "slow_upstream_reader" } else { "slow_client_reader" };
    let name = format!("{side} ({write} B writes)");
    let name = name.as_str();
    let Some(splicer) = splicer_or_skip(name, 64, BUDGET) else { return };
    let proxy = Proxy::start(&splicer);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (mem0, slab0) = meminfo();
    let mut pending = Vec::new();
    let mut pushed = Vec::new();
    let mut readers = Vec::new();
    for id in 0..CONNS as u64 {
        let q = quad(&l).unwrap();
        // Push only once the pair is in the kernel (a client that floods during
        // the handover is left to the userspace relay, see `handover`).
        let (done, outcome) = std::sync::mpsc::channel();
        let (spliced_tx, in_kernel) = std::sync::mpsc::channel();
        proxy.submit(Job { client: q.a, upstream: q.b, handshake: Handshake::None, done, cookies: Some(spliced_tx) });
        in_kernel.recv_timeout(Duration::from_secs(5)).expect("pair spliced");
        let (mut sender, reader) = if upstream_stalls { (q.c, q.u) } else { (q.u, q.c) };
        sender.set_nonblocking(true).unwrap();
        sender.set_nodelay(write < 1400).unwrap();
        // Push until the sender has been blocked for 300 ms.
        let mut sent = 0u64;
        let mut buf = vec![0u8; write];
        let mut last_progress = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(20);
        while sent < TOTAL && last_progress.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
            let n = (TOTAL - sent).min(buf.len() as u64) as usize;
            fill(id, 0, sent, &mut buf[..n]);
            match sender.write(&buf[..n]) {
                Ok(k) => {
                    sent += k as u64;
                    last_progress = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("sender: {e}"),
            }
        }
        pushed.push(sent);
        pending.push((outcome, sender, sent));
        readers.push(reader);
    }
    let (mem1, slab1) = meminfo();
    let max_push = *pushed.iter().max().unwrap();
    let held = splicer.counts();
    eprintln!(
        "{name}: {CONNS} conns, budget {BUDGET}: pushed per conn {:?} MiB before the sender blocked (limit {} MiB); \
         MemAvailable -{:.1} MiB, Slab +{:.1} MiB; pressure runs {}",
        pushed.iter().map(|p| *p as f64 / 1_048_576.0).map(|p| (p * 10.0).round() / 10.0).collect::<Vec<_>>(),
        PUSH_LIMIT >> 20,
        (mem0 - mem1) as f64 / 1_048_576.0,
        (slab1 - slab0) as f64 / 1_048_576.0,
        held.pressure,
    );
    assert!(max_push < TOTAL, "the sender was never stopped");
    assert!(max_push <= PUSH_LIMIT, "a stalled reader let {max_push} bytes pile up");

    // Resume: the readers take everything, in order, while the senders finish.
    let mut threads = Vec::new();
    for (id, ((outcome, mut sender, sent), mut reader)) in pending.into_iter().zip(readers).enumerate() {
        let id = id as u64;
        threads.push(std::thread::spawn(move || {
            let writer = std::thread::spawn(move || {
                sender.set_nonblocking(false).unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let mut off = sent;
                while off < TOTAL {
                    let n = (TOTAL - off).min(buf.len() as u64) as usize;
                    fill(id, 0, off, &mut buf[..n]);
                    sender.write_all(&buf[..n]).unwrap();
                    off += n as u64;
                }
                sender.shutdown(std::net::Shutdown::Write).unwrap();
                sender
            });
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            let mut bad_at = None;
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                if bad_at.is_none()
                    && let Some(bad) = check(id, 0, got, &buf[..n])
                {
                    eprintln!("conn {id}: corrupted: {}", super::explain(id, 0, got, &buf[..n], bad));
                    bad_at = Some(bad);
                }
                got += n as u64;
            }
            if bad_at.is_some() {
                eprintln!("conn {id}: received {got} of {TOTAL} ({:+})", got.cast_signed() - TOTAL.cast_signed());
                reader.shutdown(std::net::Shutdown::Write).unwrap();
                let _ = writer.join();
                let o = outcome.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
                eprintln!("conn {id}: outcome {o:?}");
                panic!("conn {id} corrupted");
            }
            assert_eq!(got, TOTAL, "conn {id}: short");
            reader.shutdown(std::net::Shutdown::Write).unwrap();
            let mut sender = writer.join().unwrap();
            assert_eq!(sender.read(&mut buf).unwrap(), 0);
            outcome.recv_timeout(Duration::from_secs(10)).unwrap().unwrap()
        }));
    }
    let mut trimmed = 0;
    for t in threads {
        let o = t.join().unwrap();
        eprintln!("{name}: outcome {o:?}");
        trimmed += o.trimmed;
        let carried = if upstream_stalls { o.to_upstream } else { o.to_client };
        assert_eq!(carried, TOTAL);
        assert!(o.held_max <= BUDGET + 64 * 1024 + 4096, "held {} over budget", o.held_max);
    }
    eprintln!("{name}: retransmitted bytes trimmed: {trimmed}");
    assert!(eventually(Duration::from_secs(2), || splicer.sockhash_entries().unwrap() == 0));
    drop(proxy);
}
