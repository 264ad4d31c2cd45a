//! Batched datagram I/O on a shard's UDP socket: many datagrams per system
//! call in both directions, `recvmmsg(2)` in and `sendmsg(2)` with
//! `UDP_SEGMENT` (generic segmentation offload) out.
//!
//! Owns only the system calls and their buffers; what the datagrams mean is
//! the endpoint's business. Every call is non-blocking (`MSG_DONTWAIT`):
//! waiting for the socket stays with glommio's io_uring reactor.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams taken per `recvmmsg` call.
pub const RECV_BATCH: usize = 32;
/// Room per received datagram. Our transport parameters ask peers for at
/// most [`super::MAX_DATAGRAM`]; a larger datagram is truncated and dropped.
const RECV_SLOT: usize = 2048;
/// Segments per GSO send: the kernel takes up to 64, and 64 KiB in all.
pub const MAX_SEGMENTS: usize = 44;
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

/// Buffers for one `recvmmsg` call, allocated once per shard.
pub struct RecvBatch {
    bufs: Box<[[u8; RECV_SLOT]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    lens: [usize; RECV_BATCH],
    count: usize,
}

impl RecvBatch {
    pub fn new() -> Self {
        Self {
            bufs: vec![[0u8; RECV_SLOT]; RECV_BATCH].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain old data; all zeroes is valid.
            addrs: vec![unsafe { zeroed::<libc::sockaddr_storage>() }; RECV_BATCH]
                .into_boxed_slice(),
            lens: [0; RECV_BATCH],
            count: 0,
        }
    }

    /// Takes what the socket holds now, up to [`RECV_BATCH`] datagrams;
    /// returns how many (0 when none is waiting).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain old data; the pointers set
        // below point into `self`, which outlives the call.
        let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { zeroed() };
        for (i, (iov, msg)) in iovs.iter_mut().zip(msgs.iter_mut()).enumerate() {
            iov.iov_base = self.bufs[i].as_mut_ptr().cast();
            iov.iov_len = RECV_SLOT;
            msg.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            msg.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds RECV_BATCH valid headers whose buffers and
        // names are writable for their stated lengths.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        self.count = n as usize;
        for (len, msg) in self.lens.iter_mut().zip(&msgs[..self.count]) {
            let truncated = msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            *len = if truncated { 0 } else { msg.msg_len as usize };
        }
        Ok(self.count)
    }

    /// Datagram `i` of the last [`recv`](Self::recv) and its sender; `None`
    /// for a truncated datagram or an unknown address family.
    pub fn datagram(&mut self, i: usize) -> Option<(&mut [u8], SocketAddr)> {
        if i >= self.count || self.lens[i] == 0 {
            return None;
        }
        let from = from_storage(&self.addrs[i])?;
        Some((&mut self.bufs[i][..self.lens[i]], from))
    }
}

/// Sends `segments` (consecutive datagrams of `segment` bytes each, the last
/// possibly shorter) to `to` in one system call. With `gso` off, or with one
/// segment, it is a plain `sendto` per datagram. Returns the bytes sent;
/// `WouldBlock` when the socket buffer is full (nothing was sent by the
/// failing call).
pub fn send(
    fd: RawFd,
    segments: &[u8],
    segment: usize,
    to: SocketAddr,
    gso: bool,
) -> io::Result<usize> {
    let (addr, addr_len) = to_storage(to);
    let mut iov = libc::iovec {
        iov_base: segments.as_ptr() as *mut libc::c_void,
        iov_len: segments.len(),
    };
    // Room for one cmsghdr carrying a u16, aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&addr as *const libc::sockaddr_storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = addr_len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if gso && segments.len() > segment {
        // SAFETY: `control` is large and aligned enough for one cmsg of a
        // u16 (CMSG_SPACE(2) = 24 bytes on 64-bit Linux).
        unsafe {
            let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
            debug_assert!(space <= size_of::<[u64; 4]>());
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
        }
        // SAFETY: every pointer in `msg` is valid for the call.
        let sent = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
        return if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(sent as usize)
        };
    }
    let mut sent = 0;
    for datagram in segments.chunks(segment) {
        iov.iov_base = datagram.as_ptr() as *mut libc::c_void;
        iov.iov_len = datagram.len();
        msg.msg_iov = &mut iov;
        // SAFETY: as above.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if sent > 0 { Ok(sent) } else { Err(e) };
        }
        sent += datagram.len();
    }
    Ok(sent)
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
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
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
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn addresses_round_trip() {
        for addr in ["127.0.0.1:443", "[::1]:8443", "[::ffff:10.0.0.1]:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (storage, _) = to_storage(addr);
            assert_eq!(from_storage(&storage), Some(addr));
        }
    }

    /// GSO segments arrive as separate datagrams; a batch receive takes
    /// them all in one call.
    #[test]
    fn segments_arrive_as_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut payload = vec![0u8; 3 * 1000 + 10];
        for (i, b) in payload.iter_mut().enumerate() {
            *b = (i / 1000) as u8;
        }
        let to = rx.local_addr().unwrap();
        for gso in [true, false] {
            let sent = match send(tx.as_raw_fd(), &payload, 1000, to, gso) {
                Err(e) if gso && gso_unsupported(&e) => continue, // kernel without GSO
                other => other.unwrap(),
            };
            assert_eq!(sent, payload.len());
            let mut batch = RecvBatch::new();
            let mut got = Vec::new();
            while got.len() < 4 {
                batch.recv(rx.as_raw_fd()).unwrap();
                for i in 0..RECV_BATCH {
                    if let Some((data, from)) = batch.datagram(i) {
                        assert_eq!(from, tx.local_addr().unwrap());
                        got.push(data.to_vec());
                    }
                }
            }
            let lens: Vec<usize> = got.iter().map(Vec::len).collect();
            assert_eq!(lens, [1000, 1000, 1000, 10], "gso {gso}");
            assert!(got
                .iter()
                .enumerate()
                .all(|(i, d)| d.iter().all(|&b| b == i as u8)));
        }
    }

    #[test]
    fn an_empty_socket_gives_nothing() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(RecvBatch::new().recv(rx.as_raw_fd()).unwrap(), 0);
    }
}
