//! The memory allocator's setting for training.
//!
//! A training step frees and allocates the same large buffers (activations,
//! gradients, unfolded patches) every step. mimalloc, the `train` binary's
//! allocator, hands pages that stay free for a second back to the operating
//! system; a step of the larger networks takes longer than that, so every
//! step paid the page faults, and the kernel's zeroing of those pages, again
//! (a fifth of the recipe network's step in a `perf` profile; see
//! BENCHMARKS.md, "Fourth round").

/// mimalloc's option index of its purge delay (`mi_option_purge_delay` in
/// mimalloc 3's `mimalloc.h`; the Rust bindings have no constant for it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in the process for reuse instead of handing it back to
/// the operating system; the process's memory then stays at its peak.
/// Call it first thing in `main`; it changes nothing when mimalloc is not the
/// global allocator.
pub fn keep_freed_memory() {
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` stores one integer in mimalloc's option table;
    // it takes no pointers and may be called at any time from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purge_delay() -> std::ffi::c_long {
        #[allow(unsafe_code)]
        // SAFETY: reads one integer from mimalloc's option table.
        unsafe {
            libmimalloc_sys::mi_option_get(PURGE_DELAY)
        }
    }

    #[test]
    fn freed_memory_is_never_purged_after_the_call() {
        // Index 15 is the purge delay: mimalloc 3's default of 1,000 ms
        // (unless the environment sets it).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay(), 1000);
        }
        keep_freed_memory();
        assert_eq!(purge_delay(), -1);
    }
}
