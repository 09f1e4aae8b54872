//! The system calls of the floor: `recvmmsg` and `sendmmsg` over buffers
//! allocated once per thread, and the socket's drop count. Every `unsafe`
//! of the relay's packet path is here, each with the reason it holds.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// A slot holds the largest UDP payload, so that no SIP datagram, however
/// large, is cut (the gateway's slots are the same size).
pub const SLOT_BYTES: usize = 65_536;

/// The most datagrams one call may move: the kernel's limit (UIO_MAXIOV).
pub const BATCH_MAX: usize = 1024;

/// What one send did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub sent: u64,
    pub dropped: u64,
}

/// One thread's buffers: the datagrams received, where each goes, and
/// the headers of both calls. Sending points at the receive slots, so a
/// datagram's bytes are never copied in user space.
pub struct Batch {
    size: usize,
    buffers: Vec<u8>,
    sources: Vec<libc::sockaddr_storage>,
    recv_iovecs: Vec<libc::iovec>,
    recv_headers: Vec<libc::mmsghdr>,
    received: usize,
    destinations: Vec<SockAddr>,
    send_iovecs: Vec<libc::iovec>,
    send_headers: Vec<libc::mmsghdr>,
    /// Datagrams queued for the next `send`.
    queued: usize,
}

impl Batch {
    /// Buffers for `size` datagrams per call (1 to `BATCH_MAX`).
    pub fn new(size: usize) -> Batch {
        assert!((1..=BATCH_MAX).contains(&size), "batch size out of range");
        let placeholder = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        Batch {
            size,
            buffers: vec![0; size * SLOT_BYTES],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C
            // structs for which all-zero bytes are a valid value.
            sources: vec![unsafe { zeroed() }; size],
            recv_iovecs: vec![unsafe { zeroed() }; size],
            recv_headers: vec![unsafe { zeroed() }; size],
            received: 0,
            destinations: vec![placeholder; size],
            send_iovecs: vec![unsafe { zeroed() }; size],
            send_headers: vec![unsafe { zeroed() }; size],
            queued: 0,
        }
    }

    /// Waits for at least one datagram (until the socket's receive
    /// timeout) and takes as many as are queued, up to the batch size.
    /// Returns how many; a timeout or a signal is `WouldBlock` or
    /// `Interrupted`.
    pub fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        self.received = 0;
        self.queued = 0;
        // The headers are rebuilt on every call: the kernel rewrites the
        // name lengths and flags, and building the pointers here keeps
        // them fresh with no aliasing to reason about across calls.
        let buffers = self.buffers.as_mut_ptr();
        for i in 0..self.size {
            self.recv_iovecs[i] = libc::iovec {
                // SAFETY: i * SLOT_BYTES is within `buffers`
                // (size * SLOT_BYTES bytes long).
                iov_base: unsafe { buffers.add(i * SLOT_BYTES) }.cast(),
                iov_len: SLOT_BYTES,
            };
            let header = &mut self.recv_headers[i].msg_hdr;
            header.msg_name = (&mut self.sources[i] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut self.recv_iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
        }
        // SAFETY: each of the `size` headers points at its own source slot,
        // iovec and SLOT_BYTES region of `buffers`, all alive and otherwise
        // untouched during the call; the kernel fills at most `size` entries.
        // MSG_WAITFORONE: block for the first datagram only, then take
        // whatever else is already queued.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.recv_headers.as_mut_ptr(),
                self.size as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = n as usize;
        Ok(self.received)
    }

    /// The source of received datagram `i`; `None` if it was truncated
    /// (larger than a slot) or came from an address family we do not
    /// relay. Such a datagram is dropped.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        if i >= self.received {
            return None;
        }
        let header = &self.recv_headers[i].msg_hdr;
        if header.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        // SAFETY: the kernel filled `sources[i]` and wrote its length to
        // msg_namelen, which never exceeds the storage we gave it.
        let address = unsafe { SockAddr::new(self.sources[i], header.msg_namelen) };
        address.as_socket()
    }

    /// Queues received datagram `i` to go to `destination`, as it is.
    pub fn queue(&mut self, i: usize, destination: SocketAddr) {
        assert!(i < self.received, "queueing a datagram not received");
        let k = self.queued;
        self.destinations[k] = SockAddr::from(destination);
        let len = (self.recv_headers[i].msg_len as usize).min(SLOT_BYTES);
        self.send_iovecs[k] = libc::iovec {
            // SAFETY: i < size, so the slot is within `buffers`.
            iov_base: unsafe { self.buffers.as_mut_ptr().add(i * SLOT_BYTES) }.cast(),
            iov_len: len,
        };
        self.queued += 1;
    }

    /// Sends the queued datagrams with as few `sendmmsg` calls as the
    /// kernel allows. It never waits, as the gateway never does: a full
    /// send buffer (EAGAIN, ENOBUFS) drops the rest of the batch, which
    /// would fail the same way, and a datagram the kernel refuses for any
    /// other reason is dropped alone.
    pub fn send(&mut self, fd: RawFd) -> Sent {
        let count = self.queued;
        self.queued = 0;
        for k in 0..count {
            let header = &mut self.send_headers[k].msg_hdr;
            header.msg_name = self.destinations[k].as_ptr() as *mut libc::c_void;
            header.msg_namelen = self.destinations[k].len();
            header.msg_iov = &mut self.send_iovecs[k];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
        }
        let mut result = Sent::default();
        let mut offset = 0;
        while offset < count {
            // SAFETY: headers offset..count point at `destinations`,
            // `send_iovecs` and the receive slots, all alive and unchanged
            // until we return; the kernel reads at most count - offset.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send_headers[offset..].as_mut_ptr(),
                    (count - offset) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                result.sent += n as u64;
                offset += n as usize;
                continue;
            }
            let errno = if n < 0 {
                io::Error::last_os_error().raw_os_error()
            } else {
                None
            };
            match errno {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                    result.dropped += (count - offset) as u64;
                    break;
                }
                // Unreachable, too big, or a 0 the kernel should not give:
                // skip this datagram so the loop always moves on.
                _ => {
                    result.dropped += 1;
                    offset += 1;
                }
            }
        }
        result
    }
}

/// Datagrams the kernel dropped on arrival at this socket (receive buffer
/// full), which `recvmmsg` never sees: past the floor's rate the load is
/// lost here, not in the relay's own counters.
pub fn kernel_drops(fd: RawFd) -> io::Result<u64> {
    // SO_MEMINFO fills an array of u32 indexed by SK_MEMINFO_*; the kernel
    // copies no more than the length we give.
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = size_of::<[u32; libc::SK_MEMINFO_DROPS as usize + 1]>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of `len` bytes and
    // one socklen_t for the duration of the call.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(info[libc::SK_MEMINFO_DROPS as usize]))
}
