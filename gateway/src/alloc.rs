//! The process's allocator: mimalloc, asked the way the standard library asks the
//! system's `malloc`. The `mimalloc` crate's allocator sends every allocation down
//! mimalloc's aligned path (`mi_malloc_aligned`), which checks the alignment and
//! looks for a block that happens to be aligned before it allocates; and every
//! block above 1 KiB through its over-allocating generic path. A layout whose
//! alignment `mi_malloc` gives anyway (at most 16 bytes, and no larger than the size,
//! as for the system allocator) needs none of that: it takes `mi_malloc`, about half
//! the instructions per allocation (a handshake makes about thirty).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Alignment of every `mi_malloc` block of at least this size (`MI_MAX_ALIGN_SIZE`);
/// smaller blocks are aligned to their size class, a multiple of 8.
const MALLOC_ALIGN: usize = 16;

/// mimalloc as the global allocator (see the module).
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator;

/// Whether `mi_malloc` (or `mi_realloc`, `mi_zalloc`) of `size` bytes gives `align`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

// SAFETY: each call goes to the mimalloc function that honours the layout: the plain
// one only where its blocks are aligned enough (see `plain`), the aligned one
// otherwise; every block is freed by `mi_free`, which takes both.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain mimalloc calls; the layout's size is non-zero (GlobalAlloc's contract).
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; a block moved by
        // `mi_realloc` keeps the plain alignment, which `plain` says is enough.
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::Allocator;

    /// `block` is non-null and aligned to `align`.
    fn aligned(block: *mut u8, align: usize) -> bool {
        !block.is_null() && (block as usize).is_multiple_of(align)
    }

    /// Every layout up to 4 KiB and 64-byte alignment (sizes below the alignment among
    /// them) comes back aligned, writable, and survives growing and shrinking.
    #[test]
    fn blocks_are_aligned_as_asked() {
        let heap = Allocator;
        for align in [1usize, 2, 4, 8, 16, 32, 64] {
            // Sizes below the alignment too (a layout's size need not be a multiple of it).
            for size in (1..align).chain((align..=4096).step_by(align)) {
                let layout = Layout::from_size_align(size, align).unwrap();
                let bigger = size * 3 + align;
                let grown = Layout::from_size_align(bigger, align).unwrap();
                // SAFETY: non-zero sizes; each block is written and read within its
                // size, and freed once with the layout it has.
                unsafe {
                    let first = heap.alloc(layout);
                    assert!(aligned(first, align), "alloc {size}/{align}: {first:p}");
                    first.write_bytes(0xa5, size);
                    let moved = heap.realloc(first, layout, bigger);
                    assert!(aligned(moved, align), "realloc {size}→{bigger}/{align}: {moved:p}");
                    let kept = std::slice::from_raw_parts(moved, size);
                    assert!(kept.iter().all(|&b| b == 0xa5), "realloc kept the bytes");
                    let shrunk = heap.realloc(moved, grown, size);
                    assert!(aligned(shrunk, align), "shrink {bigger}→{size}/{align}: {shrunk:p}");
                    heap.dealloc(shrunk, layout);
                    let zeroed = heap.alloc_zeroed(layout);
                    assert!(aligned(zeroed, align), "zalloc {size}/{align}: {zeroed:p}");
                    assert!(std::slice::from_raw_parts(zeroed, size).iter().all(|&b| b == 0), "zeroed");
                    heap.dealloc(zeroed, layout);
                }
            }
        }
    }
}
