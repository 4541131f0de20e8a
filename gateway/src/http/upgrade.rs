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
    let seen = Seen::of(head);
    if !seen.upgrade_websocket {
        return Ok(Intent::Plain);
    }
    let bad = |d: &str| Err(ProxyError::new(ErrorKind::BadRequest, format!("invalid WebSocket upgrade: {d}")));
    if head.method != "GET" {
        return bad("method must be GET");
    }
    if head.minor_version != 1 {
        return bad("HTTP/1.1 required");
    }
    if !seen.host {
        return bad("missing Host");
    }
    // What follows an upgrade request is WebSocket data once the 101 comes, so the
    // request itself carries no body.
    if seen.body {
        return bad("an upgrade request carries no body");
    }
    if !seen.connection_upgrade {
        return bad("Connection must contain `upgrade`");
    }
    if !seen.key.is_some_and(|k| is_key(k.trim_ascii())) {
        return bad("Sec-WebSocket-Key must be 16 bytes in base64");
    }
    match seen.version {
        Some(v) if v.trim_ascii() == b"13" => Ok(Intent::WebSocket),
        Some(_) => Err(ProxyError::new(ErrorKind::UnsupportedVersion, "Sec-WebSocket-Version must be 13")),
        None => bad("missing Sec-WebSocket-Version"),
    }
}

/// What [`classify`] reads of a head's headers, gathered in one pass over them.
#[derive(Default)]
#[allow(clippy::struct_excessive_bools, reason = "one answer per check of the handshake, each read once")]
struct Seen<'a> {
    /// An `Upgrade` header names `websocket`.
    upgrade_websocket: bool,
    host: bool,
    /// A `Transfer-Encoding`, or a `Content-Length` other than zero.
    body: bool,
    /// A `Connection` header names `upgrade`.
    connection_upgrade: bool,
    /// The first `Sec-WebSocket-Key` and `Sec-WebSocket-Version`.
    key: Option<&'a [u8]>,
    version: Option<&'a [u8]>,
}

impl<'a> Seen<'a> {
    fn of(head: &'a RequestHead) -> Self {
        let mut seen = Self::default();
        for (name, value) in head.headers() {
            // By length first: most names are none of these.
            match name.len() {
                4 if name.eq_ignore_ascii_case(b"host") => seen.host = true,
                7 if name.eq_ignore_ascii_case(b"upgrade") => seen.upgrade_websocket |= has_token(value, "websocket"),
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    seen.connection_upgrade |= has_token(value, "upgrade");
                }
                14 if name.eq_ignore_ascii_case(b"content-length") => seen.body |= value.iter().any(|&b| b != b'0'),
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => seen.body = true,
                17 if name.eq_ignore_ascii_case(b"sec-websocket-key") => _ = seen.key.get_or_insert(value),
                21 if name.eq_ignore_ascii_case(b"sec-websocket-version") => _ = seen.version.get_or_insert(value),
                _ => {}
            }
        }
        seen
    }
}

/// Whether `key` is 16 bytes in (padded) base64: 24 characters, decoded in place.
fn is_key(key: &[u8]) -> bool {
    // Room for what base64 estimates 24 characters decode to.
    let mut bytes = [0u8; 18];
    key.len() == 24 && base64::engine::general_purpose::STANDARD.decode_slice(key, &mut bytes) == Ok(16)
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
        // Names in any case, a key with blanks around it, `websocket` in a second
        // Upgrade header, the first of two keys and versions.
        let other = OK
            .replace("Upgrade: WebSocket", "UPGRADE: h2c\r\nupgrade: websocket")
            .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-key:  dGhlIHNhbXBsZSBub25jZQ== ")
            .replace("Version: 13", "Version: 13\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: x");
        assert_eq!(classify_str(&other).unwrap(), Intent::WebSocket, "{other}");
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
            // 15 and 17 bytes, unpadded 16, a bad character in 24, a non-canonical end.
            (OK.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j"), ErrorKind::BadRequest),
            (OK.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZWE="), ErrorKind::BadRequest),
            (OK.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ"), ErrorKind::BadRequest),
            (OK.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZ!=="), ErrorKind::BadRequest),
            (OK.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR=="), ErrorKind::BadRequest),
            (OK.replace("Host: a\r\n", "Host: a\r\nContent-Length: 0\r\nContent-Length: 1\r\n"), ErrorKind::BadRequest),
            (
                OK.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Version: 13"),
                ErrorKind::UnsupportedVersion,
            ),
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
