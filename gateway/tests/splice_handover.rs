//! Randomised handover torture: thousands of connections where client and
//! upstream send at random moments around the 101 (in the same segment as the
//! request head or the 101, or later), with random sizes. Every byte of both
//! directions is checked against its stream position; the kernel's byte
//! counts must match exactly, and no map entry may survive.

mod splice_util;

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use splice_util::{Handshake, Job, Proxy, check, fill, splicer_or_skip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsgate::splice::SpliceOutcome;

/// Connections per run (`SPLICE_TORTURE_CONNS` overrides, for debugging).
const CONNS: u64 = 3000;
const PARALLEL: usize = 96;
const HEAD: &[u8] = b"GET /chat HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

/// What one side sends: stream length, whether its first bytes share a write
/// with its head, and the chunking.
struct Plan {
    len: u64,
    with_head: u64,
    chunks: Vec<(u64, u64)>, // (size, pause in µs before it)
}

fn plan(rng: &mut StdRng) -> Plan {
    let len = match rng.gen_range(0..10) {
        0..=1 => 0,
        2..=5 => rng.gen_range(1..200),
        6..=8 => rng.gen_range(200..16_384),
        _ => rng.gen_range(16_384..262_144),
    };
    let with_head = if rng.gen_bool(0.5) { rng.gen_range(0..=len.min(4096)) } else { 0 };
    let mut chunks = Vec::new();
    let mut left = len - with_head;
    while left > 0 {
        let n = rng.gen_range(1..=left.min(32_768));
        let pause = match rng.gen_range(0..4) {
            0 => 0,
            1 => rng.gen_range(0..50),
            2 => rng.gen_range(0..500),
            _ => rng.gen_range(0..3000),
        };
        chunks.push((n, pause));
        left -= n;
    }
    Plan { len, with_head, chunks }
}

async fn send_side(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    dir: u64,
    head: &[u8],
    p: &Plan,
) -> std::io::Result<()> {
    let mut first = head.to_vec();
    let at = first.len();
    first.resize(at + p.with_head as usize, 0);
    fill(id, dir, 0, &mut first[at..]);
    w.write_all(&first).await?;
    let mut off = p.with_head;
    let mut buf = Vec::new();
    for &(n, pause) in &p.chunks {
        if pause > 0 {
            tokio::time::sleep(Duration::from_micros(pause)).await;
        } else {
            tokio::task::yield_now().await;
        }
        buf.resize(n as usize, 0);
        fill(id, dir, off, &mut buf);
        w.write_all(&buf).await?;
        off += n;
    }
    Ok(())
}

/// Reads to EOF, checking `prefix` then the stream; returns what arrived.
async fn recv_side(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    id: u64,
    dir: u64,
    prefix: &[u8],
    len: u64,
    mut got_prefix: Option<tokio::sync::oneshot::Sender<()>>,
    progress: &std::sync::atomic::AtomicU64,
) -> Result<(), String> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let mut off = 0u64;
    loop {
        let n = r.read(&mut buf).await.map_err(|e| format!("conn {id} dir {dir}: {e}"))?;
        if n == 0 {
            break;
        }
        let mut data = &buf[..n];
        if got.len() < prefix.len() {
            let k = (prefix.len() - got.len()).min(data.len());
            got.extend_from_slice(&data[..k]);
            data = &data[k..];
            if !prefix.starts_with(&got) {
                return Err(format!("conn {id} dir {dir}: head corrupted: {:?}", String::from_utf8_lossy(&got)));
            }
        }
        if got.len() == prefix.len()
            && let Some(tx) = got_prefix.take()
        {
            let _ = tx.send(());
        }
        if let Some(at) = check(id, dir, off, data) {
            return Err(format!("conn {id} dir {dir}: wrong byte at stream offset {at}"));
        }
        off += data.len() as u64;
        progress.store(off, std::sync::atomic::Ordering::Relaxed);
    }
    if got.len() != prefix.len() || off != len {
        return Err(format!(
            "conn {id} dir {dir}: got {} head + {off} bytes, expected {} + {len}",
            got.len(),
            prefix.len()
        ));
    }
    Ok(())
}

async fn upstream_side(
    upstream: TcpStream,
    id: u64,
    up: u64,
    down: Plan,
    progress: Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), String> {
    let (mut r, mut w) = upstream.into_split();
    // Read the request head; bytes after it are client stream bytes.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = r.read(&mut byte).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("conn {id}: upstream saw EOF in the head"));
        }
        head.push(byte[0]);
    }
    if head != HEAD {
        return Err(format!("conn {id}: upstream got a wrong head"));
    }
    // The upstream closes once it has everything from the client (whose FIN
    // comes after the 101, so after the splice).
    let (sent, received) =
        tokio::join!(send_side(&mut w, id, 1, SWITCH, &down), recv_side(&mut r, id, 0, b"", up, None, &progress));
    sent.map_err(|e| format!("conn {id}: upstream send: {e}"))?;
    received?;
    w.shutdown().await.map_err(|e| format!("conn {id}: upstream shutdown: {e}"))
}

async fn client_side(
    client: TcpStream,
    id: u64,
    up: Plan,
    down: u64,
    progress: Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), String> {
    let (mut r, mut w) = client.into_split();
    // A WebSocket client closes only after its handshake completed.
    let (tx, switched) = tokio::sync::oneshot::channel();
    let writing = async {
        send_side(&mut w, id, 0, HEAD, &up).await.map_err(|e| format!("conn {id}: client send: {e}"))?;
        switched.await.map_err(|_| format!("conn {id}: no 101"))?;
        w.shutdown().await.map_err(|e| format!("conn {id}: client shutdown: {e}"))
    };
    let (written, received) = tokio::join!(writing, recv_side(&mut r, id, 1, SWITCH, down, Some(tx), &progress));
    written?;
    received
}

#[test]
fn handover_torture_random_timing_both_directions() {
    let Some(splicer) = splicer_or_skip("handover_torture", 4096, 1 << 20) else { return };
    let proxy = Arc::new(Proxy::start(&splicer));
    let ends = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let conns = std::env::var("SPLICE_TORTURE_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(CONNS);
    let started = std::time::Instant::now();
    let failures: Vec<String> = ends.block_on(async {
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let pairing = Arc::new(tokio::sync::Mutex::new(()));
        let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut tasks = Vec::new();
        for id in 0..conns {
            let permit = gate.clone().acquire_owned().await.unwrap();
            let (listener, pairing, proxy) = (listener.clone(), pairing.clone(), proxy.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let mut rng = StdRng::seed_from_u64(id);
                let (up, down) = (plan(&mut rng), plan(&mut rng));
                let addr = listener.local_addr().unwrap();
                let (client, at_proxy_client, at_proxy_upstream, upstream) = {
                    let _pairing = pairing.lock().await;
                    let client = TcpStream::connect(addr).await.unwrap();
                    let (near, _) = listener.accept().await.unwrap();
                    let far = TcpStream::connect(addr).await.unwrap();
                    let (upstream, _) = listener.accept().await.unwrap();
                    (client, near, far, upstream)
                };
                let (done, outcome) = std_mpsc::channel();
                proxy.submit(Job {
                    client: at_proxy_client.into_std().unwrap(),
                    upstream: at_proxy_upstream.into_std().unwrap(),
                    handshake: Handshake::Http,
                    done,
                    cookies: None,
                });
                let (up_len, down_len) = (up.len, down.len);
                let (at_client, at_upstream) = (Arc::new(std::sync::atomic::AtomicU64::new(0)), Arc::new(std::sync::atomic::AtomicU64::new(0)));
                let (up_head, down_head) = (up.with_head, down.with_head);
                let ends = async {
                    tokio::join!(client_side(client, id, up, down_len, at_client.clone()), upstream_side(upstream, id, up_len, down, at_upstream.clone()))
                };
                let ends = tokio::time::timeout(Duration::from_secs(30), ends).await;
                let o = tokio::task::spawn_blocking(move || outcome.recv_timeout(Duration::from_secs(10))).await.unwrap();
                match ends {
                    Err(_) => {
                        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                        return Err(format!(
                            "conn {id}: stuck: upstream got {}/{up_len} (first {up_head} with the head), client got {}/{down_len} (first {down_head} with the 101); proxy: {o:?}",
                            load(&at_upstream),
                            load(&at_client)
                        ));
                    }
                    Ok((Err(e), _) | (_, Err(e))) => return Err(format!("{e}; proxy: {o:?}")),
                    Ok(_) => {}
                }
                let o: SpliceOutcome = o.map_err(|e| format!("conn {id}: no outcome: {e}"))??;
                if !o.reason.is_fin() || o.to_upstream != up_len || o.to_client != SWITCH.len() as u64 + down_len {
                    return Err(format!("conn {id}: outcome {o:?}, expected {up_len} up and {} down", SWITCH.len() as u64 + down_len));
                }
                Ok::<(), String>(())
            }));
        }
        let mut failures = Vec::new();
        for t in tasks {
            if let Err(e) = t.await.unwrap() {
                failures.push(e);
            }
        }
        failures
    });
    let counts = splicer.counts();
    eprintln!(
        "handover torture: {conns} connections in {:?}; counts {counts:?}; failures {}",
        started.elapsed(),
        failures.len()
    );
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert_eq!(counts.spliced, conns);
    assert!(splice_util::eventually(Duration::from_secs(3), || splicer.sockhash_entries().unwrap() == 0
        && splicer.link_entries().unwrap() == 0));
}
