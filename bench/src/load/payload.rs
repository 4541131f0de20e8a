//! The payload of every message the load client sends, and its verification.
//!
//! Layout: connection id (u64 LE), sequence number (u64 LE), send time in ns since the run's
//! start (u64 LE), then filler words derived from (connection, sequence), so one flipped
//! byte anywhere, a truncation or a message of another connection is detected. Verification
//! never allocates.

/// Bytes of the id / sequence / time header; the smallest payload size.
pub const HEADER: usize = 24;

fn word(conn: u64, seq: u64, index: u64) -> u64 {
    // splitmix64's finalizer: every input bit reaches every output byte.
    let mut x = conn.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq.rotate_left(29) ^ index;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Appends a payload of `size` bytes (at least [`HEADER`]) to `out`.
pub fn build(out: &mut Vec<u8>, conn: u64, seq: u64, sent_ns: u64, size: usize) {
    let size = size.max(HEADER);
    let start = out.len();
    out.extend_from_slice(&conn.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&sent_ns.to_le_bytes());
    let mut i = 3u64;
    while out.len() - start + 8 <= size {
        out.extend_from_slice(&word(conn, seq, i).to_le_bytes());
        i += 1;
    }
    let rest = size - (out.len() - start);
    out.extend_from_slice(&word(conn, seq, i).to_le_bytes()[..rest]);
}

/// A verified payload's sequence number and send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Sequence number within the connection.
    pub seq: u64,
    /// Send time, ns since the run's start.
    pub sent_ns: u64,
}

fn u64_at(p: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(p[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks a payload that connection `conn` expects to be `size` bytes; `None` when it is not
/// exactly what that connection sent.
pub fn verify(p: &[u8], conn: u64, size: usize) -> Option<Stamp> {
    if p.len() != size.max(HEADER) || u64_at(p, 0) != conn {
        return None;
    }
    let seq = u64_at(p, 8);
    let mut chunks = p[HEADER..].chunks_exact(8);
    let mut i = 3u64;
    for c in &mut chunks {
        if u64::from_le_bytes(c.try_into().expect("8 bytes")) != word(conn, seq, i) {
            return None;
        }
        i += 1;
    }
    let rest = chunks.remainder();
    if rest != &word(conn, seq, i).to_le_bytes()[..rest.len()] {
        return None;
    }
    Some(Stamp { seq, sent_ns: u64_at(p, 16) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flipped_byte_is_caught() {
        for size in [0, 24, 25, 31, 32, 100] {
            let mut p = Vec::new();
            build(&mut p, 7, 9, 11, size);
            assert_eq!(p.len(), size.max(HEADER));
            assert_eq!(verify(&p, 7, size), Some(Stamp { seq: 9, sent_ns: 11 }));
            assert_eq!(verify(&p, 8, size), None);
            assert_eq!(verify(&p[..p.len() - 1], 7, size), None);
            for i in 0..p.len() {
                if (16..24).contains(&i) || (size <= HEADER && (8..16).contains(&i)) {
                    continue; // the time (and a bare sequence) is checked by the caller
                }
                let mut q = p.clone();
                q[i] ^= 1;
                assert_eq!(verify(&q, 7, size), None, "size {size} byte {i}");
            }
        }
    }
}
