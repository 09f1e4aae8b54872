//! `recvmmsg` into slots allocated once.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// How a receive waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Never: take what is queued, `WouldBlock` when nothing is.
    No,
    /// For the first datagram only (until the socket's receive timeout),
    /// then take whatever else is already queued (`MSG_WAITFORONE`).
    ForOne,
}

/// Slots for one `recvmmsg` call, each with its buffer, source address and
/// length, allocated once and reused by every call.
pub struct RecvBatch {
    slot_bytes: usize,
    buffers: Vec<u8>,
    sources: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    received: usize,
}

// SAFETY: the raw pointers in the headers and iovecs point into this
// batch's own heap buffers, which move with it, and are rebuilt before
// every call; no other thread can reach them through a moved batch.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `slots` datagrams per call (at most [`super::BATCH_MAX`]; 0 makes an
    /// empty batch that receives nothing), each of up to `slot_bytes`:
    /// a longer datagram is cut by the kernel and reported truncated.
    pub fn new(slots: usize, slot_bytes: usize) -> RecvBatch {
        assert!(slots <= super::BATCH_MAX, "more slots than one call moves");
        RecvBatch {
            slot_bytes,
            buffers: vec![0; slots * slot_bytes],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C
            // structs for which all-zero bytes are a valid value.
            sources: vec![unsafe { zeroed() }; slots],
            iovecs: vec![unsafe { zeroed() }; slots],
            headers: vec![unsafe { zeroed() }; slots],
            received: 0,
        }
    }

    /// How many slots one call fills at most.
    pub fn slots(&self) -> usize {
        self.headers.len()
    }

    /// Receives up to a batch of datagrams on `fd`; returns how many. The
    /// errors are the kernel's, unchanged (`WouldBlock` when nothing waits,
    /// an ICMP error that `IP_RECVERR` hands to the next call, ...); after
    /// one the batch holds no datagram.
    pub fn recv(&mut self, fd: RawFd, wait: Wait) -> io::Result<usize> {
        self.received = 0;
        let slots = self.slots();
        if slots == 0 {
            return Ok(0);
        }
        // The headers are rebuilt on every call: the kernel rewrites the
        // name lengths and flags, and building the pointers here keeps
        // them fresh with no aliasing to reason about across calls.
        let buffers = self.buffers.as_mut_ptr();
        for i in 0..slots {
            self.iovecs[i] = libc::iovec {
                // SAFETY: i * slot_bytes is within `buffers` (slots *
                // slot_bytes bytes long).
                iov_base: unsafe { buffers.add(i * self.slot_bytes) }.cast(),
                iov_len: self.slot_bytes,
            };
            let header = &mut self.headers[i].msg_hdr;
            header.msg_name = (&mut self.sources[i] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
        }
        let flags = match wait {
            Wait::No => libc::MSG_DONTWAIT,
            Wait::ForOne => libc::MSG_WAITFORONE,
        };
        // SAFETY: each of the `slots` headers points at its own source
        // slot, iovec and slot_bytes region of `buffers`, all alive and
        // otherwise untouched during the call; the kernel fills at most
        // `slots` entries.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                slots as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = n as usize;
        Ok(self.received)
    }

    /// Datagrams the last [`RecvBatch::recv`] received.
    pub fn len(&self) -> usize {
        self.received
    }

    pub fn is_empty(&self) -> bool {
        self.received == 0
    }

    /// Whether datagram `i` was longer than a slot (and cut).
    #[inline]
    pub fn is_truncated(&self, i: usize) -> bool {
        i < self.received && self.headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    /// Datagram `i` of the last receive: its source and bytes. `None` past
    /// the last datagram, for a truncated one, or for an address family
    /// that is not IP.
    #[inline]
    pub fn datagram(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.received || self.is_truncated(i) {
            return None;
        }
        let header = &self.headers[i];
        let len = (header.msg_len as usize).min(self.slot_bytes);
        // SAFETY: the kernel filled `sources[i]` and wrote its length to
        // msg_namelen, which never exceeds the storage we gave it.
        let address = unsafe { SockAddr::new(self.sources[i], header.msg_hdr.msg_namelen) };
        let source = address.as_socket()?;
        let start = i * self.slot_bytes;
        Some((source, &self.buffers[start..start + len]))
    }
}
