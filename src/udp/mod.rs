//! Batched UDP: `recvmmsg` and `sendmmsg` over buffers allocated once, in
//! the style of quinn-udp. The shard's epoll loop, the kernel-floor relay
//! (`loadtest/floor`) and the load generator (`loadtest/sipgen`) all move
//! their datagrams through here, so the system calls are written once.
//!
//! - [`RecvBatch`]: N slots, each with its buffer, source address and
//!   length; one [`RecvBatch::recv`] fills as many as are queued.
//! - [`SendBatch`]: datagrams pushed as (destination, bytes) borrowed from
//!   the caller (a receive slot, an arena) and sent by
//!   [`SendQueue::flush`] in as few `sendmmsg` calls as the kernel allows.
//! - ICMP errors (ip(7) `IP_RECVERR`): [`enable_icmp_errors`],
//!   [`read_icmp_errors`] (the error queue's control messages),
//!   [`is_icmp_error`]; and [`meminfo`], the socket's queue and drops.
//!
//! Nothing here allocates per call or copies a datagram. No caller uses
//! GRO or GSO today (SIP datagrams go to many destinations, one segment
//! each), so there is none here. A leaf: it knows no other sipshard module.
//!
//! [`RecvBatch`]: crate::udp::RecvBatch
//! [`RecvBatch::recv`]: crate::udp::RecvBatch::recv
//! [`SendBatch`]: crate::udp::SendBatch
//! [`SendQueue::flush`]: crate::udp::SendQueue::flush
//! [`enable_icmp_errors`]: crate::udp::enable_icmp_errors
//! [`read_icmp_errors`]: crate::udp::read_icmp_errors
//! [`is_icmp_error`]: crate::udp::is_icmp_error
//! [`meminfo`]: crate::udp::meminfo
#![allow(unsafe_code)]

mod icmp;
mod recv;
mod send;

use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;

pub use icmp::{enable_icmp_errors, is_icmp_error, read_icmp_errors};
pub use recv::{RecvBatch, Wait};
pub use send::{SendBatch, SendQueue, Sent, WhenFull};

/// The most datagrams one call may move: the kernel's limit (UIO_MAXIOV).
pub const BATCH_MAX: usize = 1024;

/// A socket's receive queue as `SO_MEMINFO` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// Bytes queued and not yet received.
    pub queued: u32,
    /// The receive buffer's size in bytes (as granted, doubled).
    pub size: u32,
    /// Datagrams the kernel dropped on arrival since the socket opened
    /// (a full buffer, mostly), which a receive never sees.
    pub drops: u32,
}

/// Reads `SO_MEMINFO`: how full the socket's receive queue is and how many
/// datagrams the kernel dropped at it.
pub fn meminfo(fd: RawFd) -> io::Result<MemInfo> {
    const LEN: usize = libc::SK_MEMINFO_DROPS as usize + 1;
    let mut info = [0u32; LEN];
    let mut len = size_of::<[u32; LEN]>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of `len` bytes and one
    // socklen_t for the call; the kernel copies no more than `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(MemInfo {
        queued: info[libc::SK_MEMINFO_RMEM_ALLOC as usize],
        size: info[libc::SK_MEMINFO_RCVBUF as usize],
        drops: info[libc::SK_MEMINFO_DROPS as usize],
    })
}

#[cfg(test)]
mod tests;
