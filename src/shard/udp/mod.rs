//! Batched datagram I/O on a shard's UDP socket: many datagrams per system
//! call in both directions, `recvmmsg(2)` in (recv.rs) and `sendmmsg(2)`
//! of runs sent with `UDP_SEGMENT`, generic segmentation offload, out
//! (send.rs).
//!
//! Owns only the system calls and their buffers; what the datagrams mean is
//! the endpoint's business. Every call is non-blocking (`MSG_DONTWAIT`):
//! waiting for the socket stays with glommio's io_uring reactor.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

mod recv;
mod send;

pub use recv::{RecvBatch, RECV_BATCH};
pub use send::SendBatch;

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;

/// Asks for `bytes` of kernel buffer in each direction: bursts of new
/// connections (Initials) and of GSO runs must not be dropped for want of
/// room. Tries the privileged option first (above `net.core.rmem_max`),
/// then the plain one; returns what the kernel granted for receiving.
pub fn set_buffers(fd: RawFd, bytes: usize) -> usize {
    let value = bytes.min(i32::MAX as usize / 2) as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, force, value).is_err() {
            let _ = setsockopt_int(fd, plain, value);
        }
    }
    let mut granted: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `granted` and `len` are valid for writes of their sizes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut granted as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        granted.max(0) as usize
    } else {
        0
    }
}

fn setsockopt_int(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends one datagram now, or fails (`WouldBlock` when the buffer is full).
pub fn send_to(fd: RawFd, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
    let (addr, len) = to_storage(to);
    // SAFETY: the data and the address are valid for the call.
    let sent = unsafe {
        libc::sendto(
            fd,
            datagram.as_ptr().cast(),
            datagram.len(),
            libc::MSG_DONTWAIT,
            (&addr as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Whether an error from a GSO send means the path cannot segment (and the
/// datagrams should go one by one from now on).
pub fn gso_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

fn from_storage(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match addr.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid sockaddr_storage; the writes below
    // stay within it (sockaddr_in and sockaddr_in6 are smaller).
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger and at least as aligned as
            // sockaddr_in, and `storage` is borrowed only through `sin` here.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6 (also within the storage).
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for addr in ["127.0.0.1:443", "[::1]:8443", "[::ffff:10.0.0.1]:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (storage, _) = to_storage(addr);
            assert_eq!(from_storage(&storage), Some(addr));
        }
    }
}
