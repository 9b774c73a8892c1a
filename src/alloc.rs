//! The global allocator of the `lienthong` binary and the benchmarks: mimalloc.
//!
//! The request path allocates many small, short-lived objects (header maps, buffers);
//! glibc malloc showed up at ~11% of proxy CPU in profiles, and mimalloc is markedly
//! cheaper for that pattern. This is the crate's one module with `unsafe` code (a
//! `GlobalAlloc` implementation cannot be written without it); the lint denies it
//! everywhere else.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// mimalloc as the global allocator, asked for plain `mi_malloc` whenever the alignment
/// is one that every mimalloc block has. (The `mimalloc` crate's allocator always calls
/// `mi_malloc_aligned`, whose fast path in mimalloc 3 covers blocks up to 1 KiB only:
/// every bigger one — hyper's read buffers, header maps, bodies — took the
/// over-allocating fallback, ~6 times per proxied request, ~1,000 instructions in all by
/// callgrind.)
pub struct MiMalloc;

/// Every mimalloc block is aligned to the word size: its size classes are multiples of
/// it, and pages start at least that aligned.
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: each method forwards to the mimalloc function with the same contract
// (`mi_malloc` and friends return word-aligned blocks; the `_aligned` forms honour any
// power-of-two alignment); every block, however allocated, is freed by `mi_free`.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block honours its layout's alignment, zeroed blocks are zero, and a
    /// reallocation keeps the contents, on both paths (word alignment and above).
    #[test]
    fn blocks_are_aligned_zeroed_and_reallocated_with_their_contents() {
        let a = MiMalloc;
        for size in [1usize, 7, 8, 24, 40, 1000, 1025, 1500, 5000, 70_000] {
            for align in [1usize, 2, 4, 8, 16, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; every block is freed with its own layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    for i in 0..size {
                        p.add(i).write(i as u8);
                    }
                    let grown = size * 3 + 1;
                    let q = a.realloc(p, layout, grown);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    for i in 0..size {
                        assert_eq!(
                            q.add(i).read(),
                            i as u8,
                            "size {size} align {align} byte {i}"
                        );
                    }
                    a.dealloc(q, Layout::from_size_align(grown, align).unwrap());

                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| z.add(i).read() == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
