//! The upstream head rewrite: whatever head a client sends, the head wsgate builds
//! parses again as one complete head (nothing after it), with exactly one Host when the
//! request had one, no hop-by-hop header, and the forwarding headers last.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::http::request;
use wsgate::http::rewrite::{Forwarded, upstream_head};
use wsgate::http::upgrade::{Intent, classify};

const HOP_BY_HOP: &[&str] = &["keep-alive", "proxy-connection", "te", "trailer", "proxy-authenticate"];

fuzz_target!(|data: &[u8]| {
    let Ok(Some(head)) = request::parse(data, 64) else { return };
    if request::check_host(&head).is_err() || request::check_framing(&head).is_err() {
        return;
    }
    let Ok(intent) = classify(&head) else { return };
    let ip = "192.0.2.1".parse().unwrap();
    let fwd = Forwarded { client_ip: ip, peer_ip: ip, trusted: data.len() % 2 == 0, proto: "http" };
    let out = upstream_head(&head, intent, fwd);
    let again = match request::parse(&out, 128) {
        Ok(Some(h)) => h,
        other => panic!("rewritten head does not parse: {other:?}\n{}", String::from_utf8_lossy(&out)),
    };
    assert_eq!(again.len, out.len(), "bytes after the rewritten head");
    assert_eq!(again.headers_named("host").count(), 1);
    assert_eq!(again.target, head.target);
    for name in HOP_BY_HOP {
        assert!(again.header(name).is_none(), "{name} survived");
    }
    assert_eq!(again.headers_named("connection").count(), 1);
    assert_eq!(again.headers_named("x-forwarded-for").count(), 1);
    let upgrade = if intent == Intent::WebSocket { 1 } else { 0 };
    assert_eq!(again.headers_named("upgrade").count(), upgrade);
    let xff = again.header("x-forwarded-for").unwrap();
    assert!(xff.ends_with(b"192.0.2.1"));
});
