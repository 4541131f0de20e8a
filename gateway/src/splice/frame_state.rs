//! The WebSocket frame state the verdict keeps per direction (`struct splice_frames`),
//! as words of the shared array and back: what userspace seeds before a pair is
//! published (the frames it relayed itself) and reads when the drain takes the pair
//! back. A leaf: pure conversions, no access to the array itself. Must never guess a
//! state: whatever it cannot read back exactly has no known boundary.

use super::shared::{FRAMES_CLOSE_SEEN, FRAMES_IN_CLOSE, FRAMES_UNKNOWN};
use crate::drain::{FrameState, FrameTracker};

/// One direction's frame state as the words `left`, `head[0..8]` and
/// `head[8..14] | have | flags` (machine byte order, as the program stores them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Words {
    pub left: u64,
    pub head_low: u64,
    pub head_high: u64,
}

/// The words of `tracker`'s state.
pub(super) fn encode(tracker: &FrameTracker) -> Words {
    let s = tracker.state();
    let mut low = [0u8; 8];
    low.copy_from_slice(&s.head[..8]);
    let mut high = [0u8; 8];
    high[..6].copy_from_slice(&s.head[8..]);
    high[6] = s.have;
    high[7] = flag(s.lost, FRAMES_UNKNOWN) | flag(s.in_close, FRAMES_IN_CLOSE) | flag(s.close_seen, FRAMES_CLOSE_SEEN);
    Words { left: s.left, head_low: u64::from_ne_bytes(low), head_high: u64::from_ne_bytes(high) }
}

/// The tracker the words describe (one with no known boundary when they say so, or
/// when they describe no state a tracker can be in).
pub(super) fn decode(w: Words) -> FrameTracker {
    let (low, high) = (w.head_low.to_ne_bytes(), w.head_high.to_ne_bytes());
    let mut head = [0u8; 14];
    head[..8].copy_from_slice(&low);
    head[8..].copy_from_slice(&high[..6]);
    let flags = high[7];
    FrameTracker::from_state(FrameState {
        head,
        have: high[6],
        left: w.left,
        in_close: flags & FRAMES_IN_CLOSE != 0,
        close_seen: flags & FRAMES_CLOSE_SEEN != 0,
        lost: flags & FRAMES_UNKNOWN != 0,
    })
}

fn flag(on: bool, bit: u8) -> u8 {
    if on { bit } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_of_a_stream_survives_the_words() {
        // A masked 300-byte frame, then a Close: stop after every byte.
        let mut stream = vec![0x82, 0xfe, 0x01, 0x2c, 1, 2, 3, 4];
        stream.extend(std::iter::repeat_n(7, 300));
        stream.extend([0x88, 0x02, 0x03, 0xe9]);
        let mut t = FrameTracker::after(5);
        t.feed(b"HTTP/");
        for b in &stream {
            t.feed(std::slice::from_ref(b));
            assert_eq!(decode(encode(&t)), t);
        }
        assert!(t.close_seen());
        assert!(decode(encode(&FrameTracker::lost())).is_lost());
    }

    #[test]
    fn an_impossible_header_count_has_no_boundary() {
        let w = Words { left: 0, head_low: 0, head_high: u64::from_ne_bytes([0, 0, 0, 0, 0, 0, 14, 0]) };
        assert!(decode(w).is_lost());
    }
}
