//! The request head as the upstream sees it: the nginx recipe's `proxy_set_header` lines.
//!
//! The request line carries the normalised target; Host is kept; `X-Real-IP` (the client address as believed) and `X-Forwarded-Proto`
//! are set; `X-Forwarded-For` is the incoming one with the peer address appended when
//! the peer is a trusted proxy, and just the peer address otherwise: a header from an
//! untrusted peer is never passed on. Hop-by-hop headers and headers named in `Connection` are
//! dropped; `Connection: upgrade` (WebSocket) or `Connection: close` (plain HTTP, unless
//! the upstream connection is pooled) is added. Every other header (cookies, subprotocols, extensions, Origin) is passed
//! through with its value byte-exact, in order.

use std::net::IpAddr;

use super::request::RequestHead;
use super::upgrade::Intent;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the ones this proxy sets itself.
/// `Transfer-Encoding` is kept: bodies are relayed as sent, framing included.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
];

/// Headers a `Connection` token never removes: the request's Host and body framing.
const KEPT: &[&str] = &["host", "content-length", "transfer-encoding"];

/// What the proxy adds about the client.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    /// The client's address: the peer's, or the one a trusted proxy forwarded.
    pub client_ip: IpAddr,
    /// The address of the TCP peer.
    pub peer_ip: IpAddr,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-For` is kept).
    pub trusted: bool,
    /// The scheme of the listener that accepted the client (`X-Forwarded-Proto`).
    pub proto: &'a str,
}

/// Builds the upstream request head for a connection that closes after it.
pub fn upstream_head(head: &RequestHead, intent: Intent, fwd: Forwarded<'_>) -> Vec<u8> {
    upstream_head_on(head, intent, fwd, false)
}

/// Builds the upstream request head; `persistent`: the upstream connection is pooled,
/// so an HTTP/1.1 plain request goes without `Connection: close` (HTTP/1.1's default
/// is to keep the connection). HTTP/1.0 requests always get `Connection: close`.
pub fn upstream_head_on(head: &RequestHead, intent: Intent, fwd: Forwarded<'_>, persistent: bool) -> Vec<u8> {
    let named_by_connection: Vec<&[u8]> = head
        .headers_named("connection")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .collect();
    // `Connection` may not take away what the request needs: its Host and its framing
    // (found by the fuzzer: `Connection: host` left the upstream without Host).
    let dropped = |name: &[u8]| {
        let is = |n: &&str| n.as_bytes().eq_ignore_ascii_case(name);
        DROPPED.iter().any(is)
            || (!KEPT.iter().any(is) && named_by_connection.iter().any(|t| t.eq_ignore_ascii_case(name)))
    };

    let mut out = Vec::with_capacity(head.len + 128);
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    // HTTP/1.0 goes on as HTTP/1.0 (nginx's `proxy_http_version 1.0`): the upstream then
    // answers in a way a 1.0 client understands (no chunked coding, close-delimited).
    out.extend_from_slice(if head.minor_version == 0 { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
    for (name, value) in head.headers() {
        if !dropped(name) {
            push_header(&mut out, name, value);
        }
    }
    if intent == Intent::WebSocket {
        let upgrade = head.header("upgrade").unwrap_or(b"websocket");
        push_header(&mut out, b"Upgrade", upgrade);
        push_header(&mut out, b"Connection", b"upgrade");
    } else if !(persistent && head.minor_version == 1) {
        push_header(&mut out, b"Connection", b"close");
    }
    out.extend_from_slice(b"X-Real-IP: ");
    push_ip(&mut out, fwd.client_ip);
    out.extend_from_slice(b"\r\nX-Forwarded-For: ");
    for v in head.headers_named("x-forwarded-for").filter(|_| fwd.trusted) {
        let v = v.trim_ascii();
        if !v.is_empty() {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    push_ip(&mut out, fwd.peer_ip);
    out.extend_from_slice(b"\r\n");
    push_header(&mut out, b"X-Forwarded-Proto", fwd.proto.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// Appends `ip` as `Display` writes it, in ASCII: an IPv4 address by hand (once per
/// request here and once per access-log line; `Display` cost more than the rest of the
/// head's rewrite), IPv6 through `Display`.
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Written on the stack, appended once: one capacity check, not fifteen.
            let mut text = [0u8; 16];
            let mut n = 0;
            for octet in v4.octets() {
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                text[n + 1] = b'.';
                n += 2;
            }
            // Four octets of at most three digits and a dot each: n ≤ 16.
            out.extend_from_slice(&text[..n - 1]);
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{ip}");
        }
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    fn parse(buf: &[u8]) -> Result<Option<crate::http::request::RequestHead>, crate::error::ProxyError> {
        crate::http::request::parse(buf, crate::http::DEFAULT_MAX_HEADERS)
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut cases: Vec<IpAddr> = (0..=255u8).map(|o| IpAddr::from([o, 255 - o, o / 7, 9])).collect();
        cases.extend(
            ["0.0.0.0", "255.255.255.255", "10.0.100.1", "::1", "2001:db8::7", "::ffff:192.0.2.1"]
                .map(|a| a.parse::<IpAddr>().unwrap()),
        );
        for ip in cases {
            let mut out = b"x".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}").into_bytes(), "{ip}");
        }
    }

    #[test]
    fn websocket_head_is_rewritten_like_the_recipe() {
        let req = "GET /ws/chat?r=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nCookie: a=b; c=d\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\nX-Forwarded-For: 10.1.1.1\r\nX-Real-IP: 6.6.6.6\r\n\r\n";
        let head = parse(req.as_bytes()).unwrap().unwrap();
        let peer = "192.0.2.7".parse().unwrap();
        let fwd = Forwarded { client_ip: "10.1.1.1".parse().unwrap(), peer_ip: peer, trusted: true, proto: "http" };
        let out = String::from_utf8(upstream_head(&head, Intent::WebSocket, fwd)).unwrap();
        assert_eq!(
            out,
            "GET /ws/chat?r=1 HTTP/1.1\r\nHost: example.com\r\nCookie: a=b; c=d\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\nUpgrade: websocket\r\nConnection: upgrade\r\nX-Real-IP: 10.1.1.1\r\nX-Forwarded-For: 10.1.1.1, 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
        // The same head from a peer that is not trusted: its forwarding headers are replaced.
        let fwd = Forwarded { client_ip: peer, peer_ip: peer, trusted: false, proto: "http" };
        let out = String::from_utf8(upstream_head(&head, Intent::WebSocket, fwd)).unwrap();
        assert!(
            out.ends_with("X-Real-IP: 192.0.2.7\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\r\n"),
            "{out}"
        );
        assert!(!out.contains("10.1.1.1") && !out.contains("6.6.6.6"), "{out}");
    }

    #[test]
    fn connection_cannot_remove_host_or_framing() {
        let head = parse(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: host, content-length, x-y\r\nX-Y: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        let ip = "::1".parse().unwrap();
        let fwd = Forwarded { client_ip: ip, peer_ip: ip, trusted: false, proto: "http" };
        let out = String::from_utf8(upstream_head(&head, Intent::Plain, fwd)).unwrap();
        assert!(out.starts_with("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n"), "{out}");
        assert!(!out.contains("X-Y"), "{out}");
    }

    #[test]
    fn plain_head_gets_connection_close() {
        let head =
            parse(b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .unwrap();
        let ip = "::1".parse().unwrap();
        let fwd = Forwarded { client_ip: ip, peer_ip: ip, trusted: false, proto: "http" };
        let out = String::from_utf8(upstream_head(&head, Intent::Plain, fwd)).unwrap();
        assert!(out.contains("Transfer-Encoding: chunked\r\nConnection: close\r\nX-Real-IP: ::1\r\n"), "{out}");
        assert!(!out.contains("keep-alive"));
        // Pooled: no Connection header at all (HTTP/1.1 keeps the connection).
        let out = String::from_utf8(upstream_head_on(&head, Intent::Plain, fwd, true)).unwrap();
        assert!(out.contains("Transfer-Encoding: chunked\r\nX-Real-IP: ::1\r\n"), "{out}");
        assert!(!out.to_ascii_lowercase().contains("connection"), "{out}");
    }
}
