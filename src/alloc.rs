//! The process's allocator: mimalloc, called the way its own `malloc` is fast.
//!
//! glibc malloc showed up at ~10 % of CPU on the proxied path (many small, short-lived
//! allocations for headers and URIs across threads); mimalloc's thread-local free lists
//! handle that pattern far better. The `mimalloc` crate's `GlobalAlloc`, though, asks
//! for every block through `mi_malloc_aligned`, and mimalloc 3 serves that from its
//! plain size classes only when the class is a power of two: the others (a 3.9 KB
//! request future, a header map's entries) took the over-allocating path, about 100
//! instructions each, three times per proxied request (callgrind). Every mimalloc
//! size class is a multiple of 16 bytes from 16 up (its classes round to two machine
//! words on x86-64 and aarch64, and a page's first block is 16-aligned), so a block
//! of at least the alignment, for alignments up to 16, already has it: the same rule
//! as the standard library's `System` allocator on top of `malloc`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Alignment every `mi_malloc` block of at least this size has (`MI_MAX_ALIGN_SIZE`).
const NATURAL: usize = 16;

/// mimalloc as the global allocator, with plain calls where they are aligned enough.
pub struct Mimalloc;

#[inline]
fn natural(layout: &Layout) -> bool {
    layout.align() <= NATURAL && layout.align() <= layout.size()
}

// SAFETY: each call forwards to the mimalloc function that honours the layout: the
// plain ones only when `natural` holds (see the module's note on size classes), the
// `_aligned` ones otherwise. Blocks from either are freed by `mi_free`.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's note.
        unsafe {
            if natural(&layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's note.
        unsafe {
            if natural(&layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl's note; the new block keeps `layout`'s alignment.
        unsafe {
            let grown = Layout::from_size_align_unchecked(new_size, layout.align());
            if natural(&grown) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size class a request can land in, at every alignment up to a page: the
    /// blocks are aligned, hold what is written, and survive a move by `realloc`.
    #[test]
    fn blocks_have_their_layouts_alignment_in_every_size_class() {
        let a = Mimalloc;
        let sizes = (1..=256)
            .chain((257..=70_000).step_by(211))
            .chain([1 << 20, (1 << 20) + 8]);
        for size in sizes {
            for shift in 0..=12 {
                let align = 1usize << shift;
                let layout = Layout::from_size_align(size, align).unwrap();
                // Many at once, so that blocks come from within pages, not only
                // their starts.
                let blocks: Vec<*mut u8> = (0..4)
                    .map(|i| {
                        let p = if i % 2 == 0 {
                            unsafe { a.alloc(layout) }
                        } else {
                            unsafe { a.alloc_zeroed(layout) }
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if i % 2 == 1 {
                            let s = unsafe { std::slice::from_raw_parts(p, size) };
                            assert!(s.iter().all(|&b| b == 0), "zeroed: {size}");
                        }
                        unsafe { p.write_bytes(0xA5, size) };
                        p
                    })
                    .collect();
                for p in blocks {
                    let bigger = size * 3 + 1;
                    let q = unsafe { a.realloc(p, layout, bigger) };
                    assert!(!q.is_null());
                    assert_eq!(
                        q as usize % align,
                        0,
                        "realloc {size}->{bigger} align {align}"
                    );
                    let kept = unsafe { std::slice::from_raw_parts(q, size) };
                    assert!(kept.iter().all(|&b| b == 0xA5), "contents kept: {size}");
                    let grown = Layout::from_size_align(bigger, align).unwrap();
                    unsafe { a.dealloc(q, grown) };
                }
            }
        }
    }
}
