//! The relay over real sockets with real WebSocket peers: frames of every kind, big
//! messages, early bytes, half-close, idle timeout and many connections at once.

mod utils;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use utils::{
    Gateway, RawUpstream, WsEcho, client_frame, read_exact, read_head, read_to_eof, server_frame, status_of,
    upgrade_request,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Relay mode under test: `WSGATE_TEST_SPLICE` lets CI run the same tests over the kernel
/// splice, which then takes every WebSocket right after its 101 (`--splice-after 0s`).
fn mode() -> String {
    std::env::var("WSGATE_TEST_SPLICE").unwrap_or_else(|_| "userspace".into())
}

/// `--splice MODE --splice-after 0s` for [`mode`].
fn relay_args() -> [&'static str; 4] {
    let mode = if mode() == "sockmap" { "sockmap" } else { "userspace" };
    ["--splice", mode, "--splice-after", "0s"]
}

#[test]
fn text_binary_ping_and_close_are_echoed_through_a_real_client() {
    let echo = WsEcho::start();
    let gw = Gateway::one_line(&[echo.addr], &relay_args());
    rt().block_on(async {
        let (mut ws, resp) = tokio_tungstenite::connect_async(gw.ws_url("/chat")).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
        ws.send(Message::Ping(b"p".to_vec())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong(b"p".to_vec()));
        ws.close(None).await.unwrap();
        if let Some(Ok(m)) = ws.next().await {
            assert!(m.is_close(), "unexpected {m:?}");
        }
    });
    let line = gw.wait_log("\"GET /chat HTTP/1.1\" 101 ");
    assert!(line.contains("ua=") && line.contains("close="), "{line}");
    let relayed_by = if mode() == "sockmap" { "mode=splice" } else { "mode=userspace" };
    assert!(line.contains(relayed_by), "expected {relayed_by}: {line}");
}

#[test]
fn fragmented_messages_are_reassembled_by_the_upstream_and_echoed() {
    let echo = WsEcho::start();
    let gw = Gateway::one_line(&[echo.addr], &relay_args());
    let mut c = gw.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (response, after_head) = read_head(&mut c);
    assert_eq!(status_of(&response), 101);
    assert!(after_head.is_empty());
    let mut frames = client_frame(false, 0x1, b"frag");
    frames.extend(client_frame(false, 0x0, b"men"));
    frames.extend(client_frame(true, 0x0, b"ted"));
    c.write_all(&frames).unwrap();
    let (fin, op, payload) = server_frame(&mut c);
    assert!(fin);
    assert_eq!(op, 0x1);
    assert_eq!(payload, b"fragmented");
}

#[test]
fn sixteen_mib_messages_round_trip() {
    let echo = WsEcho::start();
    let gw = Gateway::one_line(&[echo.addr], &relay_args());
    rt().block_on(async {
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(gw.ws_url("/big"), Some(utils::large_messages()), false)
                .await
                .unwrap();
        for round in 0..2u8 {
            let payload: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8 ^ round).collect();
            ws.send(Message::binary(payload.clone())).await.unwrap();
            let back = ws.next().await.unwrap().unwrap().into_data();
            assert_eq!(back.len(), payload.len());
            assert!(back[..] == payload[..], "16 MiB payload corrupted");
        }
    });
}

#[test]
fn bytes_sent_by_the_upstream_right_after_its_101_arrive() {
    let up = RawUpstream::switching(b"\x81\x05early");
    let gw = Gateway::one_line(&[up.addr], &relay_args());
    let mut c = gw.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (response, mut after_head) = read_head(&mut c);
    assert_eq!(status_of(&response), 101);
    let need = 7 - after_head.len();
    after_head.extend(read_exact(&mut c, need));
    assert_eq!(after_head, b"\x81\x05early");
}

#[test]
fn bytes_sent_by_the_client_with_its_request_arrive() {
    let up = RawUpstream::switching(b"");
    let gw = Gateway::one_line(&[up.addr], &relay_args());
    let mut c = gw.connect();
    let mut req = upgrade_request("/", "").into_bytes();
    req.extend_from_slice(b"early-client-bytes");
    c.write_all(&req).unwrap();
    let (response, mut after_head) = read_head(&mut c);
    assert_eq!(status_of(&response), 101);
    let need = 18 - after_head.len();
    after_head.extend(read_exact(&mut c, need));
    assert_eq!(after_head, b"early-client-bytes", "the raw echo upstream returns what followed the head");
}

#[test]
fn client_half_close_keeps_the_upstream_direction_flowing() {
    let up = RawUpstream::start(|mut s| {
        let _ = read_head(&mut s);
        s.write_all(SWITCHING).unwrap();
        let got = read_to_eof(&mut s); // client FIN arrives as EOF
        assert_eq!(got, b"last words");
        for _ in 0..3 {
            s.write_all(b"after-fin ").unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        // Drop: FIN towards the client.
    });
    let gw = Gateway::one_line(&[up.addr], &relay_args());
    let mut c = gw.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (response, after_head) = read_head(&mut c);
    assert_eq!(status_of(&response), 101);
    c.write_all(b"last words").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = after_head;
    got.extend(read_to_eof(&mut c));
    assert_eq!(got, b"after-fin after-fin after-fin ");
    gw.wait_log("close=client_fin");
}

#[test]
fn upstream_half_close_keeps_the_client_direction_flowing() {
    let up = RawUpstream::start(|mut s| {
        let _ = read_head(&mut s);
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nbye")
            .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = read_to_eof(&mut s);
        assert_eq!(got, b"still talking");
    });
    let gw = Gateway::one_line(&[up.addr], &relay_args());
    let mut c = gw.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (response, after_head) = read_head(&mut c);
    assert_eq!(status_of(&response), 101);
    let mut got = after_head;
    got.extend(read_to_eof(&mut c));
    assert_eq!(got, b"bye", "upstream FIN must reach the client as EOF");
    c.write_all(b"still talking").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    gw.wait_log("close=upstream_fin");
}

/// What [`closing_upstream`] read: the client's Close, and all that came after it.
type UpstreamRead = std::sync::mpsc::Receiver<(Vec<u8>, Vec<u8>)>;

/// An upstream that switches, answers the client's Close (status 1000) with its own,
/// sends FIN then if `fin`, and reports the Close it read and all it read after it.
fn closing_upstream(fin: bool) -> (RawUpstream, UpstreamRead) {
    let (got_tx, got) = std::sync::mpsc::channel();
    let up = RawUpstream::start(move |mut s| {
        let _ = read_head(&mut s);
        s.write_all(SWITCHING).unwrap();
        let close = read_exact(&mut s, 8);
        s.write_all(&[0x88, 0x02, 0x03, 0xe8]).unwrap();
        if fin {
            s.shutdown(Shutdown::Write).unwrap();
        }
        let _ = got_tx.send((close, read_to_eof(&mut s)));
    });
    (up, got)
}

/// A client through `gw` that has done the closing handshake (its Close answered).
fn closed_client(gw: &Gateway) -> std::net::TcpStream {
    let mut c = gw.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (response, after_head) = read_head(&mut c);
    assert_eq!(status_of(&response), 101);
    assert!(after_head.is_empty());
    c.write_all(&client_frame(true, 0x8, &[0x03, 0xe8])).unwrap();
    assert_eq!(server_frame(&mut c), (true, 0x8, vec![0x03, 0xe8]));
    c
}

/// What [`closing_upstream`] read: the client's Close (masked), then `after`.
fn assert_upstream_got(got: &UpstreamRead, after: &[u8]) {
    let (close, rest) = got.recv_timeout(Duration::from_secs(15)).expect("the upstream's end");
    assert_eq!(close.get(..2), Some(&[0x88, 0x82][..]), "the client's Close reached the upstream");
    assert_eq!(rest, after, "what the upstream read after the client's Close, up to its FIN");
}

/// After both Close frames (RFC 6455 §7.1.1), the upstream's FIN ends the pair: the
/// client gets its FIN and the connection is over (logged) without waiting for the
/// client's own FIN, which may come late or never. Before the closing handshake a FIN
/// is a half-close (the test above). The userspace relay: a spliced pair's close is
/// the kernel's.
#[test]
fn after_the_closing_handshake_the_upstream_fin_ends_the_pair_at_once() {
    let (up, got) = closing_upstream(true);
    let gw = Gateway::one_line(&[up.addr], &["--splice", "userspace"]);
    let mut c = closed_client(&gw);
    let mut rest = [0u8; 16];
    assert_eq!(c.read(&mut rest).expect("FIN, not a reset"), 0, "the client gets the upstream's FIN");
    // The client's socket stays open, its FIN unsent: the pair is over all the same.
    gw.wait_log("close=upstream_fin");
    assert_upstream_got(&got, b"");
    drop(c);
}

/// A pair that finished its closing handshake but whose peers have not closed TCP yet
/// gets no second Close at its turn in the drain (a peer may receive nothing after the
/// Close it was relayed): both sides get only their FIN.
#[test]
fn the_drain_sends_no_close_after_the_closing_handshake() {
    let (up, got) = closing_upstream(false);
    let gw = Gateway::one_line(&[up.addr], &["--splice", "userspace", "--drain-window", "1s"]);
    let mut c = closed_client(&gw);
    gw.terminate();
    assert_eq!(read_to_eof(&mut c), b"", "no Close 1001 after the upstream's Close");
    assert_upstream_got(&got, b"");
    gw.wait_log("close=drain");
}

/// The 101 of the raw upstreams here.
const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

/// A raw upstream that answers 101 and echoes bytes until the relay closes its side,
/// then sets the returned flag.
fn raw_echo_upstream() -> (RawUpstream, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let closed_upstream = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = closed_upstream.clone();
    let up = RawUpstream::start(move |mut s| {
        let _ = read_head(&mut s);
        s.write_all(SWITCHING).unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            let _ = s.write_all(&buf[..n]);
        }
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    (up, closed_upstream)
}

/// With a 1 s idle timeout: a byte echoed after 600 ms resets the timer, and the relay
/// then closes the client within [0.8 s, 4 s), logging `close=idle_timeout`.
fn assert_idle_close(gw: &Gateway, c: &mut std::net::TcpStream) {
    std::thread::sleep(Duration::from_millis(600));
    c.write_all(b"ping").unwrap();
    assert_eq!(read_exact(c, 4), b"ping");
    let t0 = Instant::now();
    let after = read_to_eof(c);
    let waited = t0.elapsed();
    assert!(after.is_empty());
    assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(4), "closed after {waited:?}");
    gw.wait_log("close=idle_timeout");
}

#[test]
fn idle_timeout_closes_both_sides() {
    let (up, closed_upstream) = raw_echo_upstream();
    let gw = Gateway::one_line(&[up.addr], &["--splice", &mode(), "--idle-timeout", "1s"]);
    let mut c = gw.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let _ = read_head(&mut c);
    assert_idle_close(&gw, &mut c);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !closed_upstream.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "upstream side was not closed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A userspace relay runs in a task of its own, not in its connection's; its idle clock
/// runs there.
#[test]
fn a_relay_that_moved_to_its_own_task_still_times_out() {
    let (up, _) = raw_echo_upstream();
    let (gw, mut c) = upgraded_in_userspace(up.addr, &["--idle-timeout", "1s"]);
    // Round trips through the moved relay.
    for i in 0..10u8 {
        c.write_all(&[b'p', i]).unwrap();
        assert_eq!(read_exact(&mut c, 2), [b'p', i]);
    }
    wait_moved(&gw);
    assert_idle_close(&gw, &mut c);
}

/// ... and the worker's events reach it there: a quiet relay in its own task gets its
/// Close 1001 in the drain.
#[test]
fn a_relay_that_moved_to_its_own_task_still_hears_the_drain() {
    let echo = WsEcho::start();
    let (gw, mut c) = upgraded_in_userspace(echo.addr, &["--drain-window", "1s"]);
    for i in 0..10u8 {
        c.write_all(&client_frame(true, 2, &[i])).unwrap();
        assert_eq!(server_frame(&mut c), (true, 2, vec![i]));
    }
    wait_moved(&gw);
    // Quiet now: only the drain's event can wake the relay.
    std::thread::sleep(Duration::from_millis(300));
    gw.terminate();
    assert_going_away(&gw, &mut c);
}

/// The move may come in the middle of a frame: here the upstream's first frame begins
/// in the segment of its 101, which goes to the client with the 101, and the relay
/// moves to its own task before the rest comes. That relay follows the frames from
/// where the 101's read left them, so the drain's Close 1001 comes after that frame,
/// whole (fails with the frames not carried over the move: the Close comes inside the
/// frame).
#[test]
fn a_relay_that_moved_mid_frame_closes_after_the_frame() {
    let mut frame = vec![0x82, 100];
    frame.extend_from_slice(&[7; 100]);
    let (first, second) = (frame[..50].to_vec(), frame[50..].to_vec());
    let (go_on, told) = std::sync::mpsc::channel::<()>();
    let told = std::sync::Mutex::new(told);
    let (head_and_first, rest) = ([SWITCHING, &first].concat(), second.clone());
    let up = RawUpstream::start(move |mut s| {
        let _ = read_head(&mut s);
        s.write_all(&head_and_first).unwrap();
        if told.lock().unwrap().recv().is_ok() {
            s.write_all(&rest).unwrap();
        }
        let _ = std::io::copy(&mut s, &mut std::io::sink());
    });
    let gw = Gateway::builder()
        .one_line(&[up.addr])
        .args(&["--splice", "userspace", "--drain-window", "1s"])
        .log_level("warn,wsgate::conn::relay_choice=debug")
        .start();
    let mut c = gw.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (head, mut got) = read_head(&mut c);
    assert_eq!(status_of(&head), 101, "{head}");
    got.extend(read_exact(&mut c, first.len() - got.len()));
    assert_eq!(got, first, "the frame's first half, with the 101");
    wait_moved(&gw);
    // The relay's turn comes within the 1 s window; it waits for the frame to end (up
    // to drain.close_timeout, 5 s) before its Close goes to the client.
    gw.terminate();
    std::thread::sleep(Duration::from_millis(1500));
    go_on.send(()).unwrap();
    assert_eq!(read_exact(&mut c, second.len()), second, "the rest of the frame, before the Close");
    assert_going_away(&gw, &mut c);
}

/// A relay that moved to its own task loses nothing: a client that streams frames
/// without waiting for their echo gets every byte back in order, the relay moved once
/// (before the stream), and the access log counts what it moved.
#[test]
fn a_relay_that_moved_to_its_own_task_keeps_every_byte_of_a_stream() {
    let (up, _) = raw_echo_upstream();
    let (gw, mut c) = upgraded_in_userspace(up.addr, &[]);
    // 400 bursts of 1 to 40 frames of 1 to 1000 bytes each, 2 ms apart.
    let mut stream = Vec::new();
    let mut bursts = Vec::new();
    for burst in 0..400usize {
        let start = stream.len();
        for frame in 0..=(burst * 7) % 40 {
            let payload: Vec<u8> =
                (0..=(burst * 31 + frame * 17) % 1000).map(|i| (i + burst + frame).to_le_bytes()[0]).collect();
            stream.extend_from_slice(&client_frame(true, 2, &payload));
        }
        bursts.push(start..stream.len());
    }
    let mut writer = c.try_clone().unwrap();
    let sent = stream.clone();
    let sending = std::thread::spawn(move || {
        for burst in bursts {
            writer.write_all(&sent[burst]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let echoed = read_exact(&mut c, stream.len());
    sending.join().unwrap();
    assert!(echoed == stream, "the echo differs from what was sent");
    let moved = gw.stderr_times("relay: moved to a task of its own");
    assert_eq!(moved.len(), 1, "{:?}", gw.stderr());
    c.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut c).is_empty(), "bytes after the echo");
    let line = gw.wait_log("\"GET / HTTP/1.1\" 101 ");
    let n = stream.len();
    assert!(line.contains(&format!(" in={n} out={} ", n + SWITCHING.len())), "{line}");
}

/// A gateway relaying in userspace (with `args`) to `upstream`, which says at debug level
/// when a relay moves to a task of its own, and a client whose upgrade it answered 101.
fn upgraded_in_userspace(upstream: std::net::SocketAddr, args: &[&str]) -> (Gateway, std::net::TcpStream) {
    let gw = Gateway::builder()
        .one_line(&[upstream])
        .args(&[&["--splice", "userspace"], args].concat())
        .log_level("warn,wsgate::conn::relay_choice=debug")
        .start();
    let mut c = gw.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (head, rest) = read_head(&mut c);
    assert_eq!((status_of(&head), rest.len()), (101, 0), "{head}");
    (gw, c)
}

/// The next frame `c` reads is a Close 1001, and `gw` logs `close=drain`.
fn assert_going_away(gw: &Gateway, c: &mut std::net::TcpStream) {
    let (fin, opcode, payload) = server_frame(c);
    assert_eq!((fin, opcode), (true, 8), "a Close frame");
    assert_eq!(payload[..2], 1001u16.to_be_bytes(), "going away");
    gw.wait_log("close=drain");
}

/// Waits for `gw`'s one relay to say it moved to a task of its own.
fn wait_moved(gw: &Gateway) {
    gw.wait_stderr("relay: moved to a task of its own", Duration::from_secs(5));
}

#[test]
fn upstream_reset_resets_the_client() {
    let up = RawUpstream::start(|mut s| {
        let _ = read_head(&mut s);
        s.write_all(SWITCHING).unwrap();
        let mut b = [0u8; 4];
        let _ = s.read(&mut b);
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        // Drop with linger 0: RST.
    });
    let gw = Gateway::one_line(&[up.addr], &relay_args());
    let mut c = gw.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let _ = read_head(&mut c);
    c.write_all(b"boom").unwrap();
    let mut buf = [0u8; 16];
    let r = c.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset) || matches!(r, Ok(0)),
        "client must see the close: {r:?}"
    );
    gw.wait_log("close=upstream_reset");
}

#[test]
fn a_thousand_concurrent_connections_echo_correctly() {
    let echo = WsEcho::start();
    let gw = Gateway::one_line(&[echo.addr], &["--splice", &mode(), "--access-log", "off"]);
    let url = gw.ws_url("/many");
    rt().block_on(async {
        let mut tasks = Vec::new();
        for i in 0..1000u32 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                for round in 0..3u32 {
                    let msg = format!("conn {i} round {round}");
                    ws.send(Message::text(msg.clone())).await.unwrap();
                    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(msg));
                }
                ws
            }));
        }
        let mut held = Vec::new();
        for t in tasks {
            held.push(tokio::time::timeout(Duration::from_mins(1), t).await.expect("bounded").unwrap());
        }
        // All 1000 are open at once here; each still echoes.
        for (i, ws) in held.iter_mut().enumerate() {
            ws.send(Message::binary(i.to_le_bytes().to_vec())).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap().into_data(), i.to_le_bytes().to_vec());
        }
    });
}

#[test]
fn a_reader_that_stops_reading_stops_the_sender() {
    // The upstream reads nothing until told to; the client pushes until its writes block.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let (got_tx, got_rx) = std::sync::mpsc::channel::<(u64, u64)>();
    let up = RawUpstream::start(move |mut s| {
        let _ = read_head(&mut s);
        s.write_all(SWITCHING).unwrap();
        go_rx.lock().unwrap().recv().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (mut total, mut sum, mut buf) = (0u64, 0u64, vec![0u8; 1 << 16]);
        while let Ok(n @ 1..) = s.read(&mut buf) {
            for (i, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, ((total + i as u64) % 251) as u8, "byte {} out of order", total + i as u64);
            }
            total += n as u64;
            sum = sum.wrapping_add(buf[..n].iter().map(|&b| u64::from(b)).sum::<u64>());
        }
        got_tx.send((total, sum)).unwrap();
    });
    let gw = Gateway::one_line(&[up.addr], &relay_args());
    let mut c = gw.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut c).0), 101);
    c.set_write_timeout(Some(Duration::from_millis(1500))).unwrap();
    let (mut sent, mut sum) = (0u64, 0u64);
    let limit = 512u64 << 20;
    while sent < limit {
        let chunk: Vec<u8> = (0..1u64 << 16).map(|i| ((sent + i) % 251) as u8).collect();
        match c.write(&chunk) {
            Ok(n) => {
                sum = sum.wrapping_add(chunk[..n].iter().map(|&b| u64::from(b)).sum::<u64>());
                sent += n as u64;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => panic!("write failed: {e}"),
        }
    }
    // Socket buffers on both hops plus the proxy's bounded buffering: far below what was offered.
    assert!(sent < 96 << 20, "sender was not stopped: {} MiB accepted", sent >> 20);
    go_tx.send(()).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (total, got_sum) = got_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!((total, got_sum), (sent, sum), "every byte arrives, in order, after the reader resumes");
    eprintln!("slow reader ({}): sender stopped after {} KiB", mode(), sent >> 10);
}
