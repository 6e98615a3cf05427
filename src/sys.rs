//! The few operating-system calls std does not wrap: the open-file limit, giving freed heap
//! back to the system, a socket's send buffer size and how much of it is still unsent.
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

/// Caps the kernel send buffer of a socket at `bytes` (`SO_SNDBUF`; Linux doubles the value for
/// its bookkeeping and stops autotuning it). Returns the size the kernel reports back.
pub fn set_send_buffer(fd: std::os::fd::RawFd, bytes: usize) -> std::io::Result<usize> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a c_int on our
    // stack, its size passed alongside.
    let rc = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, std::ptr::from_ref(&value).cast(), len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut actual: libc::c_int = 0;
    let mut len = len;
    // SAFETY: as above; the kernel writes at most `len` bytes into `actual`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::from_mut(&mut actual).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(actual).unwrap_or(0))
}

/// Bytes a TCP socket has accepted but the peer has not acknowledged yet (`SIOCOUTQ`): output
/// that has left our queue but still costs kernel memory on this host. `None` where the OS
/// does not tell (then only our own queue counts).
pub fn unsent_bytes(fd: std::os::fd::RawFd) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one c_int through the pointer we pass.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, std::ptr::from_mut(&mut queued)) };
        (rc == 0).then(|| usize::try_from(queued).unwrap_or(0))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        None
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn send_buffer_is_capped_and_unsent_bytes_are_seen() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let actual = super::set_send_buffer(client.as_raw_fd(), 16 * 1024).unwrap();
        assert!((16 * 1024..=64 * 1024).contains(&actual), "SO_SNDBUF reads back {actual}");
        // The server never reads: what the client writes beyond the server's receive window
        // stays in the client's send queue.
        client.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0;
        while let Ok(n) = client.write(&chunk) {
            written += n;
            assert!(written < 64 << 20, "the socket never filled");
        }
        if cfg!(target_os = "linux") {
            let unsent = super::unsent_bytes(client.as_raw_fd()).expect("SIOCOUTQ on Linux");
            assert!(unsent > 0 && unsent <= written, "unsent {unsent} of {written}");
        }
        drop(server);
    }
}
