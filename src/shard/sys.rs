//! The Linux system calls of the epoll shard loop: epoll and eventfd, and
//! the shard's own use of [`crate::udp`]'s batches (the batched system
//! calls and the ICMP error queue live there). Every other `unsafe` of the
//! runtime's system calls is here, each with the reason it holds.
#![allow(unsafe_code)]

use std::io;
use std::mem::zeroed;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::SockAddr;

use crate::udp::{self, Wait, WhenFull};
pub(crate) use crate::udp::{enable_icmp_errors, is_icmp_error, read_icmp_errors, Sent as Flushed};

/// Datagrams moved per system call: enough to amortise the call, small
/// enough that one batch stays in L2.
pub(crate) const BATCH: usize = 32;

/// A receive slot holds the largest UDP payload.
pub(crate) const DATAGRAM_BYTES_MAX: usize = 65_536;

/// Buffers for one batched receive, allocated once per shard.
pub(crate) struct RecvBatch {
    batch: udp::RecvBatch,
    /// A receive reported an ICMP error: the error queue has its details.
    pub(crate) icmp_pending: bool,
}

impl RecvBatch {
    pub(crate) fn new() -> RecvBatch {
        RecvBatch {
            batch: udp::RecvBatch::new(BATCH, DATAGRAM_BYTES_MAX),
            icmp_pending: false,
        }
    }

    /// Receives up to `BATCH` datagrams without blocking; 0 when none wait.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        match self.batch.recv(fd, Wait::No) {
            Ok(n) => Ok(n),
            // IP_RECVERR hands an ICMP error to the next call; the
            // datagrams behind it are still queued.
            Err(error) if error.raw_os_error().is_some_and(is_icmp_error) => {
                self.icmp_pending = true;
                Ok(0)
            }
            Err(error) => match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(error),
            },
        }
    }

    /// Datagram `i` of the last `recv`: its source and bytes. `None` for a
    /// truncated datagram (larger than a slot) or an unknown address family.
    #[inline]
    pub(crate) fn datagram(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        self.batch.datagram(i)
    }
}

/// Datagrams waiting to go out, written in place and sent in batches.
pub(crate) struct SendBatch {
    arena: Vec<u8>,
    used: usize,
    /// Destination, offset and length in the arena, and whether it leaves
    /// from the shard's own socket (requests) or the listen socket.
    pending: Vec<(SocketAddr, usize, usize, bool)>,
    /// The send headers, reused by every flush.
    out: udp::SendBatch,
}

/// Sends this process SIGTERM: a shard that cannot go on asks for the
/// clean stop the main thread runs on a signal.
pub(crate) fn raise_sigterm() {
    // SAFETY: kill(2) on our own pid with a valid signal number.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
}

/// Raises this process's soft limit on open descriptors to its hard
/// limit (each connection is one); returns the limit now in force.
pub(crate) fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(limit.rlim_cur)
}

/// How full a socket's receive buffer is (0.0 to 1.0), from `SO_MEMINFO`:
/// datagrams the shard has not taken yet. Under overload this is where
/// they wait, and past the buffer the kernel drops them, admitted calls'
/// messages as readily as new INVITEs. With it, how many datagrams the
/// kernel has dropped at the socket since it was opened (at a full
/// buffer, mostly). `None` where the kernel does not say.
pub(crate) fn receive_queue(fd: RawFd) -> Option<(f64, u32)> {
    let info = udp::meminfo(fd).ok()?;
    (info.size > 0).then(|| (f64::from(info.queued) / f64::from(info.size), info.drops))
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

impl SendBatch {
    pub(crate) fn new() -> SendBatch {
        SendBatch {
            arena: vec![0; BATCH * DATAGRAM_BYTES_MAX],
            used: 0,
            pending: Vec::with_capacity(BATCH),
            out: udp::SendBatch::new(BATCH),
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
        self.pending.push((to, self.used, len, own));
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
        addresses.extend(self.pending.iter().map(|(to, ..)| SockAddr::from(*to)));
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

    /// Sends everything pending, one batch per run of datagrams
    /// leaving the same socket. A datagram the kernel refuses is counted
    /// and dropped: UDP promises no more, and retrying would stall the
    /// shard.
    pub(crate) fn flush(&mut self, listen_fd: RawFd, own_fd: RawFd) -> Flushed {
        let mut flushed = Flushed::default();
        let mut start = 0;
        while start < self.pending.len() {
            let own = self.pending[start].3;
            let end = self.pending[start..]
                .iter()
                .position(|p| p.3 != own)
                .map_or(self.pending.len(), |run| start + run);
            let mut queue = self.out.queue();
            for &(to, offset, len, _) in &self.pending[start..end] {
                let queued = queue.push(to, &self.arena[offset..offset + len]);
                debug_assert!(queued, "has_room keeps a batch within BATCH");
            }
            let fd = if own { own_fd } else { listen_fd };
            flushed += queue.flush(fd, WhenFull::DropOne);
            start = end;
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
        Poller::with_capacity(16)
    }

    /// A set that returns up to `events` ready descriptors a wait.
    pub(crate) fn with_capacity(events: usize) -> io::Result<Poller> {
        // SAFETY: no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            // SAFETY: `fd` is fresh and ours.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; events.max(1)],
        })
    }

    /// The set's own descriptor: itself readable while any member is ready.
    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The most descriptors one wait returns.
    pub(crate) fn capacity(&self) -> usize {
        self.events.len()
    }

    /// Watches a connection, edge-triggered, for input, room to write and
    /// hang-up: each edge is serviced until the socket would block.
    pub(crate) fn add_stream(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let events = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        self.add_with(fd, token, events as u32)
    }

    /// Watches `fd` for input; `token` comes back with its events.
    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.add_with(fd, token, libc::EPOLLIN as u32)
    }

    fn add_with(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` is a live epoll_event; both descriptors are open.
        let result =
            unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` and returns the tokens that are ready, each
    /// with its events (`EPOLLIN`, `EPOLLRDHUP`, ...).
    pub(crate) fn wait_events(
        &mut self,
        timeout_ms: i32,
    ) -> io::Result<impl Iterator<Item = (u64, u32)> + '_> {
        let n = self.wait_raw(timeout_ms)?;
        Ok(self.events[..n].iter().map(|e| (e.u64, e.events)))
    }

    /// Waits up to `timeout_ms` and returns the tokens that are ready.
    pub(crate) fn wait(&mut self, timeout_ms: i32) -> io::Result<impl Iterator<Item = u64> + '_> {
        let n = self.wait_raw(timeout_ms)?;
        Ok(self.events[..n].iter().map(|e| e.u64))
    }

    /// `epoll_wait`: how many events it filled in (0 when interrupted).
    fn wait_raw(&mut self, timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: `events` has room for its length, which we pass.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
            return Ok(0);
        }
        Ok(n as usize)
    }
}
