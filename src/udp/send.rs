//! `sendmmsg` over bytes the caller owns: headers allocated once, filled
//! per flush, no datagram copied.

use std::io;
use std::marker::PhantomData;
use std::mem::zeroed;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

use super::is_icmp_error;

/// What a send does when the kernel refuses a datagram for want of room
/// (`EAGAIN`, `ENOBUFS`). Any other refusal drops that datagram alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop that datagram and go on with the next: UDP promises no more,
    /// and a loop that retried would stall (the shard).
    DropOne,
    /// Drop it and the rest of the batch, which would fail the same way,
    /// without a call each (the floor: past its rate the load is lost
    /// here, at the cost of one call).
    DropRest,
    /// Block in the send, and where the kernel still refuses, yield and
    /// try again, up to `retries` times per flush (the load generator,
    /// which must not lose its own load).
    Wait { retries: u32 },
}

/// What one flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub sent: u64,
    /// Datagrams the kernel refused (send buffer full, unreachable).
    pub failed: u64,
    /// A send reported an ICMP error about an earlier datagram: the error
    /// queue has its details ([`super::read_icmp_errors`]).
    pub icmp_pending: bool,
}

impl std::ops::AddAssign for Sent {
    fn add_assign(&mut self, other: Sent) {
        self.sent += other.sent;
        self.failed += other.failed;
        self.icmp_pending |= other.icmp_pending;
    }
}

/// The headers of one `sendmmsg` batch, allocated once: the iovecs,
/// destinations and message headers of up to `capacity` datagrams.
/// [`SendBatch::queue`] starts a batch.
pub struct SendBatch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    destinations: Vec<SockAddr>,
}

// SAFETY: the raw pointers in the headers and iovecs point into this
// batch's own heap buffers, or at bytes a `SendQueue` borrowed, and are
// only read by that queue's flush, which holds the borrow; a moved batch
// shares nothing with the thread it left.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Room for `capacity` datagrams per flush (1 to [`super::BATCH_MAX`]).
    pub fn new(capacity: usize) -> SendBatch {
        assert!(
            (1..=super::BATCH_MAX).contains(&capacity),
            "send batch size out of range"
        );
        let placeholder = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        SendBatch {
            // SAFETY: iovec and mmsghdr are plain C structs for which
            // all-zero bytes are a valid value.
            headers: vec![unsafe { zeroed() }; capacity],
            iovecs: vec![unsafe { zeroed() }; capacity],
            destinations: vec![placeholder; capacity],
        }
    }

    /// How many datagrams one flush sends at most.
    pub fn capacity(&self) -> usize {
        self.headers.len()
    }

    /// An empty batch that borrows its datagrams' bytes for `'a`: they
    /// cannot change or go away until it is flushed or dropped.
    pub fn queue<'a>(&'a mut self) -> SendQueue<'a> {
        SendQueue {
            batch: self,
            queued: 0,
            _bytes: PhantomData,
        }
    }
}

/// Datagrams queued for one flush, their bytes borrowed for `'a`.
pub struct SendQueue<'a> {
    batch: &'a mut SendBatch,
    queued: usize,
    _bytes: PhantomData<&'a [u8]>,
}

impl<'a> SendQueue<'a> {
    /// Queues `bytes` for `to`, as they are; `false` (and nothing queued)
    /// when the batch is full.
    #[inline]
    #[must_use = "a full batch queues nothing"]
    pub fn push(&mut self, to: SocketAddr, bytes: &'a [u8]) -> bool {
        let k = self.queued;
        if k == self.batch.capacity() {
            return false;
        }
        let batch = &mut *self.batch;
        batch.destinations[k] = SockAddr::from(to);
        batch.iovecs[k] = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let header = &mut batch.headers[k].msg_hdr;
        header.msg_name = batch.destinations[k].as_ptr() as *mut libc::c_void;
        header.msg_namelen = batch.destinations[k].len();
        header.msg_iov = &mut batch.iovecs[k];
        header.msg_iovlen = 1;
        header.msg_control = std::ptr::null_mut();
        header.msg_controllen = 0;
        header.msg_flags = 0;
        self.queued += 1;
        true
    }

    pub fn len(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    pub fn is_full(&self) -> bool {
        self.queued == self.batch.capacity()
    }

    /// Sends everything queued from `fd`, with as few `sendmmsg` calls as
    /// the kernel allows, and empties the queue. Never retries a refused
    /// datagram but one: an ICMP error (`IP_RECVERR`) about an earlier
    /// datagram surfaces on a later send, which was not its cause, so that
    /// one goes again, once.
    pub fn flush(&mut self, fd: RawFd, when_full: WhenFull) -> Sent {
        let count = std::mem::take(&mut self.queued);
        let flags = match when_full {
            WhenFull::Wait { .. } => 0,
            WhenFull::DropOne | WhenFull::DropRest => libc::MSG_DONTWAIT,
        };
        let mut retries = match when_full {
            WhenFull::Wait { retries } => retries,
            WhenFull::DropOne | WhenFull::DropRest => 0,
        };
        let mut result = Sent::default();
        let mut offset = 0;
        let mut retried = usize::MAX;
        while offset < count {
            // SAFETY: headers offset..count point at this batch's
            // destinations and iovecs, which point at bytes borrowed for
            // 'a; all alive and unchanged until we return. The kernel
            // reads at most count - offset entries.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.batch.headers[offset..].as_mut_ptr(),
                    (count - offset) as libc::c_uint,
                    flags,
                )
            };
            if n > 0 {
                result.sent += n as u64;
                offset += n as usize;
                continue;
            }
            let errno = match n {
                0 => None,
                _ => io::Error::last_os_error().raw_os_error(),
            };
            match errno {
                Some(libc::EINTR) => {}
                Some(e) if is_icmp_error(e) && retried != offset => {
                    result.icmp_pending = true;
                    retried = offset;
                }
                Some(libc::EAGAIN | libc::ENOBUFS) if when_full == WhenFull::DropRest => {
                    result.failed += (count - offset) as u64;
                    break;
                }
                Some(libc::EAGAIN | libc::ENOBUFS) if retries > 0 => {
                    retries -= 1;
                    std::thread::yield_now();
                }
                // Refused, or a 0 the kernel should not give: skip this
                // datagram so that the loop always moves on.
                _ => {
                    result.failed += 1;
                    offset += 1;
                }
            }
        }
        result
    }
}
