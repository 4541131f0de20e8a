//! Property tests of the upstream head rewrite over generated request heads: whatever
//! headers a client sends (hop-by-hop ones, `Connection` naming others, forged
//! forwarding headers, repeats, any case), the head wsgate sends upstream parses again
//! as exactly one head with nothing after it, carries exactly one Host (the client's),
//! no hop-by-hop header, `X-Forwarded-For` with the peer appended (to the incoming one
//! only from a trusted peer), and every other header byte-exact and in order.

use std::fmt::Write as _;
use std::net::IpAddr;

use proptest::prelude::*;
use wsgate::http::request::{self, RequestHead};
use wsgate::http::rewrite::{Forwarded, upstream_head};
use wsgate::http::upgrade::{Intent, classify};

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the forwarding headers wsgate sets itself.
const NEVER_PASSED: &[&str] = &[
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

/// Header names the generator draws from: hop-by-hop, forwarding, WebSocket, ordinary.
const NAMES: &[&str] = &[
    "Connection",
    "connection",
    "Keep-Alive",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Upgrade",
    "X-Forwarded-For",
    "x-forwarded-for",
    "X-Real-IP",
    "X-Forwarded-Proto",
    "Cookie",
    "Origin",
    "Sec-WebSocket-Protocol",
    "X-Custom",
    "X-Other",
    "Accept",
];

fn header() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        3 => proptest::sample::select(NAMES).prop_map(str::to_owned),
        1 => "[A-Za-z][A-Za-z0-9-]{0,12}",
    ];
    // Visible ASCII and inner spaces; a Connection value lists header names.
    let value = prop_oneof![
        3 => "[!-~]([ !-~]{0,24}[!-~])?",
        1 => proptest::collection::vec(proptest::sample::select(NAMES), 1..4).prop_map(|v| v.join(", ")),
        1 => "(upgrade|keep-alive|close|x-custom|host|content-length)(, ?(upgrade|x-other|te|cookie))?",
    ];
    (name, value)
}

/// A WebSocket upgrade or a plain request, with generated headers around one Host.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let target = "/[a-z0-9_-]{0,12}(/[a-z0-9_-]{1,8}){0,3}(\\?[a-z0-9=&]{0,10})?";
    let before = proptest::collection::vec(header(), 0..8);
    let after = proptest::collection::vec(header(), 0..8);
    (any::<bool>(), target, before, after).prop_map(|(websocket, target, before, after)| {
        let mut s = format!("GET {target} HTTP/1.1\r\n");
        for (n, v) in &before {
            let _ = write!(s, "{n}: {v}\r\n");
        }
        s.push_str("Host: app.example:8080\r\n");
        if websocket {
            s.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
            s.push_str("Sec-WebSocket-Version: 13\r\n");
        }
        for (n, v) in &after {
            let _ = write!(s, "{n}: {v}\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    })
}

/// The incoming head's headers that must reach the upstream as they were, in order.
fn passed_on(head: &RequestHead) -> Vec<(String, Vec<u8>)> {
    let named: Vec<String> = head
        .headers_named("connection")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .collect();
    head.headers()
        .map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v.to_vec()))
        .filter(|(lower, _)| {
            let framing = ["host", "content-length", "transfer-encoding"].contains(&lower.as_str());
            !NEVER_PASSED.contains(&lower.as_str()) && (framing || !named.contains(lower))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_rewritten_head_keeps_its_invariants(bytes in request(), trusted in any::<bool>(), v6 in any::<bool>()) {
        let head = match request::parse(&bytes, 256) {
            Ok(Some(h)) => h,
            other => return Err(TestCaseError::fail(format!("generated head does not parse: {other:?}"))),
        };
        // Heads the checks before the rewrite refuse never reach it.
        prop_assume!(request::check_host(&head).is_ok() && request::check_framing(&head).is_ok());
        let Ok(intent) = classify(&head) else { return Ok(()) };
        let peer: IpAddr = if v6 { "2001:db8::7".parse().unwrap() } else { "192.0.2.7".parse().unwrap() };
        let fwd = Forwarded { client_ip: peer, peer_ip: peer, trusted, proto: "https" };
        let out = upstream_head(&head, intent, fwd);

        // One complete head, nothing after it.
        let again = match request::parse(&out, 256) {
            Ok(Some(h)) => h,
            other => return Err(TestCaseError::fail(format!("rewritten head does not parse: {other:?}"))),
        };
        prop_assert_eq!(again.len, out.len(), "bytes after the rewritten head");
        prop_assert_eq!(&again.target, &head.target);
        // Exactly one Host, the client's.
        prop_assert_eq!(again.headers_named("host").collect::<Vec<_>>(), vec![&b"app.example:8080"[..]]);
        // No hop-by-hop header but the Connection (and Upgrade) wsgate sets itself.
        for name in ["keep-alive", "proxy-connection", "proxy-authenticate", "te", "trailer"] {
            prop_assert!(again.header(name).is_none(), "{} survived", name);
        }
        let connection: Vec<&[u8]> = again.headers_named("connection").collect();
        let upgrade: Vec<&[u8]> = again.headers_named("upgrade").collect();
        if intent == Intent::WebSocket {
            prop_assert_eq!(connection, vec![&b"upgrade"[..]]);
            prop_assert_eq!(upgrade.len(), 1);
        } else {
            prop_assert_eq!(connection, vec![&b"close"[..]]);
            prop_assert!(upgrade.is_empty());
        }
        // X-Forwarded-For: the peer appended, to the incoming chain only when trusted.
        let xff: Vec<&[u8]> = again.headers_named("x-forwarded-for").collect();
        prop_assert_eq!(xff.len(), 1);
        let mut want: Vec<String> = Vec::new();
        if trusted {
            want.extend(
                head.headers_named("x-forwarded-for")
                    .map(|v| String::from_utf8_lossy(v.trim_ascii()).into_owned())
                    .filter(|v| !v.is_empty()),
            );
        }
        want.push(peer.to_string());
        prop_assert_eq!(String::from_utf8_lossy(xff[0]), want.join(", "));
        let peer_text = peer.to_string();
        prop_assert_eq!(again.headers_named("x-real-ip").collect::<Vec<_>>(), vec![peer_text.as_bytes()]);
        prop_assert_eq!(again.headers_named("x-forwarded-proto").collect::<Vec<_>>(), vec![&b"https"[..]]);
        // Every other header byte-exact, in order, nothing added.
        let theirs: Vec<(String, Vec<u8>)> = again
            .headers()
            .map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v.to_vec()))
            .filter(|(lower, _)| !NEVER_PASSED.contains(&lower.as_str()))
            .collect();
        prop_assert_eq!(theirs, passed_on(&head));
    }
}
