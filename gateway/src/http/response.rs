//! The upstream's response head, and the short responses wsgate writes itself.
//!
//! Must never pass on a head it could not parse, nor panic on any byte an upstream sends.

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
}

/// Parses a response head. `Ok(None)`: incomplete.
pub fn parse(buf: &[u8], request_method: &str) -> Result<Option<ResponseHead>, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let status = resp.code.unwrap_or(0);
            let framing = super::body::Framing::of_response(status, request_method, resp.headers)?;
            Ok(Some(ResponseHead { status, len, framing }))
        }
        Err(e) => Err(ProxyError::new(ErrorKind::UpstreamInvalid, format!("malformed response head: {e}"))),
    }
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
    fn garbage_is_invalid() {
        assert_eq!(parse(b"SSH-2.0-OpenSSH\r\n\r\n", "GET").unwrap_err().kind, ErrorKind::UpstreamInvalid);
    }
}
