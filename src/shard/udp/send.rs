//! Outgoing datagrams gathered for one `sendmmsg(2)`: consecutive datagrams
//! to one peer and of one size (the last may be shorter) form a run, sent
//! as one message with `UDP_SEGMENT` (GSO), and all the runs of a flush,
//! whatever connection they belong to, go in one system call.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::{to_storage, SOL_UDP, UDP_SEGMENT};

/// Datagrams one batch holds.
const MAX_DATAGRAMS: usize = 64;
/// Segments per GSO message: the kernel takes up to 64, and 64 KiB in all.
const MAX_SEGMENTS: usize = 44;
/// `CMSG_SPACE(sizeof(u16))` on 64-bit Linux, in u64 words for alignment.
const CONTROL_WORDS: usize = 3;

/// One message of the batch: `count` datagrams of `segment` bytes (the
/// last possibly shorter) at `buf[start..start + len]`.
#[derive(Clone, Copy)]
struct Run {
    start: usize,
    len: usize,
    segment: usize,
    count: usize,
    to: SocketAddr,
    /// A shorter datagram ended it: nothing more may join.
    closed: bool,
}

/// The shard's outgoing datagrams between two system calls.
pub struct SendBatch {
    datagram: usize,
    buf: Box<[u8]>,
    len: usize,
    runs: Vec<Run>,
    /// Runs before this one are sent.
    sent: usize,
    msgs: Box<Messages>,
}

impl SendBatch {
    /// A batch for datagrams of at most `datagram` bytes.
    pub fn new(datagram: usize) -> Self {
        Self {
            datagram,
            buf: vec![0u8; MAX_DATAGRAMS * datagram].into_boxed_slice(),
            len: 0,
            runs: Vec::with_capacity(MAX_DATAGRAMS),
            sent: 0,
            msgs: Messages::new(),
        }
    }

    /// Where the next datagram goes; `None` when the batch is full and must
    /// be sent first.
    pub fn room(&mut self) -> Option<&mut [u8]> {
        let end = self.len + self.datagram;
        (end <= self.buf.len() && self.runs.len() < MAX_DATAGRAMS)
            .then(|| &mut self.buf[self.len..end])
    }

    /// Takes the `len` bytes just written into [`room`](Self::room).
    pub fn push(&mut self, len: usize, to: SocketAddr) {
        let start = self.len;
        self.len += len;
        let unsent = self.runs.len() > self.sent;
        if let Some(run) = self.runs.last_mut().filter(|_| unsent) {
            let joins =
                !run.closed && run.to == to && len <= run.segment && run.count < MAX_SEGMENTS;
            if joins {
                run.len += len;
                run.count += 1;
                run.closed = len < run.segment;
                return;
            }
        }
        self.runs.push(Run {
            start,
            len,
            segment: len,
            count: 1,
            to,
            closed: false,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.sent == self.runs.len()
    }

    /// Sends what is unsent, in as few system calls as the kernel allows.
    /// Stops at the first error: `WouldBlock` when the socket buffer is
    /// full; what was sent stays sent, the rest stays for another try, for
    /// [`unsent`](Self::unsent) or for [`skip`](Self::skip).
    pub fn send(&mut self, fd: RawFd, gso: bool) -> io::Result<()> {
        while !self.is_empty() {
            let sent = if gso {
                self.send_runs(fd)?
            } else {
                self.send_one_by_one(fd)?
            };
            self.sent += sent;
        }
        Ok(())
    }

    /// Drops the next unsent run (one a system call refused).
    pub fn skip(&mut self) {
        self.sent = (self.sent + 1).min(self.runs.len());
    }

    /// The datagrams not sent yet, one by one, with their destination.
    pub fn unsent(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        self.runs[self.sent..].iter().flat_map(move |run| {
            self.buf[run.start..run.start + run.len]
                .chunks(run.segment)
                .map(move |d| (d, run.to))
        })
    }

    /// Forgets every datagram, sent or not.
    pub fn clear(&mut self) {
        self.len = 0;
        self.runs.clear();
        self.sent = 0;
    }

    /// One message per run; returns how many runs the kernel took.
    fn send_runs(&mut self, fd: RawFd) -> io::Result<usize> {
        let Self {
            buf,
            runs,
            sent,
            msgs,
            ..
        } = self;
        msgs.count = 0;
        for run in runs[*sent..].iter().take(MAX_DATAGRAMS) {
            let segment = (run.count > 1).then_some(run.segment);
            msgs.push(&buf[run.start..run.start + run.len], run.to, segment);
        }
        msgs.send(fd)
    }

    /// Without GSO: one message per datagram of the next run. A run counts
    /// as sent once all its datagrams are; the rest of one cut short stays
    /// as a run of its own.
    fn send_one_by_one(&mut self, fd: RawFd) -> io::Result<usize> {
        let run = self.runs[self.sent];
        self.msgs.count = 0;
        for datagram in self.buf[run.start..run.start + run.len].chunks(run.segment) {
            self.msgs.push(datagram, run.to, None);
        }
        let done = self.msgs.send(fd)?;
        if done < run.count {
            let skipped = done * run.segment;
            let rest = &mut self.runs[self.sent];
            rest.start += skipped;
            rest.len -= skipped;
            rest.count -= done;
            return Ok(0);
        }
        Ok(1)
    }
}

/// The `mmsghdr`s of one `sendmmsg` call and what they point at.
struct Messages {
    count: usize,
    iovs: [libc::iovec; MAX_DATAGRAMS],
    names: [libc::sockaddr_storage; MAX_DATAGRAMS],
    name_lens: [libc::socklen_t; MAX_DATAGRAMS],
    controls: [[u64; CONTROL_WORDS]; MAX_DATAGRAMS],
    segments: [Option<u16>; MAX_DATAGRAMS],
}

impl Messages {
    fn new() -> Box<Self> {
        // SAFETY: every field is plain old data, for which zeroes are valid.
        Box::new(unsafe { zeroed() })
    }

    fn push(&mut self, data: &[u8], to: SocketAddr, segment: Option<usize>) {
        let i = self.count;
        self.iovs[i] = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        (self.names[i], self.name_lens[i]) = to_storage(to);
        self.segments[i] = segment.map(|s| s as u16);
        self.count += 1;
    }

    /// Returns how many messages the kernel took (at least one).
    fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: mmsghdr is plain old data; each header below points into
        // `self`, which outlives the call, and at the data pushed, which the
        // caller keeps borrowed.
        let mut headers: [libc::mmsghdr; MAX_DATAGRAMS] = unsafe { zeroed() };
        for (i, header) in headers.iter_mut().enumerate().take(self.count) {
            let msg = &mut header.msg_hdr;
            msg.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = self.name_lens[i];
            msg.msg_iov = &mut self.iovs[i];
            msg.msg_iovlen = 1;
            if let Some(segment) = self.segments[i] {
                // SAFETY: `controls[i]` is aligned for cmsghdr and holds
                // CMSG_SPACE(2) bytes (checked below in debug builds).
                unsafe {
                    let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                    debug_assert!(space <= CONTROL_WORDS * 8);
                    msg.msg_control = self.controls[i].as_mut_ptr().cast();
                    msg.msg_controllen = space;
                    let cmsg = libc::CMSG_FIRSTHDR(msg);
                    (*cmsg).cmsg_level = SOL_UDP;
                    (*cmsg).cmsg_type = UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
                }
            }
        }
        // SAFETY: `headers[..count]` are valid as set up above.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                self.count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::udp::{gso_unsupported, RecvBatch, RECV_BATCH};
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn receive_all(rx: &UdpSocket, want: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < want && std::time::Instant::now() < deadline {
            batch.recv(rx.as_raw_fd()).unwrap();
            for i in 0..RECV_BATCH {
                if let Some((data, from)) = batch.datagram(i) {
                    got.push((data.to_vec(), from));
                }
            }
        }
        got
    }

    /// Datagrams of two connections (peers), in runs of mixed sizes, leave
    /// in order and whole, with GSO and without.
    #[test]
    fn runs_of_mixed_sizes_to_two_peers() {
        let (a, b) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // (peer, size, fill byte)
        let plan = [
            (0, 1000, 1),
            (0, 1000, 2),
            (0, 300, 3),  // closes the run
            (0, 1000, 4), // a new run
            (1, 1000, 5),
            (1, 1200, 6), // larger: a new run
            (0, 50, 7),
        ];
        for gso in [true, false] {
            let mut out = SendBatch::new(1350);
            for &(peer, size, fill) in &plan {
                let to = [&a, &b][peer].local_addr().unwrap();
                let room = out.room().unwrap();
                room[..size].fill(fill);
                out.push(size, to);
            }
            match out.send(tx.as_raw_fd(), gso) {
                Err(e) if gso && gso_unsupported(&e) => continue,
                other => other.unwrap(),
            }
            assert!(out.is_empty());
            out.clear();
            let got_a = receive_all(&a, 5);
            let got_b = receive_all(&b, 2);
            let shape = |got: &[(Vec<u8>, SocketAddr)]| {
                got.iter().map(|(d, _)| (d.len(), d[0])).collect::<Vec<_>>()
            };
            assert_eq!(
                shape(&got_a),
                [(1000, 1), (1000, 2), (300, 3), (1000, 4), (50, 7)],
                "gso {gso}"
            );
            assert_eq!(shape(&got_b), [(1000, 5), (1200, 6)], "gso {gso}");
            assert!(got_a.iter().chain(&got_b).all(|(d, from)| {
                d.iter().all(|&x| x == d[0]) && *from == tx.local_addr().unwrap()
            }));
        }
    }

    #[test]
    fn a_full_batch_asks_to_be_sent() {
        let mut out = SendBatch::new(1350);
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut pushed = 0;
        while out.room().is_some() {
            out.push(1350, to);
            pushed += 1;
        }
        assert_eq!(pushed, MAX_DATAGRAMS);
        assert_eq!(out.unsent().count(), MAX_DATAGRAMS);
        // Runs hold at most MAX_SEGMENTS datagrams each.
        assert_eq!(out.runs.len(), MAX_DATAGRAMS.div_ceil(MAX_SEGMENTS));
    }
}
