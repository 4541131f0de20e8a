//! Frame headers (RFC 6455 §5.2), masking, opcodes and close codes.
//!
//! Parsing works on whatever prefix of a frame has arrived and says how many bytes it still
//! needs; it never panics on any input and never trusts a length before checking it against
//! the caller's limit.

/// Continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// Normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// 7-bit length value announcing a 16-bit length.
const LEN16: u8 = 126;
/// 7-bit length value announcing a 64-bit length.
const LEN64: u8 = 127;

/// The longest possible frame header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER: usize = 14;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Final fragment of a message.
    pub fin: bool,
    /// The three reserved bits (must be zero without extensions).
    pub rsv: u8,
    /// The opcode (low four bits of the first byte).
    pub opcode: u8,
    /// The masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub len: u64,
}

impl Header {
    /// Control frames (close, ping, pong) have the high opcode bit set.
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Result of looking at the start of a buffer for a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A complete header of `usize` bytes.
    Header(Header, usize),
    /// At least this many bytes in total are needed to decode the header.
    Need(usize),
}

/// Decodes the frame header at the start of `buf`, if complete.
pub fn parse_header(buf: &[u8]) -> Parsed {
    if buf.len() < 2 {
        return Parsed::Need(2);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7F;
    let ext = match len7 {
        LEN16 => 2,
        LEN64 => 8,
        _ => 0,
    };
    let total = 2 + ext + if masked { 4 } else { 0 };
    if buf.len() < total {
        return Parsed::Need(total);
    }
    let len = match ext {
        2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        8 => u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes checked above")),
        _ => u64::from(len7),
    };
    let mask = masked.then(|| {
        let at = 2 + ext;
        [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
    });
    Parsed::Header(Header { fin: b0 & 0x80 != 0, rsv: (b0 >> 4) & 0x7, opcode: b0 & 0x0F, mask, len }, total)
}

/// Appends a frame header to `out` (shortest length encoding, as the RFC requires).
pub fn write_header(out: &mut Vec<u8>, fin: bool, opcode: u8, mask: Option<[u8; 4]>, len: u64) {
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    if len < u64::from(LEN16) {
        out.push(mbit | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(mbit | LEN16);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(mbit | LEN64);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// XORs `data` with the masking key, where `data` starts at byte `offset` of the payload
/// (so a payload can be unmasked piece by piece as it arrives).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let phase = (offset % 4) as usize;
    let rotated = [mask[phase], mask[(phase + 1) % 4], mask[(phase + 2) % 4], mask[(phase + 3) % 4]];
    let word = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2], rotated[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes((&*chunk).try_into().expect("chunks of 8")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rotated[i % 4];
    }
}

/// Appends a complete close frame with `code` (server side: unmasked).
pub fn write_close(out: &mut Vec<u8>, code: u16, mask: Option<[u8; 4]>) {
    write_header(out, true, OP_CLOSE, mask, 2);
    let start = out.len();
    out.extend_from_slice(&code.to_be_bytes());
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m, 0);
    }
}

/// Appends a complete frame carrying `payload`, masking it when `mask` is given.
pub fn write_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) {
    write_header(out, fin, opcode, mask, payload.len() as u64);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_every_length_encoding() {
        for len in [0u64, 1, 125, 126, 65_535, 65_536, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = Vec::new();
                write_header(&mut out, true, OP_BINARY, mask, len);
                let Parsed::Header(h, n) = parse_header(&out) else { panic!("incomplete") };
                assert_eq!(n, out.len());
                assert_eq!((h.len, h.mask, h.opcode, h.fin), (len, mask, OP_BINARY, true));
                for cut in 0..out.len() {
                    assert!(matches!(parse_header(&out[..cut]), Parsed::Need(k) if k > cut));
                }
            }
        }
    }

    #[test]
    fn mask_in_pieces_equals_mask_at_once() {
        let mask = [0xA1, 0x02, 0xF3, 0x44];
        let orig: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut whole = orig.clone();
        apply_mask(&mut whole, mask, 0);
        for (i, b) in whole.iter().enumerate() {
            assert_eq!(*b, orig[i] ^ mask[i % 4]);
        }
        let mut pieces = orig.clone();
        let mut at = 0;
        for step in [3usize, 1, 17, 8, 100, 871] {
            apply_mask(&mut pieces[at..at + step], mask, at as u64);
            at += step;
        }
        assert_eq!(pieces, whole);
    }
}
