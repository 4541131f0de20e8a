//! The pool of relay buffers of one worker. A connection borrows a buffer only between
//! "bytes are queued" and "bytes are written", so idle connections hold none.
//!
//! A field of the worker ([`crate::conn::Worker`]), single-threaded by construction;
//! it must never be shared between threads or hold more than `keep` free buffers.

use std::cell::RefCell;

/// Free relay buffers of one worker, all of one size.
#[derive(Debug)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
    buffer_size: usize,
    keep: usize,
}

impl BufPool {
    /// A pool of `buffer_size`-byte buffers that keeps at most `keep` free ones.
    pub fn new(buffer_size: usize, keep: usize) -> Self {
        Self { free: RefCell::new(Vec::with_capacity(keep)), buffer_size, keep }
    }

    /// An empty buffer with the configured capacity (reused when one is free).
    pub fn take(&self) -> Vec<u8> {
        self.free.borrow_mut().pop().unwrap_or_else(|| Vec::with_capacity(self.buffer_size))
    }

    /// Gives a buffer back; kept for reuse up to the configured count, freed beyond it.
    pub fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() != self.buffer_size {
            return;
        }
        buf.clear();
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep {
            free.push(buf);
        }
    }

    /// Free buffers currently kept.
    pub fn free_count(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reuses_and_bounds() {
        let pool = super::BufPool::new(4096, 2);
        let (a, b, c) = (pool.take(), pool.take(), pool.take());
        assert_eq!(a.capacity(), 4096);
        pool.put(a);
        pool.put(b);
        pool.put(c);
        assert_eq!(pool.free_count(), 2);
        pool.put(Vec::with_capacity(10));
        assert_eq!(pool.free_count(), 2);
    }
}
