//! The upstream response head parser and its body framing: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::http::response;

fuzz_target!(|data: &[u8]| {
    let method = if data.first().is_some_and(|b| b & 1 == 1) { "HEAD" } else { "GET" };
    if let Ok(Some(head)) = response::parse(data, method) {
        assert!(head.len <= data.len());
    }
});
