//! Batched datagram I/O for the responder's UDP loops: `recvmmsg(2)` takes up to [`BATCH`]
//! queries in one system call and `sendmmsg(2)` sends their answers in one more, so under load
//! the two system calls per query of `recv_from`/`send_to` become two per batch (measured in
//! `bench/dns.sh`; docs/BENCHMARKS.md). Neither tokio nor socket2 offers the two calls; the
//! unsafe code is confined here, over buffers this struct owns.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

/// Datagrams read (and answers sent) per system call.
pub const BATCH: usize = 32;

/// Largest query read whole; a longer datagram is cut short (and then fails to parse), as a
/// `recv_from` into a buffer of this size would.
const DATAGRAM: usize = 4096;

/// The buffers of one loop: the datagrams read, their senders, and the answers to send.
pub struct Batch {
    bufs: Box<[[u8; DATAGRAM]; BATCH]>,
    lens: [usize; BATCH],
    from: Box<[libc::sockaddr_storage; BATCH]>,
    from_len: [libc::socklen_t; BATCH],
    outs: Vec<Vec<u8>>,
    to: Box<[libc::sockaddr_storage; BATCH]>,
    to_len: [libc::socklen_t; BATCH],
    pending: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    /// Empty buffers for one loop (about 140 KiB, allocated once).
    pub fn new() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (AF_UNSPEC) value.
        let storage = || Box::new(unsafe { zeroed::<[libc::sockaddr_storage; BATCH]>() });
        Self {
            bufs: vec![[0; DATAGRAM]; BATCH]
                .into_boxed_slice()
                .try_into()
                .expect("BATCH buffers"),
            lens: [0; BATCH],
            from: storage(),
            from_len: [0; BATCH],
            outs: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            to: storage(),
            to_len: [0; BATCH],
            pending: 0,
        }
    }

    /// Reads the datagrams waiting on `fd` (non-blocking: `WouldBlock` when there are none);
    /// returns how many were read.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: every pointer handed to the kernel points into buffers owned by `self` (or the
        // local arrays), which outlive the call, with their true lengths.
        unsafe {
            let mut iov: [libc::iovec; BATCH] = zeroed();
            let mut hdrs: [libc::mmsghdr; BATCH] = zeroed();
            for i in 0..BATCH {
                iov[i] = libc::iovec {
                    iov_base: self.bufs[i].as_mut_ptr().cast(),
                    iov_len: DATAGRAM,
                };
                let h = &mut hdrs[i].msg_hdr;
                h.msg_name = (&mut self.from[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_iov = &mut iov[i];
                h.msg_iovlen = 1;
            }
            let n = libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            );
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            for (i, h) in hdrs.iter().take(n).enumerate() {
                self.lens[i] = (h.msg_len as usize).min(DATAGRAM);
                self.from_len[i] = h.msg_hdr.msg_namelen;
            }
            Ok(n)
        }
    }

    /// Hands the `i`th datagram read, its sender and a buffer for the answer to `answer`;
    /// queues the answer for that sender if `answer` returns `true`. A datagram from a family
    /// that is not IP is skipped.
    pub fn answer_with(
        &mut self,
        i: usize,
        answer: impl FnOnce(&[u8], IpAddr, &mut Vec<u8>) -> bool,
    ) {
        let Some(ip) = ip_of(&self.from[i]) else {
            return;
        };
        let out = &mut self.outs[self.pending];
        out.clear();
        if answer(&self.bufs[i][..self.lens[i]], ip, out) {
            self.to[self.pending] = self.from[i];
            self.to_len[self.pending] = self.from_len[i];
            self.pending += 1;
        }
    }

    /// Sends the queued answers on `fd` without waiting; returns how many the socket did not
    /// take (dropped, like packets lost on the way).
    pub fn send(&mut self, fd: RawFd) -> usize {
        let total = self.pending;
        self.pending = 0;
        let mut at = 0;
        let mut dropped = 0;
        while at < total {
            // SAFETY: as in `recv`: pointers into `self`'s buffers and the local arrays, with
            // their lengths, for the duration of the call.
            let sent = unsafe {
                let mut iov: [libc::iovec; BATCH] = zeroed();
                let mut hdrs: [libc::mmsghdr; BATCH] = zeroed();
                for (j, i) in (at..total).enumerate() {
                    iov[j] = libc::iovec {
                        iov_base: self.outs[i].as_mut_ptr().cast(),
                        iov_len: self.outs[i].len(),
                    };
                    let h = &mut hdrs[j].msg_hdr;
                    h.msg_name = (&mut self.to[i] as *mut libc::sockaddr_storage).cast();
                    h.msg_namelen = self.to_len[i];
                    h.msg_iov = &mut iov[j];
                    h.msg_iovlen = 1;
                }
                libc::sendmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    (total - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if sent < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    // The socket's send buffer is full: the rest is dropped, not waited for.
                    return dropped + (total - at);
                }
                // This one answer could not go (its destination, say): skip it, send the rest.
                dropped += 1;
                at += 1;
            } else {
                at += sent as usize;
            }
        }
        dropped
    }
}

/// The IP address in a socket address the kernel filled in.
fn ip_of(s: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // enough and aligned for.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Datagrams from two senders are read in one call with their senders, and the answers
    /// reach each sender.
    #[test]
    fn reads_a_batch_and_answers_each_sender() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = server.local_addr().unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
        a.send_to(b"one", at).unwrap();
        b.send_to(b"two", at).unwrap();
        a.send_to(b"three", at).unwrap();
        let mut batch = Batch::new();
        let mut got = Vec::new();
        // Loopback delivers at once; bounded in case it does not.
        for _ in 0..100 {
            match batch.recv(server.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        batch.answer_with(i, |d, ip, out| {
                            got.push((d.to_vec(), ip));
                            out.extend_from_slice(b"re:");
                            out.extend_from_slice(d);
                            true
                        });
                    }
                    assert_eq!(batch.send(server.as_raw_fd()), 0);
                    if got.len() == 3 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (b"one".to_vec(), "127.0.0.2".parse().unwrap()));
        assert_eq!(got[1], (b"two".to_vec(), "127.0.0.3".parse().unwrap()));
        let mut buf = [0u8; 16];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"re:two");
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"re:one");
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"re:three");
    }
}
