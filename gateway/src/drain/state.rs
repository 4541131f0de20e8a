//! One relay's drain state, shared by its two directions: the frames each follows, whether
//! the relay's turn came, and the wake-up of a direction waiting between frames. Used by
//! the relays that see every byte (TLS, HTTP/2); the plain userspace relay keeps the same
//! state in its own pumps. Never touches a socket.

use std::cell::Cell;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::FrameTracker;

/// Drain state of a relay's two directions (indexes: 0 client → upstream, 1 upstream →
/// client).
#[derive(Debug, Default)]
pub struct DrainState {
    frames: [Cell<FrameTracker>; 2],
    closing: Cell<bool>,
    turn: Notify,
}

impl DrainState {
    /// Directions whose frames start in `frames`.
    pub fn new(frames: [FrameTracker; 2]) -> Self {
        Self { frames: frames.map(Cell::new), ..Self::default() }
    }

    /// How many of `data`, the next bytes of direction `dir`, to relay: all of them, or
    /// once the turn came those up to the end of the frame in progress (accounted for);
    /// and whether the direction is then between frames with the turn come.
    pub fn take(&self, dir: usize, data: &[u8]) -> (usize, bool) {
        let mut t = self.frames[dir].get();
        let taken = if self.closing.get() {
            t.feed_to_boundary(data)
        } else {
            t.feed(data);
            data.len()
        };
        self.frames[dir].set(t);
        (taken, self.closing.get() && t.at_boundary())
    }

    /// The turn came and direction `dir` is between frames: it relays nothing more.
    pub fn whole(&self, dir: usize) -> bool {
        self.closing.get() && self.frames[dir].get().at_boundary()
    }

    /// Whether the turn came.
    pub fn closing(&self) -> bool {
        self.closing.get()
    }

    /// The turn came: wakes the directions waiting (see [`DrainState::woken`]).
    pub fn begin(&self) {
        self.closing.set(true);
        self.turn.notify_waiters();
    }

    /// Resolves at [`DrainState::begin`]; create it before checking
    /// [`DrainState::whole`] and waiting, so a turn in between is not missed.
    pub fn woken(&self) -> Notified<'_> {
        self.turn.notified()
    }

    /// Direction `dir`'s frames so far.
    pub fn frames(&self, dir: usize) -> FrameTracker {
        self.frames[dir].get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_the_turn_a_chunk_is_cut_at_the_end_of_the_frame_in_progress() {
        let s = DrainState::default();
        // Unmasked frames: 3-byte payload, then 2-byte payload.
        let two = [0x82, 3, 1, 2, 3, 0x82, 2, 9, 9];
        assert_eq!(s.take(1, &two[..4]), (4, false), "before the turn everything goes");
        s.begin();
        assert_eq!(s.take(1, &two[4..]), (1, true), "the rest of the frame, then the boundary");
        assert!(s.whole(1));
        assert_eq!(s.take(1, &two[5..]), (0, true), "nothing past a boundary");
        assert!(s.whole(0), "the other direction, never fed, is between frames too");
    }
}
