//! Giving freed memory back to the operating system between the large steps of a gold job.
//!
//! glibc's malloc keeps what a step freed: pages in the middle of its heaps stay resident until
//! something asks for them back, so the next step's peak is counted on top of the last one's
//! leftovers. [`release_free_memory`] asks for them back. On a Functions instance, billed by its
//! memory, that is what the bill sees.

/// Returns the free pages of glibc's allocator to the operating system (`malloc_trim(0)`). Other
/// builds do nothing: the static musl package allocates through mimalloc, whose purge delay
/// (`MIMALLOC_PURGE_DELAY`, README "Settings") does this on its own.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `malloc_trim` takes no pointer and has no precondition: it takes each arena's lock
    // itself and only releases pages no allocation holds. Its return value (whether anything was
    // released) needs no handling.
    unsafe {
        libc::malloc_trim(0);
    }
}
