//! Where WebSocket frames end in a byte stream (RFC 6455 §5.2), without copying it.
//!
//! A [`FrameTracker`] is fed every chunk relayed in one direction: it reads the 2–14
//! byte frame headers (a header split across reads waits in a few bytes of state) and
//! skips payloads by count. It never looks at payload bytes and never fails: a header
//! that no endpoint should send (reserved bits, a 64-bit length with its top bit set)
//! is still measured the way its receiver will measure it, which is all a boundary
//! needs. It must never hold more than one header's bytes.

/// Opcode of a Close frame.
const OPCODE_CLOSE: u8 = 0x8;

/// A [`FrameTracker`]'s whole state as plain values: what the kernel splice keeps per
/// direction (`struct splice_frames` in `ebpf/splice.h`), to seed it and to read it back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameState {
    /// The header read so far (only while `have > 0`).
    pub head: [u8; 14],
    /// Bytes of `head` read so far.
    pub have: u8,
    /// Payload bytes left in the current frame.
    pub left: u64,
    /// The current (or last) frame is a Close.
    pub in_close: bool,
    /// A whole Close frame has gone by.
    pub close_seen: bool,
    /// Bytes went by untracked: where frames end is not known.
    pub lost: bool,
}

/// Frame state of one direction of a WebSocket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameTracker {
    /// The header read so far (only while `have > 0`).
    head: [u8; 14],
    /// Bytes of `head` read so far; 0 between frames and inside a payload.
    have: u8,
    /// Payload bytes left in the current frame.
    left: u64,
    /// The current (or last) frame is a Close.
    in_close: bool,
    /// A whole Close frame has gone by.
    close_seen: bool,
    /// Bytes went by untracked: where frames end is not known, so no boundary is.
    lost: bool,
}

impl FrameTracker {
    /// A stream whose first `n` bytes are not frames (the upstream's 101 head).
    pub fn after(n: u64) -> Self {
        Self { left: n, ..Self::default() }
    }

    /// A stream where bytes went by untracked: it has no known boundary.
    pub fn lost() -> Self {
        Self { lost: true, ..Self::default() }
    }

    /// The whole state, as the kernel splice keeps it.
    pub fn state(&self) -> FrameState {
        let Self { head, have, left, in_close, close_seen, lost } = *self;
        FrameState { head, have, left, in_close, close_seen, lost }
    }

    /// A tracker in `state`; a state no tracker can be in (more header bytes than a
    /// header has) has no known boundary.
    pub fn from_state(state: FrameState) -> Self {
        let FrameState { head, have, left, in_close, close_seen, lost } = state;
        let t = Self { head, have, left, in_close, close_seen, lost };
        let sane = have == 0 || (have < 14 && usize::from(have) < t.header_needed() && left == 0);
        if sane { t } else { Self::lost() }
    }

    /// Whether where frames end is not known (bytes went by untracked).
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Accounts for `bytes`, the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        if self.lost {
            return;
        }
        while !bytes.is_empty() {
            if self.left > 0 {
                let skip = usize::try_from(self.left).unwrap_or(usize::MAX).min(bytes.len());
                self.left -= skip as u64;
                bytes = &bytes[skip..];
                self.end_of_payload();
                continue;
            }
            // A whole header at hand, as a rule: read where it is, not copied.
            if self.have == 0
                && let Some(&b1) = bytes.get(1)
                && let Some((head, rest)) = bytes.split_at_checked(header_len(b1))
            {
                self.start_payload(head);
                bytes = rest;
                continue;
            }
            let take = self.header_needed() - usize::from(self.have);
            let take = take.min(bytes.len());
            let at = usize::from(self.have);
            self.head[at..at + take].copy_from_slice(&bytes[..take]);
            // `take` ≤ 14: the header is at most 14 bytes.
            self.have += u8::try_from(take).unwrap_or(0);
            bytes = &bytes[take..];
            if usize::from(self.have) == self.header_needed() {
                let head = self.head;
                self.start_payload(&head[..usize::from(self.have)]);
            }
        }
    }

    /// Accounts for the first bytes of `bytes` up to the end of the frame in progress
    /// (none at a boundary; all of them when they do not reach it, or where frames end
    /// is not known) and returns how many it took: what the drain still relays of a
    /// chunk before its Close.
    pub fn feed_to_boundary(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        while used < bytes.len() && !self.at_boundary() {
            let n = usize::try_from(self.to_boundary()).unwrap_or(usize::MAX).min(bytes.len() - used);
            self.feed(&bytes[used..used + n]);
            used += n;
        }
        used
    }

    /// Whether the stream is between two frames.
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.have == 0 && self.left == 0
    }

    /// The most bytes that can be read without going past the end of the current
    /// frame (or header); 2 (a header's first bytes) at a boundary.
    pub fn to_boundary(&self) -> u64 {
        if self.lost {
            u64::MAX
        } else if self.left > 0 {
            self.left
        } else {
            (self.header_needed() - usize::from(self.have)) as u64
        }
    }

    /// Whether a whole Close frame has gone by.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// Length of the current header (2 until its second byte is in: see [`header_len`]).
    fn header_needed(&self) -> usize {
        if self.have < 2 { 2 } else { header_len(self.head[1]) }
    }

    /// A frame whose whole header is `head` starts.
    fn start_payload(&mut self, head: &[u8]) {
        self.left = match head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&head[2..10]);
                u64::from_be_bytes(len)
            }
            n => u64::from(n),
        };
        self.in_close = head[0] & 0x0f == OPCODE_CLOSE;
        self.have = 0;
        self.end_of_payload();
    }

    fn end_of_payload(&mut self) {
        if self.left == 0 && self.in_close {
            self.close_seen = true;
        }
    }
}

/// Length of a header whose second byte is `b1`: 2, plus 2 or 8 for an extended length,
/// plus 4 for a mask.
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::FrameTracker;

    /// A frame with `len` payload bytes, masked or not.
    fn frame(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | u8::try_from(len).unwrap()),
            126..=65535 => {
                f.push(m | 0x7e);
                f.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
            }
            _ => {
                f.push(m | 0x7f);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0x7f, len));
        f
    }

    #[test]
    fn feed_to_boundary_takes_the_rest_of_the_frame_in_progress_and_no_more() {
        let stream = [frame(2, 300, true), frame(1, 5, true)].concat();
        let mut t = FrameTracker::default();
        t.feed(&stream[..100]);
        // The first frame is 2 + 2 + 4 + 300 = 308 bytes: 208 of it are left.
        assert_eq!(t.feed_to_boundary(&stream[100..]), 208);
        assert!(t.at_boundary());
        assert_eq!(t.feed_to_boundary(&stream[308..]), 0, "nothing past a boundary");
        // A chunk inside the frame in progress is taken whole.
        let mut inside = FrameTracker::default();
        assert_eq!(inside.feed_to_boundary(&stream[..1]), 0, "at the start of the stream: a boundary");
        inside.feed(&stream[..10]);
        assert_eq!(inside.feed_to_boundary(&stream[10..50]), 40);
        assert!(!inside.at_boundary());
        // Frames not known: everything.
        assert_eq!(FrameTracker::lost().feed_to_boundary(&stream), stream.len());
    }

    #[test]
    fn every_split_of_a_stream_finds_the_same_boundaries() {
        let frames =
            [frame(1, 0, false), frame(2, 125, true), frame(2, 126, false), frame(1, 70_000, true), frame(8, 2, true)];
        let stream: Vec<u8> = frames.concat();
        let mut ends = Vec::new();
        let mut at = 0;
        for f in &frames {
            at += f.len();
            ends.push(at);
        }
        for chunk in [1, 2, 3, 7, 13, 4096, stream.len()] {
            let mut t = FrameTracker::default();
            let mut seen = Vec::new();
            let mut pos = 0;
            while pos < stream.len() {
                // Read as the drain does: never past the current frame.
                let n = chunk.min(usize::try_from(t.to_boundary()).unwrap()).min(stream.len() - pos);
                t.feed(&stream[pos..pos + n]);
                pos += n;
                if t.at_boundary() {
                    seen.push(pos);
                }
            }
            assert_eq!(seen, ends, "chunk {chunk}");
            assert!(t.close_seen(), "chunk {chunk}");
        }
    }

    /// Everything a tracker knows: its state without the header bytes past `have`.
    fn known(t: &FrameTracker) -> super::FrameState {
        let mut state = t.state();
        state.head[usize::from(state.have)..].fill(0);
        state
    }

    #[test]
    fn chunks_of_any_size_are_tracked_as_byte_by_byte() {
        let frames = [
            frame(1, 0, false),
            frame(2, 125, true),
            frame(2, 126, false),
            frame(9, 3, true),
            frame(1, 70_000, true),
            frame(2, 1, false),
            frame(8, 2, true),
        ];
        let stream: Vec<u8> = frames.concat();
        // One byte at a time never has a whole header at hand: the reference.
        let mut one = FrameTracker::default();
        let mut after = vec![known(&one)];
        for b in &stream {
            one.feed(std::slice::from_ref(b));
            after.push(known(&one));
        }
        for chunk in (2..=20).chain([64, 127, 4096, stream.len()]) {
            let mut t = FrameTracker::default();
            for (i, part) in stream.chunks(chunk).enumerate() {
                t.feed(part);
                let end = (i * chunk + part.len()).min(stream.len());
                assert_eq!(known(&t), after[end], "chunk {chunk}, after {end} bytes");
            }
        }
        assert!(one.close_seen() && one.at_boundary());
    }

    #[test]
    fn a_split_header_is_not_a_boundary() {
        let f = frame(2, 300, true);
        let mut t = FrameTracker::default();
        t.feed(&f[..3]);
        assert!(!t.at_boundary());
        assert_eq!(t.to_boundary(), 5, "the rest of a 2+2+4 byte header");
        t.feed(&f[3..8]);
        assert_eq!(t.to_boundary(), 300);
        t.feed(&f[8..]);
        assert!(t.at_boundary());
        assert!(!t.close_seen());
    }

    #[test]
    fn a_head_before_the_frames_is_skipped_and_lost_bytes_have_no_boundary() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        let mut t = FrameTracker::after(head.len() as u64);
        t.feed(head);
        assert!(t.at_boundary());
        t.feed(&frame(1, 3, false));
        assert!(t.at_boundary());
        let mut l = FrameTracker::lost();
        l.feed(&frame(8, 2, true));
        assert!(!l.at_boundary() && !l.close_seen());
        assert_eq!(l.to_boundary(), u64::MAX);
    }

    #[test]
    fn a_huge_length_is_counted_not_trusted() {
        let mut t = FrameTracker::default();
        t.feed(&[0x82, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        assert_eq!(t.to_boundary(), u64::MAX - 3);
        assert!(!t.at_boundary());
    }
}
