//! The client's request head: read limits aside, turn bytes into an owned head.

use super::MAX_HEADERS;
use crate::error::{ErrorKind, ProxyError};

/// A parsed request head (owned: it outlives the read buffer).
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    /// Request target as sent (origin form, e.g. `/ws/chat?room=1`).
    pub target: String,
    /// Minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub minor_version: u8,
    /// Headers in order, names as sent, values byte-exact.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Length of the head in the buffer, including the final CRLF CRLF.
    pub len: usize,
}

impl RequestHead {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// Every value of header `name`, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The Host header without port, lowercased, for routing and logs.
    pub fn host(&self) -> Option<String> {
        let h = std::str::from_utf8(self.header("host")?).ok()?.trim();
        let h = if h.starts_with('[') {
            h.split_inclusive(']').next().unwrap_or(h)
        } else {
            h.rsplit_once(':').map_or(h, |(host, _)| host)
        };
        Some(h.to_ascii_lowercase())
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// `METHOD target HTTP/1.x` for logs.
    pub fn request_line(&self) -> String {
        format!("{} {} HTTP/1.{}", self.method, self.target, self.minor_version)
    }
}

/// Parses a request head from `buf`. `Ok(None)`: incomplete, read more.
pub fn parse(buf: &[u8]) -> Result<Option<RequestHead>, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version) else {
                return Err(ProxyError::new(ErrorKind::BadRequest, "incomplete request line"));
            };
            if !target.starts_with('/') {
                return Err(ProxyError::new(
                    ErrorKind::BadRequest,
                    format!("request target `{target}` is not origin-form"),
                ));
            }
            let headers = req.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect();
            Ok(Some(RequestHead { method: method.to_owned(), target: target.to_owned(), minor_version, headers, len }))
        }
        Err(httparse::Error::TooManyHeaders) => {
            Err(ProxyError::new(ErrorKind::HeadersTooLarge, format!("more than {MAX_HEADERS} request headers")))
        }
        Err(e) => Err(ProxyError::new(ErrorKind::BadRequest, format!("malformed request head: {e}"))),
    }
}

/// Request framing checks that protect the upstream from smuggling: a body is framed
/// by exactly one of Content-Length or chunked Transfer-Encoding.
pub fn check_framing(head: &RequestHead) -> Result<(), ProxyError> {
    let bad = |d: &str| Err(ProxyError::new(ErrorKind::BadRequest, d.to_owned()));
    let mut lengths = head.headers_named("content-length");
    let first = lengths.next();
    if let Some(v) = first {
        let valid = !v.is_empty() && v.iter().all(u8::is_ascii_digit) && v.len() <= 18;
        if !valid || lengths.any(|o| o != v) {
            return bad("invalid or conflicting Content-Length");
        }
    }
    let mut te = head.headers_named("transfer-encoding").peekable();
    if te.peek().is_some() {
        if first.is_some() {
            return bad("both Content-Length and Transfer-Encoding");
        }
        let last = head.headers_named("transfer-encoding").last().unwrap_or_default();
        let final_coding = last.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
        if !final_coding.eq_ignore_ascii_case(b"chunked") {
            return bad("Transfer-Encoding must end in chunked");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_then_complete() {
        assert!(parse(b"GET /ws HTTP/1.1\r\nHost: a").unwrap().is_none());
        let h = parse(b"GET /ws?x=1 HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\nextra").unwrap().unwrap();
        assert_eq!(h.len, 48);
        assert_eq!(h.host().as_deref(), Some("example.com"));
        assert_eq!(h.path(), "/ws");
    }

    #[test]
    fn garbage_is_bad_request() {
        for input in
            [&b"\x00\x01\x02\r\n\r\n"[..], b"GET\r\n\r\n", b"GET http://x/ HTTP/1.1\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"]
        {
            let e = parse(input).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{input:?}");
        }
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let h = parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap().unwrap();
        assert!(check_framing(&h).is_err());
        let h = parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n").unwrap().unwrap();
        assert!(check_framing(&h).is_err());
        let h = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").unwrap().unwrap();
        assert!(check_framing(&h).is_err());
        let h = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap().unwrap();
        assert!(check_framing(&h).is_ok());
    }
}
