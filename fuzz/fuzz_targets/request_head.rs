//! The request head parser and the checks before routing (Host, framing), fed any
//! bytes: never a panic, and what parses is consistent with itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::http::request;

fuzz_target!(|data: &[u8]| {
    let max_headers = 1 + usize::from(data.first().copied().unwrap_or(0));
    let Ok(Some(head)) = request::parse(data, max_headers) else { return };
    assert!(head.len <= data.len());
    assert!(head.headers().len() <= max_headers);
    assert!(head.target.starts_with('/') && head.target.len() <= head.raw_target().len());
    // Every header comes back from a lookup by its name (in another case too).
    for (name, value) in head.headers() {
        let name = std::str::from_utf8(name).expect("header names are tokens");
        assert!(head.headers_named(&name.to_ascii_uppercase()).any(|v| v == value));
    }
    let _ = head.host();
    let _ = head.request_line();
    let _ = request::check_host(&head);
    if request::check_framing(&head).is_ok() {
        let _ = head.framing();
    }
});
