//! RFC 6455 upgrade validation over any parsed head: never a panic; a head judged a
//! WebSocket upgrade really is a GET over HTTP/1.1 with Host and no body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::http::request;
use wsgate::http::upgrade::{Intent, classify};

fuzz_target!(|data: &[u8]| {
    let Ok(Some(head)) = request::parse(data, 64) else { return };
    if let Ok(Intent::WebSocket) = classify(&head) {
        assert_eq!(head.method, "GET");
        assert_eq!(head.minor_version, 1);
        assert!(head.header("host").is_some());
        assert!(head.header("transfer-encoding").is_none());
    }
});
