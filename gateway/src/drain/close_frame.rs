//! The Close frames the drain sends: code 1001 "going away" (RFC 6455 §7.4.1), to the
//! client as a server sends it (unmasked) and to the upstream as a client sends it
//! (masked with a fresh random key, §5.3). Builds bytes only; never sends them.

/// Close code 1001: the endpoint is going away (server shutting down).
pub const GOING_AWAY: u16 = 1001;
const REASON: &[u8] = b"going away";

/// The payload: the code, then the reason.
fn payload() -> [u8; 2 + REASON.len()] {
    let mut p = [0u8; 2 + REASON.len()];
    p[..2].copy_from_slice(&GOING_AWAY.to_be_bytes());
    p[2..].copy_from_slice(REASON);
    p
}

/// The server's Close 1001 to a client: FIN + opcode 8, unmasked.
pub fn to_client() -> Vec<u8> {
    let p = payload();
    let mut f = vec![0x88, p.len() as u8];
    f.extend_from_slice(&p);
    f
}

/// A client's Close 1001 to the upstream: FIN + opcode 8, masked with `mask`.
pub fn to_upstream(mask: [u8; 4]) -> Vec<u8> {
    let p = payload();
    let mut f = vec![0x88, 0x80 | p.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::FrameTracker;

    #[test]
    fn both_frames_are_one_whole_close_with_code_1001() {
        let mask = [0xa5, 0x01, 0xff, 0x3c];
        for (f, masked) in [(to_client(), false), (to_upstream(mask), true)] {
            let mut t = FrameTracker::default();
            t.feed(&f);
            assert!(t.at_boundary() && t.close_seen());
            assert_eq!(f[1] & 0x80 != 0, masked);
            let body: Vec<u8> = if masked {
                f[6..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect()
            } else {
                f[2..].to_vec()
            };
            assert_eq!(u16::from_be_bytes([body[0], body[1]]), 1001);
            assert_eq!(&body[2..], b"going away");
        }
    }
}
