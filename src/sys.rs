//! The few operating-system calls std does not wrap: the open-file limit, giving freed heap
//! back to the system.
//!
//! `libc` is a direct dependency only for these (mio already builds it).

/// Raises the soft open-file limit to the hard limit (each connection is a descriptor) and
/// returns the limit now in force.
pub fn raise_open_file_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a stack struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// The soft open-file limit in force.
pub fn open_file_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// Asks the allocator to return free heap pages to the system. glibc keeps freed small chunks
/// in its heap and only trims its top; after many scattered frees (a topic churn) the pages in
/// the middle stay resident until `malloc_trim` releases them (`MADV_DONTNEED`). It walks the
/// heap, so callers run it only after freeing a lot. Elsewhere (musl, other systems) a no-op.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: takes no pointers; only reorganizes the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
