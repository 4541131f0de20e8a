//! The upstream response head parser and its body framing, and the head as the client
//! gets it on the plain path (`for_client`): never a panic; the rewritten head, when it
//! parses, keeps the status and framing, and says close exactly when asked to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::http::response;

fuzz_target!(|data: &[u8]| {
    let method = if data.first().is_some_and(|b| b & 1 == 1) { "HEAD" } else { "GET" };
    if let Ok(Some(head)) = response::parse(data, method) {
        assert!(head.len <= data.len());
        for closing in [false, true] {
            let out = response::for_client(&data[..head.len], closing);
            if let Ok(Some(again)) = response::parse(&out, method) {
                assert_eq!((again.status, again.framing), (head.status, head.framing));
                if closing {
                    assert!(!again.keep_alive);
                }
            }
        }
    }
});
