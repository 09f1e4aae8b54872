//! The Linux system calls of the epoll shard loop: `recvmmsg`/`sendmmsg`
//! batches, epoll and eventfd. Every `unsafe` of the runtime is here, each
//! with the reason it holds.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::SockAddr;

/// Datagrams moved per system call: enough to amortise the call, small
/// enough that one batch stays in L2.
pub(crate) const BATCH: usize = 32;

/// A receive slot holds the largest UDP payload.
pub(crate) const DATAGRAM_BYTES_MAX: usize = 65_536;

/// Buffers for one `recvmmsg` call, allocated once per shard.
pub(crate) struct RecvBatch {
    buffers: Vec<u8>,
    addresses: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    received: usize,
    /// A receive reported an ICMP error: the error queue has its details.
    pub(crate) icmp_pending: bool,
}

impl RecvBatch {
    pub(crate) fn new() -> RecvBatch {
        RecvBatch {
            buffers: vec![0; BATCH * DATAGRAM_BYTES_MAX],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C
            // structs for which all-zero bytes are a valid value.
            addresses: vec![unsafe { zeroed() }; BATCH],
            iovecs: vec![unsafe { zeroed() }; BATCH],
            headers: vec![unsafe { zeroed() }; BATCH],
            received: 0,
            icmp_pending: false,
        }
    }

    /// Receives up to `BATCH` datagrams without blocking; 0 when none wait.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.buffers[i * DATAGRAM_BYTES_MAX..].as_mut_ptr().cast(),
                iov_len: DATAGRAM_BYTES_MAX,
            };
            let header = &mut self.headers[i].msg_hdr;
            header.msg_name = (&mut self.addresses[i] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
        }
        // SAFETY: every header points at this batch's own address slot,
        // iovec and a DATAGRAM_BYTES_MAX region of `buffers`, all alive and
        // unaliased for the duration of the call; the kernel writes at most
        // BATCH entries.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            self.received = 0;
            if error.raw_os_error().is_some_and(is_icmp_error) {
                // IP_RECVERR hands an ICMP error to the next call; the
                // datagrams behind it are still queued.
                self.icmp_pending = true;
                return Ok(0);
            }
            return match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(error),
            };
        }
        self.received = n as usize;
        Ok(self.received)
    }

    /// Datagram `i` of the last `recv`: its source and bytes. `None` for a
    /// truncated datagram (larger than a slot) or an unknown address family.
    pub(crate) fn datagram(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.received {
            return None;
        }
        let header = &self.headers[i];
        if header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = (header.msg_len as usize).min(DATAGRAM_BYTES_MAX);
        // SAFETY: the kernel filled `addresses[i]` and wrote its length to
        // msg_namelen, which never exceeds the storage size we gave.
        let address = unsafe { SockAddr::new(self.addresses[i], header.msg_hdr.msg_namelen) };
        let source = address.as_socket()?;
        Some((
            source,
            &self.buffers[i * DATAGRAM_BYTES_MAX..i * DATAGRAM_BYTES_MAX + len],
        ))
    }
}

/// Datagrams waiting to go out, written in place and sent by `sendmmsg`.
pub(crate) struct SendBatch {
    arena: Vec<u8>,
    used: usize,
    /// Destination, offset and length in the arena, and whether it leaves
    /// from the shard's own socket (requests) or the listen socket.
    pending: Vec<(SockAddr, usize, usize, bool)>,
}

/// What one flush did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flushed {
    pub(crate) sent: u64,
    /// Datagrams the kernel refused (send buffer full, unreachable).
    pub(crate) failed: u64,
    /// A send reported an ICMP error: the error queue has its details.
    pub(crate) icmp_pending: bool,
}

/// The errors IP_RECVERR reports for an ICMP message about a datagram we
/// sent (port or host unreachable).
/// Sends this process SIGTERM: a shard that cannot go on asks for the
/// clean stop the main thread runs on a signal.
pub(crate) fn raise_sigterm() {
    // SAFETY: kill(2) on our own pid with a valid signal number.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
}

/// How full a socket's receive buffer is (0.0 to 1.0), from `SO_MEMINFO`:
/// datagrams the shard has not taken yet. Under overload this is where
/// they wait, and past the buffer the kernel drops them, admitted calls'
/// messages as readily as new INVITEs. With it, how many datagrams the
/// kernel has dropped at the socket since it was opened (at a full
/// buffer, mostly). `None` where the kernel does not say.
pub(crate) fn receive_queue(fd: RawFd) -> Option<(f64, u32)> {
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: a valid fd; `info` is writable for `len` bytes, and the
    // kernel writes at most `len` and updates it.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let queued = info[libc::SK_MEMINFO_RMEM_ALLOC as usize];
    let size = info[libc::SK_MEMINFO_RCVBUF as usize];
    let drops = info[libc::SK_MEMINFO_DROPS as usize];
    (rc == 0 && size > 0).then(|| (f64::from(queued) / f64::from(size), drops))
}

/// Attaches a classic socket filter that refuses every datagram: the
/// kernel drops them at the socket's door (counted, never queued). The
/// in-kernel shedding's sink is such a socket.
pub(crate) fn refuse_all_datagrams(fd: RawFd) -> io::Result<()> {
    // BPF_RET | BPF_K with k = 0: keep no byte of the packet.
    let mut refuse = libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0,
    };
    let program = libc::sock_fprog {
        len: 1,
        filter: &mut refuse,
    };
    // SAFETY: a valid fd; `program` and the instruction it points to live
    // through the call, and the kernel copies them.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&program as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(crate) fn is_icmp_error(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN
    )
}

/// Asks the kernel to queue ICMP errors about our datagrams on the socket
/// (ip(7) IP_RECVERR), so that a dead backend is known at once.
pub(crate) fn enable_icmp_errors(fd: RawFd, ipv6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, name) = match ipv6 {
        false => (libc::SOL_IP, libc::IP_RECVERR),
        true => (libc::SOL_IPV6, libc::IPV6_RECVERR),
    };
    // SAFETY: passes a pointer to a live c_int and its size.
    let result = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match result {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// ICMP errors read from the socket's error queue per call, at most.
const ICMP_ERRORS_MAX: usize = 64;

/// Reads the socket's error queue: the destinations that ICMP said were
/// unreachable (port, host or network), in order.
pub(crate) fn read_icmp_errors(fd: RawFd, unreachable: &mut Vec<SocketAddr>) {
    for _ in 0..ICMP_ERRORS_MAX {
        // SAFETY: plain C structs; zero is valid.
        let mut name: libc::sockaddr_storage = unsafe { zeroed() };
        let mut control = [0u64; 64];
        let mut payload = [0u8; 8];
        let mut iovec = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        // SAFETY: plain C struct; zero is valid.
        let mut header: libc::msghdr = unsafe { zeroed() };
        header.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        header.msg_iov = &mut iovec;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = size_of::<[u64; 64]>();
        // SAFETY: every pointer in `header` is to a live local of the size
        // given; the kernel writes within those sizes.
        let n = unsafe { libc::recvmsg(fd, &mut header, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            return;
        }
        let mut refused = false;
        // SAFETY: the CMSG macros walk the control buffer the kernel
        // filled, bounded by msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&header);
            while !cmsg.is_null() {
                let level = (*cmsg).cmsg_level;
                let kind = (*cmsg).cmsg_type;
                if (level == libc::SOL_IP && kind == libc::IP_RECVERR)
                    || (level == libc::SOL_IPV6 && kind == libc::IPV6_RECVERR)
                {
                    let error: libc::sock_extended_err =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    let icmp = error.ee_origin == libc::SO_EE_ORIGIN_ICMP
                        || error.ee_origin == libc::SO_EE_ORIGIN_ICMP6;
                    refused |= icmp && is_icmp_error(error.ee_errno as i32);
                }
                cmsg = libc::CMSG_NXTHDR(&header, cmsg);
            }
        }
        if !refused {
            continue;
        }
        // SAFETY: the kernel wrote a socket address of msg_namelen bytes.
        let address = unsafe { SockAddr::new(name, header.msg_namelen) };
        if let Some(address) = address.as_socket() {
            unreachable.push(address);
        }
    }
}

impl SendBatch {
    pub(crate) fn new() -> SendBatch {
        SendBatch {
            arena: vec![0; BATCH * DATAGRAM_BYTES_MAX],
            used: 0,
            pending: Vec::with_capacity(BATCH),
        }
    }

    /// Whether a datagram of the largest size still fits.
    pub(crate) fn has_room(&self) -> bool {
        self.pending.len() < BATCH && self.arena.len() - self.used >= DATAGRAM_BYTES_MAX
    }

    /// Room for the next datagram; commit it with [`SendBatch::push`].
    /// No more than UDP carries: what does not fit is refused here, where
    /// the proxy core can answer it, not by the kernel after the fact.
    pub(crate) fn space(&mut self) -> &mut [u8] {
        &mut self.arena[self.used..self.used + crate::sip::UDP_PAYLOAD_MAX]
    }

    /// Commits the datagram just written in [`SendBatch::space`]; `own`:
    /// send it from the shard's own socket.
    pub(crate) fn push(&mut self, to: SocketAddr, len: usize, own: bool) {
        debug_assert!(len <= DATAGRAM_BYTES_MAX);
        self.pending.push((SockAddr::from(to), self.used, len, own));
        self.used += len;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Fills `headers` and `iovecs` to send every pending datagram, the
    /// addresses kept in `addresses`; returns how many. The pointers stay
    /// valid until the batch or those arrays change.
    pub(crate) fn prepare(
        &self,
        headers: &mut [libc::msghdr; BATCH],
        iovecs: &mut [libc::iovec; BATCH],
        addresses: &mut Vec<SockAddr>,
    ) -> usize {
        addresses.clear();
        addresses.extend(self.pending.iter().map(|(address, ..)| address.clone()));
        for (i, (_, start, len, _)) in self.pending.iter().enumerate() {
            iovecs[i] = libc::iovec {
                iov_base: self.arena[*start..].as_ptr() as *mut libc::c_void,
                iov_len: *len,
            };
            // SAFETY: msghdr is a plain C struct; zero is valid.
            headers[i] = unsafe { zeroed() };
            headers[i].msg_name = addresses[i].as_ptr() as *mut libc::c_void;
            headers[i].msg_namelen = addresses[i].len();
            headers[i].msg_iov = &mut iovecs[i];
            headers[i].msg_iovlen = 1;
        }
        self.pending.len()
    }

    /// Whether pending datagram `i` leaves from the shard's own socket.
    pub(crate) fn is_own(&self, i: usize) -> bool {
        self.pending.get(i).is_some_and(|p| p.3)
    }

    /// Forgets the pending datagrams once they are sent.
    pub(crate) fn clear(&mut self) {
        self.pending.clear();
        self.used = 0;
    }

    /// Sends everything pending with `sendmmsg`. A datagram the kernel
    /// refuses is counted and dropped: UDP promises no more, and retrying
    /// would stall the shard.
    pub(crate) fn flush(&mut self, listen_fd: RawFd, own_fd: RawFd) -> Flushed {
        let mut flushed = Flushed::default();
        // SAFETY: plain C structs; zero is valid.
        let mut headers: [libc::msghdr; BATCH] = unsafe { zeroed() };
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut addresses = Vec::with_capacity(BATCH);
        let count = self.prepare(&mut headers, &mut iovecs, &mut addresses);
        // SAFETY: mmsghdr is a plain C struct; zero is valid.
        let mut messages: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..count {
            messages[i].msg_hdr = headers[i];
        }
        let mut offset = 0;
        let mut retried = usize::MAX;
        while offset < count {
            // One sendmmsg per run of datagrams leaving the same socket.
            let own = self.is_own(offset);
            let end = (offset..count)
                .find(|&i| self.is_own(i) != own)
                .unwrap_or(count);
            let fd = if own { own_fd } else { listen_fd };
            // SAFETY: messages[offset..end] point at `addresses`, `iovecs`
            // and the arena, all alive and unchanged until we return.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    messages[offset..].as_mut_ptr(),
                    (end - offset) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // An earlier datagram's ICMP error surfaced on this send
                // and was consumed by it: this datagram was not the cause,
                // so it goes again, once.
                if error.raw_os_error().is_some_and(is_icmp_error) && retried != offset {
                    flushed.icmp_pending = true;
                    retried = offset;
                    continue;
                }
                // Skip the datagram that failed and go on with the rest.
                flushed.failed += 1;
                offset += 1;
                continue;
            }
            flushed.sent += n as u64;
            offset += n as usize;
        }
        self.clear();
        flushed
    }
}

/// An eventfd another shard rings to say "your inbox has work".
pub(crate) struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    pub(crate) fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new
        // descriptor that we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Doorbell {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub(crate) fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN)
        // means the owner is already due to wake, so the result is ignored.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter after a wake-up.
    pub(crate) fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN (not rung) is fine.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An epoll set watching a shard's sockets and its doorbell.
pub(crate) struct Poller {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        // SAFETY: no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            // SAFETY: `fd` is fresh and ours.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 16],
        })
    }

    /// Watches `fd` for input; `token` comes back with its events.
    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `event` is a live epoll_event; both descriptors are open.
        let result =
            unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` and returns the tokens that are ready.
    pub(crate) fn wait(&mut self, timeout_ms: i32) -> io::Result<impl Iterator<Item = u64> + '_> {
        // SAFETY: `events` has room for its length, which we pass.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        let n = if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
            0
        } else {
            n as usize
        };
        Ok(self.events[..n].iter().map(|e| e.u64))
    }
}
