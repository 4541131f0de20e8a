//! The per-core pool of relay buffers. A connection borrows a buffer only between
//! "bytes are queued" and "bytes are written", so idle connections hold none.
//!
//! Single-threaded by construction (one pool per worker thread); never shared.

use std::cell::{Cell, RefCell};

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static BUFFER_SIZE: Cell<usize> = const { Cell::new(64 * 1024) };
    static KEEP: Cell<usize> = const { Cell::new(64) };
}

/// Sets this thread's buffer size and how many free buffers it keeps.
pub fn configure(buffer_size: usize, keep: usize) {
    BUFFER_SIZE.set(buffer_size);
    KEEP.set(keep);
    POOL.with_borrow_mut(|p| p.reserve(keep));
}

/// An empty buffer with the configured capacity (reused when one is free).
pub fn take() -> Vec<u8> {
    POOL.with_borrow_mut(Vec::pop).unwrap_or_else(|| Vec::with_capacity(BUFFER_SIZE.get()))
}

/// Gives a buffer back; kept for reuse up to the configured count, freed beyond it.
pub fn put(mut buf: Vec<u8>) {
    if buf.capacity() != BUFFER_SIZE.get() {
        return;
    }
    buf.clear();
    POOL.with_borrow_mut(|p| {
        if p.len() < KEEP.get() {
            p.push(buf);
        }
    });
}

/// Free buffers currently kept by this thread.
pub fn free_count() -> usize {
    POOL.with_borrow(Vec::len)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reuses_and_bounds() {
        super::configure(4096, 2);
        let (a, b, c) = (super::take(), super::take(), super::take());
        assert_eq!(a.capacity(), 4096);
        super::put(a);
        super::put(b);
        super::put(c);
        assert_eq!(super::free_count(), 2);
        super::put(Vec::with_capacity(10));
        assert_eq!(super::free_count(), 2);
    }
}
