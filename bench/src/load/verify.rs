//! Bookkeeping of one connection's echoes: which sequence number comes next, what is still
//! outstanding, and how each echo is classified (ok, lost, mismatched, out of order).
//!
//! A gap in sequence numbers counts the skipped messages as lost at once; a late arrival of
//! one of them turns that loss into an out-of-order delivery. Anything still outstanding
//! when the connection ends is lost.

use super::payload;
use super::stats::Recorder;

/// Per-connection echo expectations.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    conn: u64,
    size: usize,
    next: u64,
    /// Messages sent and not yet accounted for.
    pub outstanding: u64,
}

impl Expect {
    /// Expectations for connection `conn` sending `size`-byte payloads from sequence 0.
    pub fn new(conn: u64, size: usize) -> Self {
        Self { conn, size, next: 0, outstanding: 0 }
    }

    /// Notes one more message sent.
    pub fn sent(&mut self) {
        self.outstanding += 1;
    }

    /// Classifies one echoed payload; `now_ns` is the run clock. Returns true if intact.
    pub fn echoed(&mut self, p: &[u8], now_ns: u64, rec: &mut Recorder) -> bool {
        rec.counts.received += 1;
        let Some(stamp) = payload::verify(p, self.conn, self.size) else {
            rec.counts.mismatched += 1;
            self.next += 1;
            self.outstanding = self.outstanding.saturating_sub(1);
            return false;
        };
        if stamp.seq < self.next {
            rec.counts.out_of_order += 1;
            rec.counts.lost = rec.counts.lost.saturating_sub(1);
        } else {
            let skipped = stamp.seq - self.next;
            rec.counts.lost += skipped;
            self.outstanding = self.outstanding.saturating_sub(skipped + 1);
            self.next = stamp.seq + 1;
        }
        rec.counts.bytes_received += p.len() as u64;
        rec.rtt_us(now_ns.saturating_sub(stamp.sent_ns) / 1000);
        true
    }

    /// The connection is over: whatever is outstanding is lost.
    pub fn finish(&mut self, rec: &mut Recorder) {
        rec.counts.lost += self.outstanding;
        self.outstanding = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(conn: u64, seq: u64) -> Vec<u8> {
        let mut v = Vec::new();
        payload::build(&mut v, conn, seq, 0, 40);
        v
    }

    #[test]
    fn gaps_reorders_and_corruption_are_counted() {
        let mut rec = Recorder::default();
        let mut e = Expect::new(3, 40);
        for _ in 0..5 {
            e.sent();
        }
        assert!(e.echoed(&msg(3, 0), 0, &mut rec));
        assert!(e.echoed(&msg(3, 2), 0, &mut rec)); // 1 skipped
        assert!(e.echoed(&msg(3, 1), 0, &mut rec)); // late
        let mut bad = msg(3, 3);
        bad[30] ^= 4;
        assert!(!e.echoed(&bad, 0, &mut rec));
        e.finish(&mut rec); // 4 never came
        let c = &rec.counts;
        assert_eq!((c.received, c.lost, c.out_of_order, c.mismatched), (4, 1, 1, 1));
    }
}
