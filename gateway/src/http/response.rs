//! The upstream's response head, and the short responses wsgate writes itself.
//!
//! Must never pass on a head it could not parse, nor panic on any byte an upstream sends.

use std::mem::MaybeUninit;

use super::MAX_RESPONSE_HEADERS;
use crate::error::{ErrorKind, ProxyError};

/// What the proxy needs to know of an upstream response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Length of the head including the final CRLF CRLF.
    pub len: usize,
    /// Body framing (irrelevant for 101).
    pub framing: super::body::Framing,
    /// HTTP/1.1 without a `close` token in `Connection`: the connection may carry
    /// another request after this response (once its body is through).
    pub keep_alive: bool,
    /// The upstream spoke HTTP/1.1 (a 1.0 response ends its client connection).
    pub http11: bool,
}

/// Parses a response head. `Ok(None)`: incomplete.
pub fn parse(buf: &[u8], request_method: &str) -> Result<Option<ResponseHead>, ProxyError> {
    // Uninitialised: a zeroed array of 256 headers cost more than the parse itself.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut headers) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let status = resp.code.unwrap_or(0);
            let framing = super::body::Framing::of_response(status, request_method, resp.headers)?;
            let close = resp
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("connection") && super::has_token(h.value, "close"));
            let http11 = resp.version == Some(1);
            Ok(Some(ResponseHead { status, len, framing, keep_alive: http11 && !close, http11 }))
        }
        Err(e) => Err(ProxyError::new(ErrorKind::UpstreamInvalid, format!("malformed response head: {e}"))),
    }
}

/// `head` (a whole response head, CRLF CRLF included) as the client gets it on the
/// plain path: the upstream connection's own `Connection` and `Keep-Alive` headers
/// dropped (hop-by-hop: they speak of the upstream connection), and `Connection: close`
/// added when the client connection ends after this response. A head without those
/// headers and not closing is returned unchanged.
pub fn for_client(head: &[u8], closing: bool) -> Vec<u8> {
    let hop = |line: &[u8]| {
        let name = line.split(|&b| b == b':').next().unwrap_or_default().trim_ascii();
        name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive")
    };
    // httparse also takes bare LF line ends, mixed with CR LF: each line without either.
    let Some(fields) = without_eol(head).and_then(without_eol) else {
        return head.to_vec();
    };
    let mut lines = fields.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let rest: Vec<&[u8]> = lines.collect();
    if !closing && !rest.iter().any(|l| hop(l)) {
        return head.to_vec();
    }
    let mut out = Vec::with_capacity(head.len() + 19);
    for line in std::iter::once(status_line).chain(rest.into_iter().filter(|l| !hop(l))) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    if closing {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `line` without its line end (CR LF or a bare LF), `None` when it has none.
fn without_eol(line: &[u8]) -> Option<&[u8]> {
    line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n"))
}

/// A complete short response for an error of `kind`, with `Connection: close`.
pub fn error_response(kind: ErrorKind) -> Vec<u8> {
    let status = kind.status();
    let reason = kind.reason();
    let body = format!("{status} {reason}\n");
    let extra =
        if kind == ErrorKind::UnsupportedVersion { "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nServer: wsgate\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::Framing;

    #[test]
    fn switching_protocols() {
        let r =
            parse(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi", "GET").unwrap().unwrap();
        assert_eq!((r.status, r.len), (101, 56));
    }

    #[test]
    fn error_responses_are_well_formed() {
        let r = error_response(ErrorKind::UnsupportedVersion);
        let head = parse(&r, "GET").unwrap().unwrap();
        assert_eq!(head.status, 426);
        assert_eq!(head.framing, Framing::Length(21));
        assert_eq!(&r[head.len..], b"426 Upgrade Required\n");
        assert!(String::from_utf8(r).unwrap().contains("Sec-WebSocket-Version: 13"));
    }

    #[test]
    fn keep_alive_and_close() {
        let ok = |raw: &[u8]| parse(raw, "GET").unwrap().unwrap();
        assert!(ok(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!ok(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive);
        assert!(!ok(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        let head = b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n";
        assert_eq!(for_client(head, false), head);
        let closed = for_client(head, true);
        assert_eq!(closed, b"HTTP/1.1 204 No Content\r\nX: y\r\nConnection: close\r\n\r\n");
        assert!(!ok(&closed).keep_alive);
        let upstream = b"HTTP/1.1 200 OK\r\nConnection: close\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(for_client(upstream, false), b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(for_client(upstream, true), b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        // Bare LF line ends (which httparse takes), even mixed: the head still says close.
        let mixed = b"HTTP/1.1 200 OK\nContent-Length: 0\n\r\n";
        assert!(ok(mixed).keep_alive);
        assert!(!ok(&for_client(mixed, true)).keep_alive);
        assert_eq!(for_client(b"HTTP/1.1 200 OK\n\n", true), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn garbage_is_invalid() {
        assert_eq!(parse(b"SSH-2.0-OpenSSH\r\n\r\n", "GET").unwrap_err().kind, ErrorKind::UpstreamInvalid);
    }
}
