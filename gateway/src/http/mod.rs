//! HTTP/1.1 heads: parsing with `httparse`, RFC 6455 upgrade validation, the rewrite
//! of the request for the upstream, response heads and body framing.
//!
//! Pure functions over byte slices: nothing here does I/O, and nothing here may panic
//! on any input (every parser is fed bytes straight from the network).

pub mod body;
pub mod path;
pub mod request;
pub mod response;
pub mod rewrite;
pub mod upgrade;

/// Default of `limits.max_headers` (see the config).
pub use crate::config::DEFAULT_MAX_HEADERS;

/// Headers an upstream response head may carry at most; more is 502.
pub const MAX_RESPONSE_HEADERS: usize = 256;

/// Case-insensitive check whether a comma-separated header value contains `token`.
pub fn has_token(value: &[u8], token: &str) -> bool {
    let token = token.as_bytes();
    // Most values are one token (`Upgrade`, `websocket`, `close`): one comparison.
    if !value.contains(&b',') {
        return value.trim_ascii().eq_ignore_ascii_case(token);
    }
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens() {
        assert!(super::has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(!super::has_token(b"keep-alive,upgrades", "upgrade"));
        assert!(!super::has_token(b"", "upgrade"));
        assert!(super::has_token(b" UPGRADE\t", "upgrade"));
        assert!(!super::has_token(b"upgrades", "upgrade"));
        assert!(super::has_token(b"close ,x", "close"));
        assert!(!super::has_token(b",", "close"));
    }
}
