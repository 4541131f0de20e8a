//! The client's request head: read limits aside, turn bytes into an owned head, and
//! the checks a head must pass before anything of it reaches an upstream (Host,
//! framing, version).
//!
//! Must never panic on any input: every byte here comes from the network.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use super::body::Framing;
use crate::error::{ErrorKind, ProxyError};

/// A parsed request head (owned: it outlives the read buffer). The head's bytes are
/// kept as one copy, and the raw target and the headers are spans of it: a head of ten
/// headers is three allocations (target, bytes, spans), not twenty-three.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    /// Request target as routed and forwarded: origin form with its path normalised
    /// (see [`super::path`]), e.g. `/ws/chat?room=1`.
    pub target: String,
    /// Minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub minor_version: u8,
    /// Length of the head in the buffer, including the final CRLF CRLF.
    pub len: usize,
    /// The head's bytes as sent (`len` of them).
    raw: Box<[u8]>,
    /// The request target as sent, in `raw`.
    raw_target: Span,
    /// Headers in order: name and value, in `raw`.
    fields: Vec<[Span; 2]>,
}

/// Where a part of the head is in [`RequestHead::raw`]: start and end.
type Span = (u32, u32);

/// The values of one header, in order ([`RequestHead::headers_named`]).
pub struct Named<'a, 'n> {
    head: &'a RequestHead,
    name: &'n [u8],
    /// The next field to look at.
    next: usize,
}

impl<'a> Iterator for Named<'a, '_> {
    type Item = &'a [u8];

    // Inlined where it is used, so a literal name's length and bytes fold in.
    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let head = self.head;
        while let Some(&[(start, end), value]) = head.fields.get(self.next) {
            self.next += 1;
            // By length first: most names are another.
            if (end - start) as usize == self.name.len() && head.at((start, end)).eq_ignore_ascii_case(self.name) {
                return Some(head.at(value));
            }
        }
        None
    }
}

impl RequestHead {
    /// Headers in order, names as sent, values byte-exact.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> + '_ {
        self.fields.iter().map(|[name, value]| (self.at(*name), self.at(*value)))
    }

    /// The request target exactly as sent, for logs.
    pub fn raw_target(&self) -> &str {
        // The span of the `&str` httparse gave: UTF-8.
        std::str::from_utf8(self.at(self.raw_target)).unwrap_or_default()
    }

    /// The first value of header `name` (case-insensitive).
    #[inline]
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers_named(name).next()
    }

    /// Every value of header `name` (case-insensitive), in order.
    #[inline]
    pub fn headers_named<'n>(&self, name: &'n str) -> Named<'_, 'n> {
        Named { head: self, name: name.as_bytes(), next: 0 }
    }

    #[inline]
    fn at(&self, (start, end): Span) -> &[u8] {
        self.raw.get(start as usize..end as usize).unwrap_or_default()
    }

    /// The Host header without port, lowercased, for routing and logs (borrowed when
    /// it is lowercase already, as it mostly is).
    pub fn host(&self) -> Option<Cow<'_, str>> {
        let h = std::str::from_utf8(self.header("host")?).ok()?.trim();
        // The port is cut at a byte: `:` and `]` are ASCII, so every cut is at a char
        // boundary (and a byte search costs a fraction of a char pattern's).
        let bytes = h.as_bytes();
        let end = if bytes.first() == Some(&b'[') {
            bytes.iter().position(|&b| b == b']').map_or(h.len(), |i| i + 1)
        } else {
            bytes.iter().rposition(|&b| b == b':').unwrap_or(h.len())
        };
        let h = &h[..end];
        Some(if h.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(h.to_ascii_lowercase())
        } else {
            Cow::Borrowed(h)
        })
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// `METHOD target HTTP/1.x` for logs, with the target as sent.
    pub fn request_line(&self) -> String {
        // Concatenated, not `format!`: this runs for every request (the access log).
        let (method, target) = (&*self.method, self.raw_target());
        let mut line = String::with_capacity(method.len() + target.len() + 10);
        for part in [method, " ", target, " HTTP/1."] {
            line.push_str(part);
        }
        line.push(char::from(b'0' + self.minor_version.min(9)));
        line
    }

    /// How the request's body is delimited (RFC 9112 §6.3): chunked, a length, or none
    /// at all (a request never runs until close). Meaningful once [`check_framing`] passed.
    pub fn framing(&self) -> Framing {
        if self.header("transfer-encoding").is_some() {
            return Framing::Chunked;
        }
        match self.header("content-length").and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok()) {
            Some(n) => Framing::Length(n),
            None => Framing::Empty,
        }
    }
}

/// A request's method: the standard ones borrowed, without an allocation per request.
pub type Method = Cow<'static, str>;

/// `method` as a [`Method`].
pub fn method_of(method: &str) -> Method {
    const STANDARD: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    STANDARD.iter().find(|m| **m == method).map_or_else(|| Cow::Owned(method.to_owned()), |m| Cow::Borrowed(*m))
}

/// Headers a head is parsed into without a heap array (browsers send 10–30).
const STACK_HEADERS: usize = 64;

/// Parses a request head from `buf`, with at most `max_headers` headers (more is 431).
/// `Ok(None)`: incomplete, read more.
pub fn parse(buf: &[u8], max_headers: usize) -> Result<Option<RequestHead>, ProxyError> {
    // Uninitialised: a zeroed array of `max_headers` (256 by default) cost more than
    // the parse of a usual head. A head with more than fit on the stack is parsed again
    // into one as long as the limit.
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let first = parse_into(buf, &mut stack[..max_headers.min(STACK_HEADERS)], max_headers);
    match first {
        Err(e) if e.kind == ErrorKind::HeadersTooLarge && max_headers > STACK_HEADERS => {
            let mut heap: Vec<httparse::Header<'_>> = Vec::with_capacity(max_headers);
            parse_into(buf, &mut heap.spare_capacity_mut()[..max_headers], max_headers)
        }
        other => other,
    }
}

/// [`parse`] with room for `headers.len()` headers; more is 431 (`max_headers` is the
/// limit it names).
fn parse_into<'b>(
    buf: &'b [u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
    max_headers: usize,
) -> Result<Option<RequestHead>, ProxyError> {
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, headers) {
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
            let normalised = super::path::normalise(target)?;
            // Every slice httparse gives is of `buf[..len]`; a head past 4 GiB has no
            // spans (the head's limit is far below).
            let base = buf.as_ptr().addr();
            let span = |part: &[u8]| -> Result<Span, ProxyError> {
                let start = part.as_ptr().addr().checked_sub(base);
                let end = start.and_then(|s| s.checked_add(part.len())).filter(|&e| e <= len);
                match (start.map(u32::try_from), end.map(u32::try_from)) {
                    (Some(Ok(start)), Some(Ok(end))) => Ok((start, end)),
                    _ => Err(ProxyError::new(ErrorKind::HeadersTooLarge, "request head too large")),
                }
            };
            let mut fields = Vec::with_capacity(req.headers.len());
            for h in &*req.headers {
                fields.push([span(h.name.as_bytes())?, span(h.value)?]);
            }
            Ok(Some(RequestHead {
                method: method_of(method),
                target: normalised,
                minor_version,
                len,
                raw_target: span(target.as_bytes())?,
                raw: Box::from(&buf[..len]),
                fields,
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(ProxyError::new(
            ErrorKind::HeadersTooLarge,
            format!("more than {max_headers} request headers (limits.max_headers)"),
        )),
        Err(e) => Err(ProxyError::new(ErrorKind::BadRequest, format!("malformed request head: {e}"))),
    }
}

/// The Host rules of RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host; an
/// HTTP/1.0 request may carry none, but wsgate refuses it then (it routes by Host and
/// forwards HTTP/1.0 as it came, so the upstream would have no name to go by). A Host
/// value is a name or address with an optional port, nothing else.
pub fn check_host(head: &RequestHead) -> Result<(), ProxyError> {
    let bad = |d: &str| Err(ProxyError::new(ErrorKind::BadRequest, d.to_owned()));
    let mut hosts = head.headers_named("host");
    let Some(host) = hosts.next() else {
        return bad(if head.minor_version == 1 {
            "HTTP/1.1 request without Host"
        } else {
            "HTTP/1.0 request without Host (send Host, or use HTTP/1.1)"
        });
    };
    if hosts.next().is_some() {
        return bad("more than one Host header");
    }
    if host.is_empty() || !host.iter().all(|&b| HOST_BYTES[usize::from(b)]) {
        return bad("Host must be a name or address with an optional port");
    }
    Ok(())
}

/// The bytes a Host value may have: a name or address (letters, digits, the unreserved,
/// sub-delims, `%`, and `[`, `]` and `:` of IPv6 literals and the port), by byte value.
static HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~!$&'()*+,;=:[]%";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

/// Request framing checks that protect the upstream from smuggling: a body is framed
/// by exactly one of Content-Length or chunked Transfer-Encoding, and an HTTP/1.0
/// request (which has no chunked coding) carries no Transfer-Encoding at all.
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
        if head.minor_version == 0 {
            return bad("Transfer-Encoding in an HTTP/1.0 request");
        }
        if first.is_some() {
            return bad("both Content-Length and Transfer-Encoding");
        }
        // The codings of every Transfer-Encoding line, in order (RFC 9110 §5.3: lines
        // combine as one list). Chunked is applied once, last (RFC 9112 §6.1).
        let codings: Vec<&[u8]> = head
            .headers_named("transfer-encoding")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect();
        let chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
        if !codings.last().is_some_and(|c| chunked(c)) {
            return bad("Transfer-Encoding must end in chunked");
        }
        if codings.iter().filter(|c| chunked(c)).count() > 1 {
            return bad("chunked applied more than once in Transfer-Encoding");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_(buf: &[u8]) -> Result<Option<RequestHead>, ProxyError> {
        parse(buf, 256)
    }

    #[test]
    fn partial_then_complete() {
        assert!(parse_(b"GET /ws HTTP/1.1\r\nHost: a").unwrap().is_none());
        let h = parse_(b"GET /ws?x=1 HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\nextra").unwrap().unwrap();
        assert_eq!(h.len, 48);
        assert_eq!(h.host().as_deref(), Some("example.com"));
        assert_eq!(h.path(), "/ws");
    }

    #[test]
    fn host_drops_the_port_and_lowercases() {
        let cases = [
            ("example.com", "example.com"),
            ("example.com:80", "example.com"),
            ("  Example.COM:8080 ", "example.com"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("[FE80::1", "[fe80::1"),
            ("a:b:c", "a:b"),
            (":80", ""),
        ];
        for (value, host) in cases {
            let h = parse_(format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n").as_bytes()).unwrap().unwrap();
            assert_eq!(h.host().as_deref(), Some(host), "{value:?}");
        }
        assert_eq!(parse_(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().host(), None);
    }

    #[test]
    fn garbage_is_bad_request() {
        for input in
            [&b"\x00\x01\x02\r\n\r\n"[..], b"GET\r\n\r\n", b"GET http://x/ HTTP/1.1\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"]
        {
            let e = parse_(input).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{input:?}");
        }
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let h = parse_(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap().unwrap();
        assert!(check_framing(&h).is_err());
        let h = parse_(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n").unwrap().unwrap();
        assert!(check_framing(&h).is_err());
        let h = parse_(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").unwrap().unwrap();
        assert!(check_framing(&h).is_err());
        let h = parse_(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap().unwrap();
        assert!(check_framing(&h).is_ok());
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    fn check(raw: &str) -> Result<(), ProxyError> {
        check_host(&parse(raw.as_bytes(), 256).unwrap().unwrap())
    }

    #[test]
    fn host_rules() {
        assert!(check("GET / HTTP/1.1\r\nHost: a.example:80\r\n\r\n").is_ok());
        assert!(check("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").is_ok());
        assert!(check("GET / HTTP/1.0\r\nHost: a\r\n\r\n").is_ok());
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
        ] {
            assert_eq!(check(bad).unwrap_err().kind, ErrorKind::BadRequest, "{bad}");
        }
    }

    #[test]
    fn the_host_byte_table_is_its_rule() {
        for b in 0..=255u8 {
            let rule = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b);
            assert_eq!(HOST_BYTES[usize::from(b)], rule, "byte {b:#04x}");
        }
    }

    #[test]
    fn too_many_headers_names_the_limit() {
        let headers = (0..200).fold(String::new(), |mut s, i| {
            use std::fmt::Write as _;
            let _ = write!(s, "X-{i}: v\r\n");
            s
        });
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{headers}\r\n");
        let head = parse(raw.as_bytes(), 256).unwrap().unwrap();
        assert_eq!(head.headers().len(), 201);
        assert_eq!(head.headers().last(), Some((&b"X-199"[..], &b"v"[..])));
        // Past the headers parsed on the stack, the limit is still exact.
        assert!(parse(raw.as_bytes(), 201).unwrap().is_some());
        for limit in [200, 100, 64, 10] {
            let e = parse(raw.as_bytes(), limit).unwrap_err();
            assert_eq!(e.kind, ErrorKind::HeadersTooLarge);
            assert!(e.detail.contains(&format!("more than {limit} ")), "{}", e.detail);
            assert!(e.detail.contains("limits.max_headers"), "{}", e.detail);
        }
        // A partial head longer than the stack's headers reads on.
        let cut = raw.len() - 20;
        assert!(parse(&raw.as_bytes()[..cut], 256).unwrap().is_none());
    }

    #[test]
    fn target_is_normalised_and_raw_kept() {
        let h = parse(b"GET /ws/%2e%2e/admin?q=1 HTTP/1.1\r\nHost: a\r\n\r\n", 256).unwrap().unwrap();
        assert_eq!(h.target, "/admin?q=1");
        assert_eq!(h.path(), "/admin");
        assert_eq!(h.request_line(), "GET /ws/%2e%2e/admin?q=1 HTTP/1.1");
        assert!(parse(b"GET /../x HTTP/1.1\r\nHost: a\r\n\r\n", 256).is_err());
        let h = parse(b"GET /a?b HTTP/1.0\r\n\r\n", 256).unwrap().unwrap();
        assert_eq!(h.request_line(), "GET /a?b HTTP/1.0");
    }

    #[test]
    fn headers_come_back_in_order_names_as_sent_values_byte_exact() {
        let raw = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Obs: caf\xe9 \"q\"\r\nx-obs: 2\r\nEmpty:\r\nHOST2: b\r\n\r\nbody";
        let h = parse(raw, 256).unwrap().unwrap();
        let want: [(&[u8], &[u8]); 5] =
            [(b"Host", b"a"), (b"X-Obs", b"caf\xe9 \"q\""), (b"x-obs", b"2"), (b"Empty", b""), (b"HOST2", b"b")];
        assert_eq!(h.headers().collect::<Vec<_>>(), want);
        assert_eq!(h.headers().len(), 5);
        // Looked up in any case; every value of a name in order; a longer or shorter
        // name is another.
        assert_eq!(h.headers_named("X-OBS").collect::<Vec<_>>(), [&b"caf\xe9 \"q\""[..], b"2"]);
        assert_eq!(h.header("host"), Some(&b"a"[..]));
        assert_eq!(h.header("hos"), None);
        assert_eq!(h.header("empty"), Some(&b""[..]));
        // The head outlives the buffer it was read from.
        let mut buf = raw.to_vec();
        let h = parse(&buf, 256).unwrap().unwrap();
        buf.fill(0);
        assert_eq!(h.header("hOsT2"), Some(&b"b"[..]));
        assert_eq!(h.raw_target(), "/x");
        // The target as sent, also where normalising changes it, and not ASCII.
        let h = parse("GET /a/../caf\u{e9}%41?q=%2e HTTP/1.1\r\nHost: a\r\n\r\n".as_bytes(), 256).unwrap().unwrap();
        assert_eq!((h.raw_target(), h.target.as_str()), ("/a/../caf\u{e9}%41?q=%2e", "/caf\u{e9}A?q=%2e"));
        assert_eq!(h.request_line(), "GET /a/../caf\u{e9}%41?q=%2e HTTP/1.1");
    }
}
