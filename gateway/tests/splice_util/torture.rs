//! The stall/resume torture of spliced pairs, shared by `splice_torture.rs` (one
//! bounded round in the suite) and `cargo xtask stress splice` (rounds until the
//! time is up).
//!
//! Many pairs at once; on each, both ends push WebSocket binary frames of random
//! sizes (1 B to 256 KiB payload, so frames straddle segments and skbs) as fast as
//! their sockets take them, and each reader alternates at random between reading
//! (0–2 s) and stalling (0–700 ms), so every direction crosses the budget again and
//! again at full speed. Every byte, frame headers included, is checked against the
//! stream the sender generated (sequence and content), and a direction whose reader
//! reads for `STUCK` without getting a byte fails the round.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wsgate::splice::{SpliceOutcome, Splicer};

use super::{Handshake, Job, Proxy, fill, quad};

/// Largest frame payload.
const MAX_PAYLOAD: usize = 256 * 1024;
/// Longest a reader may read without a byte arriving before the direction counts
/// as stuck. Legitimate waits are far shorter: the other reader's stall (≤ 700 ms,
/// through the psock queue both directions of a socket share) plus the sweeper's
/// tick (250 ms); the margin is for a loaded 2-core machine.
const STUCK: Duration = Duration::from_secs(6);
/// Socket timeouts: how often blocked readers and writers look at the clock.
const POLL: Duration = Duration::from_millis(100);

/// What one round is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub pairs: usize,
    /// How long the senders push.
    pub push: Duration,
    pub seed: u64,
}

/// What one round did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub pairs: usize,
    /// Bytes delivered and checked, both directions of every pair.
    pub bytes: u64,
    pub frames: u64,
    /// Times a direction went over budget and was relayed in userspace.
    pub pressure: u64,
    /// Fewest pressure episodes of one pair.
    pub min_pressure: u64,
    /// Retransmitted bytes the verdict cut off.
    pub trimmed: u64,
    /// What went wrong: corruptions, short streams, stuck directions, bad outcomes.
    pub failures: Vec<String>,
}

/// The byte stream of one direction: WebSocket binary frames of random sizes
/// (masked from the client, as RFC 6455 requires), payload bytes from the
/// offset-naming pattern. Sender and checker generate it from the same seed.
struct Stream {
    rng: StdRng,
    id: u64,
    dir: u64,
    masked: bool,
    payload_off: u64,
    frame: Vec<u8>,
    pos: usize,
    frames: u64,
}

impl Stream {
    fn new(seed: u64, id: u64, dir: u64) -> Self {
        let rng = StdRng::seed_from_u64(seed ^ id.wrapping_mul(0x9E37_79B9) ^ dir.wrapping_mul(0x85EB_CA6B) ^ 0x5EED);
        Self { rng, id, dir, masked: dir == 0, payload_off: 0, frame: Vec::new(), pos: 0, frames: 0 }
    }

    /// Generates the next frame into `self.frame`.
    fn next_frame(&mut self) {
        // Log-uniform sizes: as many tiny frames as large ones.
        let bits = self.rng.gen_range(0..=18u32);
        let len = self.rng.gen_range((1usize << bits).min(MAX_PAYLOAD)..=(2usize << bits).min(MAX_PAYLOAD)).max(1);
        self.frame.clear();
        self.frame.push(0x82);
        let mask_bit = if self.masked { 0x80 } else { 0 };
        match len {
            0..=125 => self.frame.push(mask_bit | len as u8),
            126..=65535 => {
                self.frame.push(mask_bit | 0x7e);
                self.frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.frame.push(mask_bit | 0x7f);
                self.frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let key: [u8; 4] = self.rng.r#gen();
        if self.masked {
            self.frame.extend_from_slice(&key);
        }
        let head = self.frame.len();
        self.frame.resize(head + len, 0);
        fill(self.id, self.dir, self.payload_off, &mut self.frame[head..]);
        if self.masked {
            for (i, b) in self.frame[head..].iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        self.payload_off += len as u64;
        self.pos = 0;
        self.frames += 1;
    }

    /// The next `n` bytes of the stream at most (at least one), without consuming them.
    fn peek(&mut self, n: usize) -> &[u8] {
        if self.pos == self.frame.len() {
            self.next_frame();
        }
        let end = (self.pos + n).min(self.frame.len());
        &self.frame[self.pos..end]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

/// One round of the torture through a fresh proxy worker.
pub fn round(splicer: &Splicer, plan: Plan) -> Report {
    let proxy = Proxy::start(splicer);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let abort = Arc::new(AtomicBool::new(false));
    let push_until = Instant::now() + plan.push;
    // Long after any legitimate end: the round gives up rather than hang.
    let give_up = push_until + Duration::from_mins(1);
    let mut pairs = Vec::new();
    for id in 0..plan.pairs as u64 {
        let q = quad(&listener).unwrap();
        let (done, outcome) = std::sync::mpsc::channel();
        let (in_kernel_tx, in_kernel) = std::sync::mpsc::channel();
        proxy.submit(Job { client: q.a, upstream: q.b, handshake: Handshake::None, done, cookies: Some(in_kernel_tx) });
        in_kernel.recv_timeout(Duration::from_secs(10)).expect("pair spliced");
        let mut ends = Vec::new();
        // Direction 0: client end → upstream end; 1: upstream end → client end.
        for (dir, (from, to)) in [(0u64, (&q.c, &q.u)), (1, (&q.u, &q.c))] {
            let (w, r) = (from.try_clone().unwrap(), to.try_clone().unwrap());
            // Half the senders with Nagle's algorithm on, as many clients and
            // upstreams run: its partly filled segments, merged on retransmission,
            // are what brings the receiver segments that overlap bytes it has.
            w.set_nodelay(StdRng::seed_from_u64(plan.seed ^ id ^ (dir << 16)).gen_bool(0.5)).unwrap();
            let seed = plan.seed;
            let abort_w = abort.clone();
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            let (wcpu, rcpu) = ((id + dir) as usize % cpus, (id + dir + 1) as usize % cpus);
            let writer = std::thread::spawn(move || {
                pin(wcpu);
                write_side(w, Stream::new(seed, id, dir), push_until, give_up, &abort_w)
            });
            let abort_r = abort.clone();
            let rng = StdRng::seed_from_u64(plan.seed ^ (id << 8) ^ (dir << 4) ^ 0xBEEF);
            let reader = std::thread::spawn(move || {
                pin(rcpu);
                read_side(r, Stream::new(seed, id, dir), rng, push_until, give_up, &abort_r)
            });
            ends.push((dir, writer, reader));
        }
        pairs.push((id, q.c, q.u, ends, outcome));
    }
    let mut report = Report { pairs: plan.pairs, min_pressure: u64::MAX, ..Report::default() };
    for (id, c, u, ends, outcome) in pairs {
        for (dir, writer, reader) in ends {
            let sent = writer.join().expect("writer thread");
            let read = reader.join().expect("reader thread");
            match (sent, read) {
                (Ok(sent), Ok((got, frames))) if got == sent => {
                    report.bytes += got;
                    report.frames += frames;
                }
                (Ok(sent), Ok((got, _))) => report.failures.push(format!("pair {id} dir {dir}: {got} of {sent} bytes")),
                (_, Err(e)) | (Err(e), _) => report.failures.push(format!("pair {id} dir {dir}: {e}")),
            }
        }
        drop((c, u));
        match outcome.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(o)) => account(&mut report, id, &o),
            Ok(Err(e)) => report.failures.push(format!("pair {id}: {e}")),
            Err(_) => report.failures.push(format!("pair {id}: no outcome 10 s after both ends closed")),
        }
    }
    if report.min_pressure == u64::MAX {
        report.min_pressure = 0;
    }
    drop(proxy);
    report
}

/// Pins the calling thread to one CPU: a sender and the peer that acknowledges it
/// on different CPUs reorder segments on loopback (each CPU has its own backlog),
/// which brings fast retransmissions and segments that overlap received bytes.
fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn account(report: &mut Report, id: u64, o: &SpliceOutcome) {
    report.pressure += o.pressure_runs;
    report.min_pressure = report.min_pressure.min(o.pressure_runs);
    report.trimmed += o.trimmed;
    if !o.reason.is_fin() {
        report.failures.push(format!("pair {id}: ended {:?}, not by both FINs", o.reason));
    }
}

/// Pushes frames until `until`, then FIN. Each write takes a random batch of the
/// stream (one byte to 256 KiB, so frames straddle writes as well as segments).
/// Returns the bytes written.
fn write_side(
    mut s: TcpStream,
    mut stream: Stream,
    until: Instant,
    give_up: Instant,
    abort: &AtomicBool,
) -> Result<u64, String> {
    s.set_write_timeout(Some(POLL)).unwrap();
    let mut rng = StdRng::seed_from_u64(stream.id << 32 ^ stream.dir ^ 0xBA7C);
    let mut batch = Vec::new();
    let mut at = 0;
    let mut sent = 0u64;
    loop {
        if at == batch.len() {
            // Only whole frames go out: the stream ends at a frame boundary.
            if Instant::now() >= until {
                break;
            }
            batch.clear();
            at = 0;
            // Log-uniform: as many writes of a few bytes as of a hundred KiB.
            let want = 1usize << rng.gen_range(0..=17u32);
            let want = rng.gen_range(want..=2 * want);
            while batch.len() < want {
                let chunk = stream.peek(want - batch.len());
                let n = chunk.len();
                batch.extend_from_slice(chunk);
                stream.consume(n);
            }
            while stream.pos != stream.frame.len() {
                let chunk = stream.peek(MAX_PAYLOAD + 14);
                let n = chunk.len();
                batch.extend_from_slice(chunk);
                stream.consume(n);
            }
        }
        if abort.load(Ordering::Relaxed) || Instant::now() >= give_up {
            return Err(format!("writer gave up after {sent} bytes"));
        }
        match s.write(&batch[at..]) {
            Ok(n) => {
                at += n;
                sent += n as u64;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => return Err(format!("write after {sent} bytes: {e}")),
        }
    }
    s.shutdown(std::net::Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
    Ok(sent)
}

/// Reads and checks until EOF, alternating reading and stalling while the senders
/// push. Returns the bytes and frames received.
fn read_side(
    mut s: TcpStream,
    mut expect: Stream,
    mut rng: StdRng,
    push_until: Instant,
    give_up: Instant,
    abort: &AtomicBool,
) -> Result<(u64, u64), String> {
    s.set_read_timeout(Some(POLL)).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    let mut starved = Duration::ZERO;
    let fail = |msg: String| {
        abort.store(true, Ordering::Relaxed);
        Err(msg)
    };
    loop {
        let pushing = Instant::now() < push_until;
        if pushing {
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..=700)));
        }
        let phase_end = if pushing { Instant::now() + Duration::from_millis(rng.gen_range(0..=2000)) } else { give_up };
        while Instant::now() < phase_end {
            if abort.load(Ordering::Relaxed) {
                return Err(format!("aborted after {got} bytes"));
            }
            let t = Instant::now();
            match s.read(&mut buf) {
                Ok(0) => return Ok((got, expect.frames)),
                Ok(n) => {
                    if let Some(at) = compare(&mut expect, &buf[..n]) {
                        return fail(format!("corrupted at stream offset {}", got + at as u64));
                    }
                    got += n as u64;
                    starved = Duration::ZERO;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    starved += t.elapsed();
                    if starved > STUCK {
                        return fail(format!("stuck: no byte for {starved:?} of reading, after {got} bytes"));
                    }
                }
                Err(e) => return fail(format!("read after {got} bytes: {e}")),
            }
        }
        if !pushing && Instant::now() >= give_up {
            return fail(format!("no EOF by the deadline, after {got} bytes"));
        }
    }
}

/// Checks `data` against the next bytes of `expect`; the index of the first wrong byte.
fn compare(expect: &mut Stream, mut data: &[u8]) -> Option<usize> {
    let mut done = 0;
    while !data.is_empty() {
        let want = expect.peek(data.len());
        let n = want.len();
        if want != &data[..n] {
            return Some(done + want.iter().zip(data).position(|(a, b)| a != b).unwrap_or(0));
        }
        expect.consume(n);
        data = &data[n..];
        done += n;
    }
    None
}
