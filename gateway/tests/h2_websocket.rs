//! HTTP/2 on a TLS listener with a real HTTP/2 client (Python's `h2`, the library of
//! hyper-h2, over `ssl`): ALPN picks `h2`, the server's SETTINGS enable extended
//! CONNECT (RFC 8441), many WebSocket streams on one connection echo every byte
//! (messages larger than the stream window, so flow control is the backpressure),
//! plain requests are proxied as parsed HTTP/1.0 (the recording upstream checks the
//! exact head), a rapid-reset flood ends with GOAWAY `ENHANCE_YOUR_CALM`, and a
//! reload that removes a server from a group with `drain_removed` closes exactly the
//! streams to it with a Close 1001 while the others go on.
//!
//! `cargo xtask test` installs what these need: python3-h2, openssl.

mod tls_util;
mod utils;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tls_util::{Pki, tls_listener};
use utils::{Gateway, RawUpstream, WsEcho, read_head};

/// The Python client: a WebSocket frame codec over h2 streams, plus the commands below.
const CLIENT: &str = r#"
import os, random, socket, ssl, struct, sys
import h2.config, h2.connection, h2.events, h2.settings, h2.errors

def connect(addr, ca):
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    sock = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=20), server_hostname="gw.test")
    assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn

class Client:
    def __init__(self, addr, ca):
        self.sock, self.conn = connect(addr, ca)
        self.headers, self.data, self.ended, self.reset, self.goaway = {}, {}, set(), {}, None
        self.remote_settings = {}
    def pump(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed")
        for ev in self.conn.receive_data(chunk):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                for k, v in ev.changed_settings.items():
                    self.remote_settings[k] = v.new_value
            elif isinstance(ev, h2.events.ResponseReceived):
                self.headers[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                self.data.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                # The application has taken it: open the window again.
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.reset[ev.stream_id] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
        self.flush()
    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)
    def until(self, cond):
        while not cond():
            self.pump()
    def send_all(self, sid, payload, end=False):
        # Within the windows the server gave; wait for WINDOW_UPDATE otherwise.
        view = memoryview(payload)
        while len(view):
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.pump()
                continue
            self.conn.send_data(sid, bytes(view[:room]))
            view = view[room:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

def frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126: head += bytes([0x80 | n])
    elif n < 65536: head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else: head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body

def unframe(buf):
    # One unmasked server frame from the front of buf, or None when incomplete.
    if len(buf) < 2: return None
    op, n, i = buf[0] & 0x0f, buf[1] & 0x7f, 2
    if n == 126:
        if len(buf) < 4: return None
        n, i = struct.unpack(">H", bytes(buf[2:4]))[0], 4
    elif n == 127:
        if len(buf) < 10: return None
        n, i = struct.unpack(">Q", bytes(buf[2:10]))[0], 10
    if len(buf) < i + n: return None
    payload = bytes(buf[i:i + n])
    del buf[:i + n]
    return op, payload

def websockets(addr, ca, streams, messages):
    c = Client(addr, ca)
    c.until(lambda: h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL in c.remote_settings)
    assert c.remote_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
    sids = []
    for s in range(streams):
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
            (":path", f"/h2/{s}?n={s}"), (":authority", "gw.test"), ("sec-websocket-version", "13"),
            ("user-agent", "h2-test")])
        sids.append(sid)
    c.flush()
    c.until(lambda: all(s in c.headers for s in sids))
    for s in sids:
        assert c.headers[s][":status"] == "200", c.headers[s]
    rnd = random.Random(11)
    sizes = [0, 1, 125, 126, 4096, 65535, 65536, 300000]
    total = 0
    for m in range(messages):
        sent = {}
        for k, sid in enumerate(sids):
            payload = rnd.randbytes(sizes[(m + k) % len(sizes)])
            sent[sid] = payload
            c.send_all(sid, frame(2, payload))
        for sid in sids:
            buf = c.data.setdefault(sid, bytearray())
            got = None
            while got is None:
                got = unframe(buf)
                if got is None: c.pump()
            assert got == (2, sent[sid]), f"stream {sid} message {m}: {len(got[1])} bytes back of {len(sent[sid])}, or different"
            total += len(sent[sid])
    for sid in sids:
        c.send_all(sid, frame(8, struct.pack(">H", 1000)))
    for sid in sids:
        # The echo answers the Close, or (tungstenite's echo) just closes: END_STREAM.
        buf = c.data.setdefault(sid, bytearray())
        got = None
        # The Close and END_STREAM may come in one read: parse what came before
        # looking at the stream's end.
        while (got := unframe(buf)) is None and sid not in c.ended:
            c.pump()
        assert got is None or got[0] == 8, got
        assert not buf, f"stream {sid}: {len(buf)} bytes after the last message: {bytes(buf)!r}"
        c.conn.end_stream(sid)
    c.flush()
    c.until(lambda: all(s in c.ended for s in sids))
    print("ws-ok", len(sids), messages, total)

def removed(addr, ca, streams, seconds):
    # Streams echo small messages until `seconds` after OPEN; each that gets a Close
    # answers it. RESULT says which streams closed (code) and how many echoes each saw.
    import json, time
    c = Client(addr, ca)
    c.until(lambda: h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL in c.remote_settings)
    sids = []
    for s in range(streams):
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
            (":path", f"/h2/{s}"), (":authority", "gw.test"), ("sec-websocket-version", "13"), ("x-stream", str(s))])
        sids.append(sid)
    c.flush()
    c.until(lambda: all(s in c.headers for s in sids))
    closed, echoed, bad, m = {}, [0] * streams, 0, 0
    def round_trip():
        nonlocal m, bad
        sent = {}
        for k, sid in enumerate(sids):
            if k not in closed:
                sent[sid] = os.urandom(100 + (m * 37 + k) % 3000)
                c.send_all(sid, frame(2, sent[sid]))
        m += 1
        for k, sid in enumerate(sids):
            if sid not in sent: continue
            buf = c.data.setdefault(sid, bytearray())
            while (got := unframe(buf)) is None:
                c.pump()
            if got[0] == 8:
                closed[k] = struct.unpack(">H", got[1][:2])[0]
                c.send_all(sid, frame(8, got[1][:2]), end=True)
            elif got == (2, sent[sid]):
                echoed[k] += 1
            else:
                bad += 1
    round_trip()
    print("OPEN", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        round_trip()
        time.sleep(0.05)
    print("RESULT " + json.dumps({"closed": closed, "echoed": echoed, "bad": bad}), flush=True)

def plain(addr, ca):
    c = Client(addr, ca)
    body = bytes(range(256)) * 40
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(":method", "POST"), (":scheme", "https"), (":path", "/plain/x?y=1"),
        (":authority", "gw.test"), ("content-length", str(len(body))), ("cookie", "a=1"), ("cookie", "b=2"),
        ("x-forwarded-for", "6.6.6.6")])
    c.send_all(sid, body, end=True)
    c.until(lambda: sid in c.ended)
    assert c.headers[sid][":status"] == "201", c.headers[sid]
    assert c.headers[sid].get("x-up") == "yes", c.headers[sid]
    assert "connection" not in c.headers[sid], c.headers[sid]
    assert bytes(c.data[sid]) == b"body:" + body[:100], bytes(c.data[sid])[:64]
    # No route for this one: wsgate's own 404, over HTTP/2.
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":path", "/nowhere"),
        (":authority", "gw.test")], end_stream=True)
    c.flush()
    c.until(lambda: sid in c.ended)
    assert c.headers[sid][":status"] == "404", c.headers[sid]
    print("plain-ok")

def flood(addr, ca, n):
    # The classic rapid reset: HEADERS then RST_STREAM at once, n times.
    c = Client(addr, ca)
    c.until(lambda: c.remote_settings)
    sent = 0
    try:
        for i in range(n):
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                (":path", "/h2/flood"), (":authority", "gw.test"), ("sec-websocket-version", "13")])
            c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            c.flush()
            sent += 1
        while True:
            c.pump()
    except (EOFError, OSError, h2.exceptions.ProtocolError):
        pass
    print("flood-closed-after", sent, "of", n, "goaway", c.goaway)

def resets(addr, ca, n):
    # Streams accepted and connected upstream, then all reset by the client.
    c = Client(addr, ca)
    c.until(lambda: c.remote_settings)
    sids = []
    for s in range(n):
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
            (":path", "/h2/r"), (":authority", "gw.test"), ("sec-websocket-version", "13")])
        sids.append(sid)
    c.flush()
    c.until(lambda: all(s in c.headers for s in sids))
    for sid in sids:
        c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    try:
        while c.goaway is None:
            c.pump()
    except (EOFError, OSError):
        pass
    print("resets-goaway", None if c.goaway is None else int(c.goaway))

def get(addr, ca, path):
    c = Client(addr, ca)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":path", path),
        (":authority", "gw.test")], end_stream=True)
    c.flush()
    c.until(lambda: sid in c.ended)
    print("status", c.headers[sid][":status"], "body", bytes(c.data.get(sid, b"")).decode())

def greeted(addr, ca, size):
    # One WebSocket stream whose upstream sends a frame with its 101: it arrives whole.
    c = Client(addr, ca)
    c.until(lambda: h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL in c.remote_settings)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
        (":path", "/h2/greet"), (":authority", "gw.test"), ("sec-websocket-version", "13")])
    c.flush()
    c.until(lambda: sid in c.headers)
    assert c.headers[sid][":status"] == "200", c.headers[sid]
    buf = c.data.setdefault(sid, bytearray())
    got = None
    while got is None:
        got = unframe(buf)
        if got is None: c.pump()
    expected = bytes(i % 251 for i in range(size))
    assert got == (2, expected), (got[0], len(got[1]))
    assert not buf, f"{len(buf)} bytes past the greeting"
    c.conn.send_data(sid, frame(8, b"\x03\xe8"))
    c.flush()
    print("greeted", len(got[1]))

cmd = sys.argv[1]
if cmd == "greet": greeted(sys.argv[2], sys.argv[3], int(sys.argv[4]))
elif cmd == "get": get(sys.argv[2], sys.argv[3], sys.argv[4])
elif cmd == "ws": websockets(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
elif cmd == "plain": plain(sys.argv[2], sys.argv[3])
elif cmd == "removed": removed(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
elif cmd == "flood": flood(sys.argv[2], sys.argv[3], int(sys.argv[4]))
elif cmd == "resets": resets(sys.argv[2], sys.argv[3], int(sys.argv[4]))
"#;

/// Runs the client with `args` (at most two minutes); returns its success and output.
fn client(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", CLIENT]).args(args);
    utils::run_bounded(&mut cmd, Duration::from_mins(2), "cargo xtask test installs python3-h2")
}

/// A gateway with a TLS listener (`gw.test`), `/h2/` to a WebSocket echo and
/// `/plain/` to `plain`.
fn gateway(pki: &Pki, ws: std::net::SocketAddr, plain: std::net::SocketAddr, extra: &str) -> Gateway {
    let cert = pki.issue("default", &["gw.test", "127.0.0.1"]);
    let config = format!(
        "workers = 1\n[timeouts]\nheader = \"5s\"\n{extra}{}\
         [[route]]\npath = \"/h2/\"\nupstream = \"ws\"\n[[route]]\npath = \"/plain/\"\nupstream = \"plain\"\n\
         [upstream.ws]\nservers = [\"{}\"]\n[upstream.plain]\nservers = [\"{plain}\"]\n",
        tls_listener(Some(&cert), &[]),
        ws
    );
    Gateway::builder().config(&config).log_level("wsgate=debug").start()
}

#[test]
fn websocket_streams_over_h2_echo_every_byte() {
    let pki = Pki::new();
    let echo = WsEcho::start();
    let gw = gateway(&pki, echo.addr, utils::refused_addr(), "");
    let (ok, out) = client(&["ws", &gw.addr.to_string(), pki.ca_file().to_str().unwrap(), "6", "16"]);
    assert!(ok && out.contains("ws-ok 6 16"), "{out}\naccess log: {:#?}\n{:#?}", gw.log_lines(), gw.stderr());
    // Each stream reached the upstream as a parsed and rewritten HTTP/1.1 upgrade.
    let requests = echo.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 6, "{requests:?}");
    for r in &requests {
        let get = |k: &str| r.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("x-forwarded-proto"), Some("https"), "{r:?}");
        assert_eq!(get("host"), Some("gw.test"), "{r:?}");
        assert_eq!(get("upgrade"), Some("websocket"), "{r:?}");
        assert_eq!(get("user-agent"), Some("h2-test"), "{r:?}");
        assert_eq!(get("x-forwarded-for"), Some("127.0.0.1"), "{r:?}");
    }
    // One access-log line per stream, as HTTP/2 CONNECT, 200, closed by the client.
    for s in 0..6 {
        let line = gw.wait_log(&format!("\"CONNECT /h2/{s}?n={s} HTTP/2\" 200 "));
        assert!(line.contains("close=client_fin") || line.contains("close=upstream_fin"), "{line}");
    }
}

/// An upstream that sends its first frame in the same write as its 101 (a greeting,
/// `size` bytes of binary payload): wsgate reads the 101 with some of those bytes, and
/// they must reach the stream first and whole; then the upstream reads to the end.
fn greeting_upstream(size: usize) -> RawUpstream {
    RawUpstream::start(move |mut s| {
        let (head, _) = read_head(&mut s);
        let key = head.lines().find_map(|l| l.strip_prefix("sec-websocket-key: ")).unwrap_or("").trim().to_owned();
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
        )
        .into_bytes();
        out.extend_from_slice(&[0x82, 126]);
        out.extend_from_slice(&u16::try_from(size).unwrap().to_be_bytes());
        out.extend_from_slice(&payload);
        let _ = s.write_all(&out);
        let _ = utils::read_to_eof(&mut s);
    })
}

#[test]
fn a_frame_that_comes_with_the_101_reaches_the_h2_stream_first_and_whole() {
    let pki = Pki::new();
    // Smaller than the first read, and larger (the read cuts it).
    for size in [300, 6000] {
        let up = greeting_upstream(size);
        let gw = gateway(&pki, up.addr, utils::refused_addr(), "");
        let (ok, out) = client(&["greet", &gw.addr.to_string(), pki.ca_file().to_str().unwrap(), &size.to_string()]);
        assert!(ok && out.contains(&format!("greeted {size}")), "{out}\n{:#?}", gw.stderr());
    }
}

#[test]
fn plain_requests_over_h2_go_upstream_parsed_as_http10() {
    let pki = Pki::new();
    let echo = WsEcho::start();
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let record = seen.clone();
    let up = RawUpstream::start(move |mut s| {
        let (head, mut body) = read_head(&mut s);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while body.len() < len {
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
        let mut rec = head.into_bytes();
        rec.extend_from_slice(&body);
        *record.lock().unwrap() = rec;
        let reply = [b"body:".as_slice(), &body[..100.min(body.len())]].concat();
        let head = format!(
            "HTTP/1.0 201 Created\r\nX-Up: yes\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        let _ = s.write_all(&[head.as_bytes(), &reply].concat());
    });
    let gw = gateway(&pki, echo.addr, up.addr, "");
    let (ok, out) = client(&["plain", &gw.addr.to_string(), pki.ca_file().to_str().unwrap()]);
    assert!(ok && out.contains("plain-ok"), "{out}");
    let seen = seen.lock().unwrap().clone();
    let body: Vec<u8> = (0..=255u8).cycle().take(256 * 40).collect();
    let expected_head = "POST /plain/x?y=1 HTTP/1.0\r\nhost: gw.test\r\ncookie: a=1; b=2\r\ncontent-length: 10240\r\n\
                         Connection: close\r\nX-Real-IP: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.1\r\n\
                         X-Forwarded-Proto: https\r\n\r\n";
    assert_eq!(String::from_utf8_lossy(&seen[..seen.len() - body.len()]), expected_head);
    assert_eq!(&seen[seen.len() - body.len()..], body.as_slice());
    gw.wait_log("\"POST /plain/x?y=1 HTTP/2\" 201");
    gw.wait_log("\"GET /nowhere HTTP/2\" 404");
}

#[test]
fn a_rapid_reset_flood_is_cut_off() {
    let pki = Pki::new();
    let echo = WsEcho::start();
    let gw = gateway(&pki, echo.addr, utils::refused_addr(), "");
    let ca = pki.ca_file();
    let (ok, out) = client(&["flood", &gw.addr.to_string(), ca.to_str().unwrap(), "5000"]);
    let closed_after: usize = out
        .split_whitespace()
        .skip_while(|w| *w != "flood-closed-after")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(ok && closed_after < 5000, "the connection outlived the flood: {out}");
    // The worker serves the next client.
    let (ok, out) = client(&["ws", &gw.addr.to_string(), ca.to_str().unwrap(), "1", "2"]);
    assert!(ok && out.contains("ws-ok 1 2"), "{out}");
}

#[test]
fn streams_reset_after_connecting_past_the_limit_get_goaway_enhance_your_calm() {
    let pki = Pki::new();
    let echo = WsEcho::start();
    let gw = gateway(&pki, echo.addr, utils::refused_addr(), "[http2]\nmax_resets_per_second = 10\n");
    let ca = pki.ca_file();
    let (ok, out) = client(&["resets", &gw.addr.to_string(), ca.to_str().unwrap(), "40"]);
    // ENHANCE_YOUR_CALM is error code 11.
    assert!(ok && out.contains("resets-goaway 11"), "{out}");
    gw.wait_stderr("too many stream resets per second", Duration::from_secs(10));
    // Under the limit, resets are only resets.
    let (ok, out) = client(&["ws", &gw.addr.to_string(), ca.to_str().unwrap(), "1", "2"]);
    assert!(ok && out.contains("ws-ok 1 2"), "{out}");
}

#[test]
fn websocket_streams_and_a_plain_request_over_h2_to_a_tls_upstream() {
    // TLS on both sides of each stream: h2 from the client, HTTP/1.1 over TLS upstream.
    let pki = Pki::new();
    let backend = tls_util::TlsEcho::start(&pki.issue("backend", &["backend.test"]), None);
    let cert = pki.issue("default", &["gw.test", "127.0.0.1"]);
    let config = format!(
        "workers = 1\n[timeouts]\nheader = \"5s\"\n{}[[route]]\npath = \"/h2/\"\nupstream = \"ws\"\n\
         [upstream.ws]\nservers = [\"{}\"]\ntls = {{ server_name = \"backend.test\", ca = \"{}\" }}\n",
        tls_listener(Some(&cert), &[]),
        backend.addr,
        pki.ca_file().display()
    );
    let gw = Gateway::builder().config(&config).start();
    // A plain request over h2 too: HTTP/1.0 over TLS upstream, the body back as DATA.
    let (ok, out) = client(&["get", &gw.addr.to_string(), pki.ca_file().to_str().unwrap(), "/h2/plain?x=1"]);
    assert!(ok && out.contains("status 200 body sni=backend.test path=/h2/plain?x=1"), "{out}\n{:#?}", gw.stderr());
    let (ok, out) = client(&["ws", &gw.addr.to_string(), pki.ca_file().to_str().unwrap(), "4", "12"]);
    assert!(ok && out.contains("ws-ok 4 12"), "{out}\naccess log: {:#?}\n{:#?}", gw.log_lines(), gw.stderr());
    let seen = backend.seen();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.iter().all(|s| s.sni.as_deref() == Some("backend.test") && s.request.starts_with("GET /h2/")));
}

#[test]
fn websocket_streams_to_a_server_a_reload_removes_close_with_1001_and_the_others_go_on() {
    const STREAMS: usize = 6;
    let pki = Pki::new();
    let (a, b) = (WsEcho::start(), WsEcho::start());
    let dir = utils::TempDir::new();
    let file = dir.0.join("wsgate.toml");
    let cert = pki.issue("default", &["gw.test", "127.0.0.1"]);
    let write = |servers: &[&WsEcho]| {
        let list: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.addr)).collect();
        let config = format!(
            "workers = 1\n[drain]\nwindow = \"1s\"\njitter = 0.0\n{}[[route]]\npath = \"/h2/\"\nupstream = \"ws\"\n\
             [upstream.ws]\nservers = [{}]\ndrain_removed = true\n",
            tls_listener(Some(&cert), &[]),
            list.join(", ")
        );
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write(&[&a, &b]);
    let gw = Gateway::builder().args(&["-c", file.to_str().unwrap()]).log_level("wsgate=info").start();
    let (addr, ca) = (gw.addr.to_string(), pki.ca_file());
    let streams = STREAMS.to_string();
    let args = ["-c", CLIENT, "removed", &addr, ca.to_str().unwrap(), &streams, "6"];
    let child = utils::LineChild::spawn(Command::new("/usr/bin/python3").args(args), "python3-h2");
    assert_eq!(child.line(Duration::from_mins(1)).as_deref(), Some("OPEN"), "{:#?}", gw.stderr());
    write(&[&a]);
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    gw.wait_stderr("removed from groups with drain_removed", Duration::from_secs(20));
    let result = child.line(Duration::from_mins(1)).expect("the client's result");
    let result: serde_json::Value = serde_json::from_str(result.strip_prefix("RESULT ").unwrap()).unwrap();
    let stream_of = |h: &Vec<(String, String)>| h.iter().find(|(n, _)| n == "x-stream").map(|(_, v)| v.clone());
    let on_b: Vec<String> = b.requests.lock().unwrap().iter().filter_map(stream_of).collect();
    assert!(!on_b.is_empty() && on_b.len() < STREAMS, "both servers have streams: {on_b:?}");
    let closed = result["closed"].as_object().unwrap();
    let mut closed_streams: Vec<&String> = closed.keys().collect();
    closed_streams.sort();
    let mut want: Vec<&String> = on_b.iter().collect();
    want.sort();
    assert_eq!(closed_streams, want, "exactly the streams to the removed server closed: {result}");
    assert!(closed.values().all(|c| c == 1001), "each with 1001: {result}");
    assert_eq!(result["bad"], 0, "{result}");
    // The others kept echoing to the end (every round after the reload too).
    let echoed = result["echoed"].as_array().unwrap();
    let least = (0..STREAMS).filter(|s| !on_b.contains(&s.to_string())).map(|s| echoed[s].as_u64().unwrap()).min();
    let most_closed = on_b.iter().map(|s| echoed[s.parse::<usize>().unwrap()].as_u64().unwrap()).max();
    assert!(least > most_closed, "the streams to the server that stays went on: {result}");
    for s in &on_b {
        let line = gw.wait_log(&format!("\"CONNECT /h2/{s} HTTP/2\" 200 "));
        assert!(line.contains("close=removed"), "{line}");
    }
    let events = b.events.lock().unwrap().clone();
    assert_eq!(events.iter().filter(|(_, e)| e == "close 1001").count(), on_b.len(), "{events:?}");
}
