//! The splice through the real `wsgate` binary: `--splice sockmap` relays a
//! real WebSocket session in the kernel; a forced self-test failure or missing
//! capabilities make `auto` fall back to the userspace relay (which still
//! works) with one warning, and make `sockmap` refuse to start. With
//! `--splice-after`, a connection is relayed in userspace first and handed to
//! the kernel mid-stream: every byte still arrives once, in order; a connection
//! that ends before then is never spliced.

mod splice_util;
mod utils;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use utils::{Gateway, GatewayBuilder, WsEcho};
use wsgate::splice::FORCE_FAIL_ENV;

/// Splices at the 101 (the per-worker learning of `splice_after` is tested apart).
const SPLICE_AT_101: &[&str] = &["--workers", "2", "--splice-after", "0s"];

/// wsgate in front of `upstream` with `--splice mode`, its diagnostics at `info`.
fn wsgate(upstream: SocketAddr, mode: &str) -> GatewayBuilder {
    Gateway::builder().one_line(&[upstream]).args(&["--splice", mode]).log_level("info")
}

/// A WebSocket session of messages of growing sizes, each echoed intact.
fn echo_session(gw: &Gateway) {
    echo_messages(gw, "/chat", 200);
}

/// A WebSocket session on `path` of `messages` messages, each echoed intact.
fn echo_messages(gw: &Gateway, path: &str, messages: usize) {
    let url = format!("ws://{}{path}", gw.addr);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..messages {
            let len = (i * 331) % 70_000;
            let mut payload = vec![0u8; len];
            splice_util::fill(i as u64, 3, 0, &mut payload);
            ws.send(Message::binary(payload.clone())).await.unwrap();
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(got) => assert_eq!(got, payload, "message {i} corrupted"),
                other => panic!("unexpected {other:?}"),
            }
        }
        ws.close(None).await.unwrap();
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    });
}

#[test]
fn sockmap_mode_relays_a_websocket_session_in_the_kernel() {
    if !can_splice("sockmap_mode_e2e") {
        return;
    }
    let echo = WsEcho::start();
    let gw = wsgate(echo.addr, "sockmap").args(SPLICE_AT_101).start();
    echo_session(&gw);
    let line = gw.wait_log("\"GET /chat HTTP/1.1\" 101 ");
    assert!(line.contains("mode=splice"), "not spliced: {line}");
}

#[test]
fn auto_falls_back_to_userspace_when_the_self_test_fails() {
    if !can_splice("auto_fallback_self_test_e2e") {
        return;
    }
    let echo = WsEcho::start();
    let gw = wsgate(echo.addr, "auto").args(SPLICE_AT_101).env(FORCE_FAIL_ENV, "1").start();
    echo_session(&gw);
    let line = gw.wait_log("\"GET /chat HTTP/1.1\" 101 ");
    assert!(line.contains("mode=userspace"), "{line}");
    let err = gw.stderr().join("\n");
    assert_eq!(err.matches("falling back to the userspace relay").count(), 1, "one warning expected:\n{err}");
    assert!(err.contains(FORCE_FAIL_ENV), "{err}");
}

#[test]
fn auto_falls_back_to_userspace_without_capabilities() {
    if !can_splice("auto_fallback_nocap_e2e") {
        return;
    }
    let echo = WsEcho::start();
    let gw = wsgate(echo.addr, "auto").args(SPLICE_AT_101).unprivileged().start();
    echo_session(&gw);
    let line = gw.wait_log("\"GET /chat HTTP/1.1\" 101 ");
    assert!(line.contains("mode=userspace"), "{line}");
    let err = gw.stderr().join("\n");
    assert!(err.contains("falling back") && err.contains("CAP_BPF"), "{err}");
}

#[test]
fn sockmap_mode_refuses_to_start_when_the_splice_is_unavailable() {
    if !can_splice("sockmap_refuses_e2e") {
        return;
    }
    let echo = WsEcho::start();
    for (force_fail, unprivileged) in [(true, false), (false, true)] {
        let mut builder = wsgate(echo.addr, "sockmap").args(SPLICE_AT_101);
        if force_fail {
            builder = builder.env(FORCE_FAIL_ENV, "1");
        }
        if unprivileged {
            builder = builder.unprivileged();
        }
        let Err(exited) = builder.start_or_exit() else {
            panic!("wsgate listened although the splice is unavailable");
        };
        assert!(!exited.status.success());
        let err = exited.stderr.join("\n");
        assert!(err.contains("splice = \"sockmap\"") && err.contains("unavailable"), "unclear refusal:\n{err}");
    }
}

/// Streams `total` patterned bytes (`id`, direction `dir`) in chunks of varied sizes
/// with short pauses, so the stream crosses the handover, then sends FIN.
fn stream_out(mut to: TcpStream, id: u64, dir: u64, total: usize) {
    let mut sent = 0usize;
    let mut i = 0usize;
    while sent < total {
        let len = (1 + (i * 7919) % 12_000).min(total - sent);
        let mut chunk = vec![0u8; len];
        splice_util::fill(id, dir, sent as u64, &mut chunk);
        to.write_all(&chunk).unwrap();
        sent += len;
        i += 1;
        if i.is_multiple_of(8) {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    to.shutdown(Shutdown::Write).unwrap();
}

/// Reads to EOF and checks every byte against the pattern from offset `start`;
/// returns the offset reached.
fn stream_in(mut from: TcpStream, id: u64, dir: u64, start: usize) -> usize {
    from.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = start;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).expect("read");
        if n == 0 {
            return got;
        }
        assert_eq!(
            splice_util::check(id, dir, got as u64, &buf[..n]),
            None,
            "byte out of order or corrupted near {got}"
        );
        got += n;
    }
}

const UP_BYTES: usize = 3_000_000;
const DOWN_BYTES: usize = 5_000_000;

const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// An upstream that answers 101, then streams `DOWN_BYTES` and checks what it
/// receives; on `/short/…` it answers 101 and closes when the client does.
fn streaming_upstream(received: mpsc::Sender<usize>) -> utils::RawUpstream {
    let received = Mutex::new(received);
    utils::RawUpstream::start(move |mut s| {
        let (head, early) = utils::read_head(&mut s);
        assert!(early.is_empty());
        s.write_all(SWITCHING).unwrap();
        if head.contains("GET /short/") {
            let _ = utils::read_to_eof(&mut s);
            return;
        }
        let out = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || stream_out(out, 41, 2, DOWN_BYTES));
        let n = stream_in(s, 41, 1, 0);
        writer.join().unwrap();
        let _ = received.lock().unwrap().send(n);
    })
}

/// A WebSocket that is upgraded, sends a close frame and closes (`/short/{i}`); returns
/// its access-log line.
fn short_session(gw: &Gateway, i: usize) -> String {
    short_session_sending(gw, i, true)
}

/// [`short_session`], with or without the client's close frame.
fn short_session_sending(gw: &Gateway, i: usize, close_frame: bool) -> String {
    let mut c = TcpStream::connect(gw.addr).unwrap();
    c.write_all(utils::upgrade_request(&format!("/short/{i}"), "").as_bytes()).unwrap();
    let (head, _) = utils::read_head(&mut c);
    assert_eq!(utils::status_of(&head), 101);
    if close_frame {
        c.write_all(&utils::client_frame(true, 0x8, b"")).unwrap();
    }
    c.shutdown(Shutdown::Write).unwrap();
    let _ = utils::read_to_eof(&mut c);
    gw.wait_log(&format!("\"GET /short/{i} HTTP/1.1\" 101 "))
}

/// A streaming upstream (reporting what it received to `received`) behind one wsgate
/// worker (the choice is per worker) that skips splicing connections shorter than 150 ms.
fn learning_pair(received: mpsc::Sender<usize>) -> (utils::RawUpstream, Gateway) {
    let up = streaming_upstream(received);
    let gw = wsgate(up.addr, "sockmap").args(&["--workers", "1", "--splice-after", "150ms"]).start();
    (up, gw)
}

/// Whether the kernel splice works here; if not, the test says so loudly and passes.
fn can_splice(test: &str) -> bool {
    splice_util::splicer_or_skip(test, 16, 1 << 20).is_some()
}

#[test]
fn auto_stops_splicing_when_connections_are_short() {
    if !can_splice("short_connections_e2e") {
        return;
    }
    let (tx, _rx) = mpsc::channel();
    let (_up, gw) = learning_pair(tx);
    let lines: Vec<String> = (0..40).map(|i| short_session(&gw, i)).collect();
    assert!(lines[0].contains("mode=splice"), "a fresh worker splices at the 101: {}", lines[0]);
    let last = lines.last().unwrap();
    assert!(last.contains("mode=userspace"), "short connections are still spliced: {last}");
    // About 11 in a row are enough (the unit test pins it); a loaded machine may make a
    // few of them last longer than 150 ms.
    let switched = lines.iter().position(|l| l.contains("mode=userspace")).unwrap();
    assert!(switched >= 8, "switched after only {switched} short connections:\n{lines:#?}");
}

#[test]
fn clients_that_give_up_without_a_byte_do_not_make_auto_defer() {
    if !can_splice("silent_connections_e2e") {
        return;
    }
    let (tx, _rx) = mpsc::channel();
    let (_up, gw) = learning_pair(tx);
    // Like clients timing out under overload: upgraded, then closed without a byte.
    let lines: Vec<String> = (0..30).map(|i| short_session_sending(&gw, i, false)).collect();
    assert!(lines.iter().all(|l| l.contains("mode=splice")), "silent connections made auto defer:\n{lines:#?}");
}

#[test]
fn a_connection_is_handed_to_the_kernel_mid_stream_without_losing_a_byte() {
    if !can_splice("mid_stream_handover_e2e") {
        return;
    }
    let (tx, rx) = mpsc::channel();
    let (_up, gw) = learning_pair(tx);
    // The worker learns that its connections are short: the next one starts in userspace.
    let learned = (0..60).map(|i| short_session(&gw, i)).any(|line| line.contains("mode=userspace"));
    assert!(learned, "60 short connections did not make the worker defer the splice");
    let mut c = TcpStream::connect(gw.addr).unwrap();
    c.write_all(utils::upgrade_request("/chat", "").as_bytes()).unwrap();
    let (head, early) = utils::read_head(&mut c);
    assert_eq!(utils::status_of(&head), 101);
    let out = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || stream_out(out, 41, 1, UP_BYTES));
    // What came with the head is the start of the downstream pattern.
    assert_eq!(splice_util::check(41, 2, 0, &early), None);
    let received = stream_in(c, 41, 2, early.len());
    writer.join().unwrap();
    assert_eq!(received, DOWN_BYTES, "client received");
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), UP_BYTES, "upstream received");
    let line = gw.wait_log("\"GET /chat HTTP/1.1\" 101 ");
    assert!(line.contains("mode=userspace+splice"), "not handed to the kernel mid-stream: {line}");
    // `out` counts the upstream's bytes from its 101 head on.
    let out = DOWN_BYTES + head.len();
    assert!(
        line.contains(&format!(" in={UP_BYTES} out={out} ")),
        "byte counts must add the userspace part and the kernel's: {line}"
    );
}

/// An upstream that sends its 101 and the first `DOWN` bytes in one write (one
/// segment holds the head and the start of the stream), then checks what it receives.
fn bursting_upstream(received: mpsc::Sender<usize>, down: usize) -> utils::RawUpstream {
    let received = Mutex::new(received);
    utils::RawUpstream::start(move |mut s| {
        let _ = utils::read_head(&mut s);
        let mut out = SWITCHING.to_vec();
        let mut body = vec![0u8; down];
        splice_util::fill(43, 2, 0, &mut body);
        out.extend_from_slice(&body);
        let mut writer = s.try_clone().unwrap();
        let writing = std::thread::spawn(move || {
            writer.write_all(&out).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let n = stream_in(s, 43, 1, 0);
        writing.join().unwrap();
        let _ = received.lock().unwrap().send(n);
    })
}

#[test]
fn a_101_that_shares_its_segment_with_a_burst_arrives_once_spliced_or_relayed() {
    const DOWN: usize = 2_000_000;
    if !can_splice("burst_after_101_e2e") {
        return;
    }
    // At once: the 101 is peeked and the kernel delivers it with the burst. `auto`: the
    // 101 is read with part of the burst (the read may cut a segment), the rest is
    // relayed here, and the pair may go to the kernel at a quiet moment.
    let at_once: &[&str] = &["mode=splice"];
    let relayed_first: &[&str] = &["mode=userspace", "mode=userspace+splice"];
    for (mode, after, expected) in [("sockmap", "0s", at_once), ("auto", "50ms", relayed_first)] {
        let (tx, rx) = mpsc::channel();
        let up = bursting_upstream(tx, DOWN);
        let gw = wsgate(up.addr, mode).args(&["--workers", "1", "--splice-after", after]).start();
        let mut c = TcpStream::connect(gw.addr).unwrap();
        c.write_all(utils::upgrade_request("/chat", "").as_bytes()).unwrap();
        let (head, early) = utils::read_head(&mut c);
        assert_eq!(utils::status_of(&head), 101);
        assert_eq!(splice_util::check(43, 2, 0, &early), None, "{mode}: the bytes after the 101");
        let out = c.try_clone().unwrap();
        let writer = std::thread::spawn(move || stream_out(out, 43, 1, UP_BYTES));
        let received = stream_in(c, 43, 2, early.len());
        writer.join().unwrap();
        assert_eq!(received, DOWN, "{mode}: client received");
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), UP_BYTES, "{mode}: upstream received");
        let line = gw.wait_log("\"GET /chat HTTP/1.1\" 101 ");
        assert!(expected.iter().any(|m| line.trim_end().ends_with(m)), "{mode}: {line}");
        let out = DOWN + head.len();
        assert!(line.contains(&format!(" in={UP_BYTES} out={out} ")), "{mode}: byte counts: {line}");
    }
}
