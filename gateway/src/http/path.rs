//! The request path as routed and forwarded: normalised the way nginx normalises
//! `$uri` before matching a `location`, so `/ws/../admin`, `/ws/%2e%2e/admin` and
//! `//admin` all route (and reach the upstream) as `/admin`.
//!
//! What is done, in order: `%XX` escapes of unreserved characters (letters, digits,
//! `-._~`) are decoded and every other escape is kept with its hex in upper case; runs
//! of `/` are merged; `.` segments are dropped and `..` segments remove the segment
//! before them. The query string is kept byte-exact.
//!
//! Refused (400) rather than guessed at, because upstreams disagree on what they mean:
//! - a `..` that would climb above the root (`/../etc`);
//! - a malformed escape (`%`, `%4`, `%zz`);
//! - an encoded separator, `%2F` or `%5C`, and a raw `\` (some servers split on them);
//! - an encoded NUL or other control byte (`%00`, `%0A`, `%7F`).
//!
//! Must never panic on any input, and never produce a path longer than its input.

use crate::error::{ErrorKind, ProxyError};

/// Normalises an origin-form request target (`/path?query`). The result starts with
/// `/`, has no empty, `.` or `..` segment, and is no longer than `target`.
pub fn normalise(target: &str) -> Result<String, ProxyError> {
    let (path, query) = match target.find('?') {
        Some(i) => target.split_at(i),
        None => (target, ""),
    };
    if is_normal(path) {
        return Ok(target.to_owned());
    }
    slow(target, path, query)
}

/// Whether `path` comes out of normalising as it went in: it starts with `/` and has no
/// escape, no `\`, no empty segment but the last (`//`) and no segment starting with
/// a dot (`/.`: a `.` or `..`, or a name like `.well-known` the slow way keeps as it is).
/// Most paths are: one scan, and the target copied once.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.first() == Some(&b'/')
        && !bytes.iter().any(|&b| b == b'%' || b == b'\\')
        && !bytes.windows(2).any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
}

/// [`normalise`] the whole way: decode, then walk the segments.
fn slow(target: &str, path: &str, query: &str) -> Result<String, ProxyError> {
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/').skip(1) {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(refused(target, "`..` climbs above the root"));
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(target.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out.push_str(query);
    Ok(out)
}

/// Decodes escapes of unreserved characters; keeps the others (hex in upper case).
fn decode_unreserved(path: &str) -> Result<String, ProxyError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            return Err(refused(path, "a raw `\\`"));
        }
        if b != b'%' {
            // Copy one char (httparse passes targets in UTF-8).
            let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        let hex = |j: usize| bytes.get(j).and_then(|&h| char::from(h).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            return Err(refused(path, "a malformed `%` escape"));
        };
        let v = u8::try_from(hi * 16 + lo).unwrap_or(0);
        match v {
            b'/' | b'\\' => return Err(refused(path, "an encoded `/` or `\\`")),
            0..0x20 | 0x7f => return Err(refused(path, "an encoded control byte")),
            v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => out.push(char::from(v)),
            v => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(v >> 4)]));
                out.push(char::from(HEX[usize::from(v & 15)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

fn refused(target: &str, why: &str) -> ProxyError {
    let shown: String = target.chars().take(200).collect();
    ProxyError::new(ErrorKind::BadRequest, format!("request path `{shown}` refused: {why}"))
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn nginx_like_forms() {
        let cases = [
            ("/", "/"),
            ("/ws/chat?room=1", "/ws/chat?room=1"),
            ("/ws/../admin", "/admin"),
            ("/ws/%2e%2e/admin", "/admin"),
            ("/ws/%2E./admin", "/admin"),
            ("//admin", "/admin"),
            ("/ws//chat///x", "/ws/chat/x"),
            ("/ws/./chat", "/ws/chat"),
            ("/ws/.", "/ws/"),
            ("/ws/chat/..", "/ws/"),
            ("/ws/", "/ws/"),
            ("/a/b/../../c?x=/../y", "/c?x=/../y"),
            ("/%7euser/%41", "/~user/A"),
            ("/caf%c3%a9%20x", "/caf%C3%A9%20x"),
            ("/..foo/.bar", "/..foo/.bar"),
        ];
        for (input, want) in cases {
            assert_eq!(normalise(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn the_short_way_gives_what_the_long_way_gives() {
        // Every path of up to 6 characters over the characters that matter here.
        let alphabet = ['/', '.', 'a', '%', '2', 'e', '\\'];
        let mut paths = vec![String::from("/")];
        let mut normal = 0;
        for _ in 0..6 {
            let longer: Vec<String> =
                paths.iter().flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}"))).collect();
            for p in &longer {
                let target = format!("{p}?q=/../%");
                let (path, query) = target.split_at(p.len());
                let long = super::slow(&target, path, query).ok();
                if super::is_normal(p) {
                    normal += 1;
                    assert_eq!(long.as_deref(), Some(target.as_str()), "{target}");
                }
                assert_eq!(normalise(&target).ok(), long, "{target}");
            }
            paths = longer;
        }
        assert!(normal > 1000, "the short way was taken {normal} times");
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        for input in
            ["/..", "/ws/../../etc", "/%2e%2e/", "/a%2fb", "/a%5Cb", "/a\\b", "/%00", "/%0a", "/%", "/%4", "/%zz"]
        {
            assert!(normalise(input).is_err(), "{input}");
        }
    }
}
