//! The echo upstream over real sockets, byte for byte: health and error responses, the
//! upgrade, echoes with the same opcode and fragments, ping → pong, close handshake, the
//! frame-size limit, and several processes sharing one port.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::Echo;
use wsbench::ws::frame::{self, OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use wsbench::ws::handshake;

const MASK: Option<[u8; 4]> = Some([0x11, 0x22, 0x33, 0x44]);

fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Connects and upgrades; returns the stream and any bytes read past the 101 head.
fn upgrade(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    s.write_all(handshake::client_request("test", "/", key).as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while handshake::head_end(&head).is_none() {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    handshake::check_response(&head, key).unwrap();
    s
}

fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    s.read_exact(&mut v).unwrap();
    v
}

#[test]
fn health_and_non_upgrade_requests() {
    let echo = Echo::start(&[]);
    let ok = http(echo.addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nok\n"), "{ok}");
    assert!(http(echo.addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404 "));
    assert!(http(echo.addr, "POST /health HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 400 "));
    assert!(http(echo.addr, "\x16\x03\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
}

#[test]
fn echoes_frames_exactly() {
    let echo = Echo::start(&[]);
    let mut s = upgrade(echo.addr);
    let mut input = Vec::new();
    frame::write_frame(&mut input, true, OP_TEXT, MASK, "héllo".as_bytes());
    frame::write_frame(&mut input, false, OP_BINARY, MASK, &[7; 200]);
    frame::write_frame(&mut input, true, OP_PING, MASK, b"hb");
    frame::write_frame(&mut input, true, OP_CONT, MASK, &vec![8; 70_000]);
    frame::write_close(&mut input, frame::CLOSE_NORMAL, MASK);
    // Send in awkward pieces to exercise reassembly of headers and payloads.
    for chunk in input.chunks(7) {
        s.write_all(chunk).unwrap();
    }
    let mut want = Vec::new();
    frame::write_frame(&mut want, true, OP_TEXT, None, "héllo".as_bytes());
    frame::write_frame(&mut want, false, OP_BINARY, None, &[7; 200]);
    frame::write_frame(&mut want, true, OP_PONG, None, b"hb");
    frame::write_frame(&mut want, true, OP_CONT, None, &vec![8; 70_000]);
    frame::write_close(&mut want, frame::CLOSE_NORMAL, None);
    let got = read_exactly(&mut s, want.len());
    assert!(got == want, "echo differs");
    // Then the server closes the TCP connection.
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn oversized_frame_is_refused_with_1009() {
    let echo = Echo::start(&["--max-frame", "1000"]);
    let mut s = upgrade(echo.addr);
    let mut header = Vec::new();
    frame::write_header(&mut header, true, OP_BINARY, MASK, 1001);
    s.write_all(&header).unwrap();
    let mut want = Vec::new();
    frame::write_close(&mut want, frame::CLOSE_TOO_BIG, None);
    assert_eq!(read_exactly(&mut s, want.len()), want);
}

#[test]
fn unmasked_client_frame_is_a_protocol_error() {
    let echo = Echo::start(&[]);
    let mut s = upgrade(echo.addr);
    let mut f = Vec::new();
    frame::write_frame(&mut f, true, OP_TEXT, None, b"x");
    s.write_all(&f).unwrap();
    let mut want = Vec::new();
    frame::write_close(&mut want, frame::CLOSE_PROTOCOL, None);
    assert_eq!(read_exactly(&mut s, want.len()), want);
}

#[test]
fn two_processes_share_one_port() {
    let first = Echo::start(&[]);
    let second = Echo::start_on(&first.addr.to_string(), &[]);
    assert_eq!(first.addr, second.addr);
    for _ in 0..4 {
        assert!(http(first.addr, "GET /health HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    }
}
