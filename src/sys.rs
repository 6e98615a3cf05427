//! The few operating-system calls std does not wrap: the open-file limit, SO_REUSEPORT, random
//! bytes, giving freed heap back to the system, a socket's send buffer size and how much of it
//! is still unsent.
//!
//! `libc` is a direct dependency only for these few calls (mio already builds it).

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

/// 64 random bits from the kernel (`getrandom`), for identifiers that must differ between
/// processes; falls back to the clock and the pid if the call fails.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the kernel writes at most `bytes.len()` bytes into our stack buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        return u64::from_ne_bytes(bytes);
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}

/// A listening socket with SO_REUSEPORT (and SO_REUSEADDR) set before `bind`, which std cannot
/// do: several processes may then listen on one port, and the kernel spreads new connections
/// across them. Non-blocking, for mio.
pub fn listen_reuse_port(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use std::io::Error;
    use std::os::fd::{FromRawFd, OwnedFd};

    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscalls; the descriptor is owned by `fd` at once, so every early return
    // closes it.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let one: libc::c_int = 1;
    for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: `one` outlives the call; the length is its size.
        let rc = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                option,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(Error::last_os_error());
        }
    }
    // SAFETY: the sockaddr structs are fully initialized stack values of the length passed.
    let rc = unsafe {
        match addr {
            std::net::SocketAddr::V4(a) => {
                let mut sin: libc::sockaddr_in = std::mem::zeroed();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
                libc::bind(
                    raw,
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            std::net::SocketAddr::V6(a) => {
                let mut sin6: libc::sockaddr_in6 = std::mem::zeroed();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                libc::bind(
                    raw,
                    (&sin6 as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: a bound stream socket we own.
    if unsafe { libc::listen(raw, 1024) } != 0 {
        return Err(Error::last_os_error());
    }
    Ok(std::net::TcpListener::from(fd))
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
