//! Where an HTTP/1.1 message body ends (RFC 9112 §6.3), so a response can be passed
//! on exactly and the connection closed right after it, without buffering the body.
//!
//! Must never buffer a body, trust a length it could not parse, or panic on any byte.

use crate::error::{ErrorKind, ProxyError};

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (1xx, 204, 304, responses to HEAD).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes the connection.
    UntilClose,
}

impl Framing {
    /// The framing of a response to `method` with `status` and `headers`.
    pub fn of_response(status: u16, method: &str, headers: &[httparse::Header<'_>]) -> Result<Self, ProxyError> {
        if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(Self::Empty);
        }
        let invalid = |d: &str| Err(ProxyError::new(ErrorKind::UpstreamInvalid, d.to_owned()));
        let te = headers.iter().rfind(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
        if let Some(te) = te {
            let last = te.value.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
            return Ok(if last.eq_ignore_ascii_case(b"chunked") { Self::Chunked } else { Self::UntilClose });
        }
        let mut len = None;
        for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
            let v = std::str::from_utf8(h.value).ok().and_then(|s| s.trim().parse::<u64>().ok());
            match (v, len) {
                (None, _) => return invalid("invalid Content-Length"),
                (Some(v), Some(prev)) if v != prev => return invalid("conflicting Content-Length"),
                (Some(v), _) => len = Some(v),
            }
        }
        Ok(len.map_or(Self::UntilClose, Self::Length))
    }
}

/// Tracks a body as it streams past; tells how much of each slice belongs to it.
#[derive(Debug, Clone)]
pub struct BodyTracker {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Done,
    Remaining(u64),
    UntilClose,
    /// Chunked: reading the hex size (value so far, digits seen).
    Size(u64, u8),
    /// Chunked: skipping a chunk extension up to LF (size to follow).
    Extension(u64),
    /// Chunked: chunk data left, then CRLF.
    Data(u64),
    /// Chunked: CRLF after data (`true` once CR was seen).
    DataEnd(bool),
    /// Chunked trailers: at the start of a line (`true`) or inside one (`false`).
    Trailer(bool),
}

impl BodyTracker {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Remaining(n),
            Framing::Chunked => State::Size(0, 0),
            Framing::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    /// True once the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes body bytes from `buf`; returns how many belong to the body (the rest,
    /// if any, follows the message). Errors on malformed chunked framing.
    pub fn advance(&mut self, buf: &[u8]) -> Result<usize, ProxyError> {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Done => return Ok(i),
                State::UntilClose => return Ok(buf.len()),
                State::Remaining(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len() - i);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 { State::Done } else { State::Remaining(left) };
                }
                State::Data(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len() - i);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 { State::DataEnd(false) } else { State::Data(left) };
                }
                state => {
                    self.state = step_chunked(state, buf[i])?;
                    i += 1;
                }
            }
        }
        Ok(i)
    }
}

fn step_chunked(state: State, b: u8) -> Result<State, ProxyError> {
    let bad = || Err(ProxyError::new(ErrorKind::UpstreamInvalid, "malformed chunked body"));
    Ok(match (state, b) {
        (State::Size(v, digits), b) if b.is_ascii_hexdigit() => {
            if digits >= 15 {
                return bad();
            }
            let d = u64::from(char::from(b).to_digit(16).unwrap_or(0));
            State::Size(v * 16 + d, digits + 1)
        }
        (State::Size(v, d), b';' | b' ' | b'\t' | b'\r') if d > 0 => State::Extension(v),
        (State::Size(v, d), b'\n') if d > 0 => end_of_size_line(v),
        (State::Extension(v), b'\n') => end_of_size_line(v),
        (State::Extension(v), _) => State::Extension(v),
        (State::DataEnd(false), b'\r') => State::DataEnd(true),
        (State::DataEnd(_), b'\n') => State::Size(0, 0),
        (State::Trailer(true), b'\n') => State::Done,
        (State::Trailer(true), b'\r') | (State::Trailer(_), b'\n') => State::Trailer(true),
        (State::Trailer(_), _) => State::Trailer(false),
        _ => return bad(),
    })
}

fn end_of_size_line(size: u64) -> State {
    if size == 0 { State::Trailer(true) } else { State::Data(size) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_bytewise(framing: Framing, input: &[u8]) -> (usize, bool) {
        let mut t = BodyTracker::new(framing);
        let mut used = 0;
        for chunk in input.chunks(1) {
            let n = t.advance(chunk).unwrap();
            used += n;
            if n < chunk.len() {
                break;
            }
        }
        (used, t.is_done())
    }

    #[test]
    fn chunked_ends_exactly() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut t = BodyTracker::new(Framing::Chunked);
        assert_eq!(t.advance(body).unwrap(), body.len() - 4);
        assert!(t.is_done());
        assert_eq!(feed_bytewise(Framing::Chunked, body), (body.len() - 4, true));
        assert_eq!(feed_bytewise(Framing::Chunked, b"0\r\n\r\n"), (5, true));
    }

    #[test]
    fn length_and_errors() {
        let mut t = BodyTracker::new(Framing::Length(3));
        assert_eq!(t.advance(b"ab").unwrap(), 2);
        assert_eq!(t.advance(b"cd").unwrap(), 1);
        assert!(t.is_done());
        let mut t = BodyTracker::new(Framing::Chunked);
        assert!(t.advance(b"zz\r\n").is_err());
        let mut t = BodyTracker::new(Framing::Chunked);
        assert!(t.advance(b"ffffffffffffffffff\r\n").is_err());
        let mut t = BodyTracker::new(Framing::Chunked);
        assert!(t.advance(b"1\r\nab").is_err());
    }
}
