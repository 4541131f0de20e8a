//! RFC 6455 §4.2.1: is this request a valid WebSocket opening handshake?
//!
//! Must never accept a handshake the RFC refuses (the upstream would see it as one).

use base64::Engine as _;

use super::has_token;
use super::request::RequestHead;
use crate::error::{ErrorKind, ProxyError};

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A valid WebSocket upgrade.
    WebSocket,
    /// Anything without `Upgrade: websocket`: proxied as plain HTTP/1.1.
    Plain,
}

/// Classifies the request; a request that asks for a WebSocket but gets the
/// handshake wrong is an error (400, or 426 for the version).
pub fn classify(head: &RequestHead) -> Result<Intent, ProxyError> {
    let wants_ws = head.headers_named("upgrade").any(|v| has_token(v, "websocket"));
    if !wants_ws {
        return Ok(Intent::Plain);
    }
    let bad = |d: &str| Err(ProxyError::new(ErrorKind::BadRequest, format!("invalid WebSocket upgrade: {d}")));
    if head.method != "GET" {
        return bad("method must be GET");
    }
    if head.minor_version != 1 {
        return bad("HTTP/1.1 required");
    }
    if head.header("host").is_none() {
        return bad("missing Host");
    }
    // What follows an upgrade request is WebSocket data once the 101 comes, so the
    // request itself carries no body.
    let has_body = head.header("transfer-encoding").is_some()
        || head.headers_named("content-length").any(|v| v.iter().any(|&b| b != b'0'));
    if has_body {
        return bad("an upgrade request carries no body");
    }
    if !head.headers_named("connection").any(|v| has_token(v, "upgrade")) {
        return bad("Connection must contain `upgrade`");
    }
    let key_ok = head
        .header("sec-websocket-key")
        .is_some_and(|k| base64::engine::general_purpose::STANDARD.decode(k.trim_ascii()).is_ok_and(|d| d.len() == 16));
    if !key_ok {
        return bad("Sec-WebSocket-Key must be 16 bytes in base64");
    }
    match head.header("sec-websocket-version") {
        Some(v) if v.trim_ascii() == b"13" => Ok(Intent::WebSocket),
        Some(_) => Err(ProxyError::new(ErrorKind::UnsupportedVersion, "Sec-WebSocket-Version must be 13")),
        None => bad("missing Sec-WebSocket-Version"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn parse(buf: &[u8]) -> Result<Option<crate::http::request::RequestHead>, crate::error::ProxyError> {
        crate::http::request::parse(buf, crate::http::DEFAULT_MAX_HEADERS)
    }

    const OK: &str = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn classify_str(s: &str) -> Result<Intent, ProxyError> {
        classify(&parse(s.as_bytes()).unwrap().unwrap())
    }

    #[test]
    fn valid_upgrade() {
        assert_eq!(classify_str(OK).unwrap(), Intent::WebSocket);
    }

    #[test]
    fn plain_request() {
        assert_eq!(classify_str("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap(), Intent::Plain);
        assert_eq!(classify_str("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n").unwrap(), Intent::Plain);
    }

    #[test]
    fn broken_upgrades() {
        let cases = [
            (OK.replace("GET", "POST"), ErrorKind::BadRequest),
            (OK.replace("HTTP/1.1", "HTTP/1.0"), ErrorKind::BadRequest),
            (OK.replace("keep-alive, Upgrade", "keep-alive"), ErrorKind::BadRequest),
            (OK.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="), ErrorKind::BadRequest),
            (OK.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!"), ErrorKind::BadRequest),
            (OK.replace("Version: 13", "Version: 8"), ErrorKind::UnsupportedVersion),
            (OK.replace("Host: a\r\n", ""), ErrorKind::BadRequest),
            (OK.replace("Host: a\r\n", "Host: a\r\nContent-Length: 5\r\n"), ErrorKind::BadRequest),
            (OK.replace("Host: a\r\n", "Host: a\r\nTransfer-Encoding: chunked\r\n"), ErrorKind::BadRequest),
        ];
        for (req, kind) in cases {
            assert_eq!(classify_str(&req).unwrap_err().kind, kind, "{req}");
        }
    }
}
