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

/// Case-insensitive check whether a comma-separated header value contains `token`
/// (given in lowercase).
pub fn has_token(value: &[u8], token: &str) -> bool {
    let token = token.as_bytes();
    debug_assert!(!token.iter().any(u8::is_ascii_uppercase), "tokens are given in lowercase");
    // One pass, byte by byte: values are a token or two, where the standard library's
    // search, trim and chunked comparison cost several times more.
    let mut rest = value;
    loop {
        let end = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
        let item = rest[..end].trim_ascii();
        if item.len() == token.len() && item.iter().zip(token).all(|(&a, &b)| a.to_ascii_lowercase() == b) {
            return true;
        }
        match rest.get(end + 1..) {
            Some(next) => rest = next,
            None => return false,
        }
    }
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
        assert!(super::has_token(b"a,,b ,\tClose", "close"));
        assert!(super::has_token(b"close,", "close"));
        assert!(!super::has_token(b"clos,e", "close"));
        assert!(!super::has_token(b"cl ose", "close"));
        assert!(!super::has_token(b"close-ish, closed", "close"));
    }
}
