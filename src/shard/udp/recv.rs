//! Incoming datagrams: `recvmmsg(2)` into buffers allocated once per shard.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::from_storage;

/// Datagrams taken per `recvmmsg` call.
pub const RECV_BATCH: usize = 32;
/// Room per received datagram. Our transport parameters ask peers for at
/// most `MAX_DATAGRAM` (1350); a larger datagram is truncated and dropped.
const RECV_SLOT: usize = 2048;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn an_empty_socket_gives_nothing() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(RecvBatch::new().recv(rx.as_raw_fd()).unwrap(), 0);
    }
}
