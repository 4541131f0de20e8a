//! The opening handshake (RFC 6455 §4): the accept key, the server's reading of a request
//! head, and the client's request and check of the 101 response.
//!
//! Everything here works on complete heads held in memory; the callers bound how many bytes
//! they read before giving up, so nothing here can grow without limit.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// The GUID every server appends to the client's key (RFC 6455 §1.3).
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Longest request or response head accepted, in bytes.
pub const MAX_HEAD: usize = 8192;

/// Headers looked at per head; more than this is answered with 431 / treated as an error.
const MAX_HEADERS: usize = 48;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    STANDARD.encode(h.finalize())
}

/// A fresh `Sec-WebSocket-Key` from 16 bytes of the caller's randomness.
pub fn client_key(random: [u8; 16]) -> String {
    STANDARD.encode(random)
}

/// Offset just past `\r\n\r\n`, when the head is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// What the echo server makes of a complete request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A valid upgrade: answer 101 with this accept value.
    Upgrade { accept: String },
    /// `GET /health`.
    Health,
    /// Anything else: answer with this status and close.
    Reject { status: u16, reason: &'static str },
}

fn header_has_token(value: &[u8], token: &str) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Classifies a request head (bytes up to and including the blank line).
pub fn read_request(head: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Request::Reject { status: 431, reason: "Request Header Fields Too Large" };
        }
        _ => {
            return Request::Reject { status: 400, reason: "Bad Request" };
        }
    }
    let find = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let wants_upgrade = find("upgrade").is_some_and(|v| header_has_token(v, "websocket"));
    if req.method != Some("GET") || req.version != Some(1) {
        return Request::Reject { status: 400, reason: "Bad Request" };
    }
    if !wants_upgrade {
        let path = req.path.unwrap_or("");
        return if path == "/health" || path.starts_with("/health?") {
            Request::Health
        } else {
            Request::Reject { status: 404, reason: "Not Found" }
        };
    }
    let connection_ok = find("connection").is_some_and(|v| header_has_token(v, "upgrade"));
    let version_ok = find("sec-websocket-version").is_some_and(|v| v.trim_ascii() == b"13");
    let key = find("sec-websocket-key").map(<[u8]>::trim_ascii);
    let key_ok = key.is_some_and(|k| STANDARD.decode(k).is_ok_and(|d| d.len() == 16));
    if !version_ok && connection_ok && key_ok {
        return Request::Reject { status: 426, reason: "Upgrade Required" };
    }
    match key {
        Some(k) if connection_ok && key_ok => {
            Request::Upgrade { accept: accept_key(std::str::from_utf8(k).unwrap_or_default()) }
        }
        _ => Request::Reject { status: 400, reason: "Bad Request" },
    }
}

/// The 101 response for an accepted upgrade.
pub fn switching_protocols(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

/// A plain response that closes the connection.
pub fn plain_response(status: u16, reason: &str, body: &str) -> String {
    let extra = if status == 426 { "Sec-WebSocket-Version: 13\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The client's upgrade request.
pub fn client_request(host: &str, path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Checks a server's response head against the key the client sent.
pub fn check_response(head: &[u8], key: &str) -> Result<(), String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete response head".into()),
        Err(e) => return Err(format!("malformed response head: {e}")),
    }
    if resp.code != Some(101) {
        return Err(format!("status {} instead of 101", resp.code.unwrap_or(0)));
    }
    let accept =
        resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept")).map(|h| h.value.trim_ascii());
    if accept != Some(accept_key(key).as_bytes()) {
        return Err("wrong or missing Sec-WebSocket-Accept".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn requests_are_classified() {
        let up = client_request("h", "/", "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(read_request(up.as_bytes()), Request::Upgrade { accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into() });
        assert_eq!(read_request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"), Request::Health);
        assert!(matches!(read_request(b"GET /x HTTP/1.1\r\n\r\n"), Request::Reject { status: 404, .. }));
        assert!(matches!(read_request(b"\x00\x01garbage\r\n\r\n"), Request::Reject { status: 400, .. }));
        let bad_key = up.replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        assert!(matches!(read_request(bad_key.as_bytes()), Request::Reject { status: 400, .. }));
        let v8 = up.replace("Version: 13", "Version: 8");
        assert!(matches!(read_request(v8.as_bytes()), Request::Reject { status: 426, .. }));
    }

    #[test]
    fn response_check_rejects_wrong_accept() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        assert!(check_response(switching_protocols(&accept_key(key)).as_bytes(), key).is_ok());
        assert!(check_response(switching_protocols("nope").as_bytes(), key).is_err());
        assert!(check_response(b"HTTP/1.1 200 OK\r\n\r\n", key).is_err());
    }
}
