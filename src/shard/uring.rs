//! The io_uring driver of a shard: one multishot `RecvMsg` on a ring of
//! provided buffers, a `Read` on the doorbell eventfd, sends submitted as a
//! batch of `SendMsg`, and one `submit_with_args` per loop turn that sleeps
//! until a completion or the next deadline. The streams' operations
//! (multishot accept, multishot receive into a second ring of provided
//! buffers, send) ride the same ring (`streams::RingOp`).
//!
//! Every `unsafe` here is about memory the kernel reads or writes behind
//! our back: the provided-buffer ring, the receive msghdr, the doorbell
//! word and the send headers. Each stays at a fixed address for as long as
//! the ring can touch it, which the comments say case by case.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, types, IoUring};
use socket2::SockAddr;

use super::streams::{OpKind, RingDone, RingOp};
use super::sys::{is_icmp_error, Flushed, SendBatch, BATCH, DATAGRAM_BYTES_MAX};

/// Provided buffers in the ring: each holds the recvmsg header, a source
/// address and the largest datagram. Buffers go back to the ring as soon
/// as their datagram is handled, so a few dozen keep multishot receive fed.
const BUFFERS: u16 = 64;
const BUFFER_BYTES: usize = DATAGRAM_BYTES_MAX + 256;
const BUFFER_GROUP: u16 = 0;
/// The streams' provided buffers: what one receive on a connection can
/// take (a TLS record and more); each goes back once its bytes are framed.
const STREAM_BUFFERS: u16 = 64;
const STREAM_BUFFER_BYTES: usize = 16 << 10;
const STREAM_BUFFER_GROUP: u16 = 1;

const USER_RECV: u64 = 1;
/// The multishot receive on the shard's own socket.
const USER_RECV_OWN: u64 = 4;
const USER_DOORBELL: u64 = 2;
/// Sends carry `USER_SEND + index in the batch`, so a send that must go
/// again can be found.
const USER_SEND: u64 = 1 << 32;

/// The ring of provided buffers: a page-aligned array of entries the kernel
/// reads, and the buffers themselves.
struct ProvidedBuffers {
    ring: *mut types::BufRingEntry,
    ring_layout: Layout,
    memory: Vec<u8>,
    tail: u16,
    /// Buffers (a power of two) and the bytes of each.
    count: u16,
    size: usize,
}

impl ProvidedBuffers {
    fn new(count: u16, size: usize) -> io::Result<ProvidedBuffers> {
        let ring_layout =
            Layout::from_size_align(usize::from(count) * size_of::<types::BufRingEntry>(), 4096)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let ring = unsafe { alloc_zeroed(ring_layout) }.cast::<types::BufRingEntry>();
        if ring.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "buffer ring"));
        }
        let mut buffers = ProvidedBuffers {
            ring,
            ring_layout,
            memory: vec![0; usize::from(count) * size],
            tail: 0,
            count,
            size,
        };
        for bid in 0..count {
            buffers.give_back(bid);
        }
        Ok(buffers)
    }

    /// Puts buffer `bid` at the ring's tail and publishes the new tail.
    fn give_back(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        let Some(buffer) = self.memory.get_mut(usize::from(bid) * self.size..) else {
            return;
        };
        let address = buffer.as_mut_ptr() as u64;
        // SAFETY: `index` < count, inside the ring allocation; the kernel
        // only reads entries between its head and our published tail, and
        // this one is past the tail until the store below.
        let entry = unsafe { &mut *self.ring.add(index) };
        entry.set_addr(address);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the u16 at byte 14 of the ring, inside the
        // first entry's reserved field; the kernel reads it, so it is
        // published with release ordering after the entry is written.
        let tail = unsafe { &*(self.ring.cast::<u8>().add(14).cast::<AtomicU16>()) };
        tail.store(self.tail, Ordering::Release);
    }

    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.size;
        self.memory
            .get(start..start + len.min(self.size))
            .unwrap_or(&[])
    }

    /// Registers the ring as buffer group `group`.
    fn register(&self, ring: &IoUring, group: u16) -> io::Result<()> {
        // SAFETY: the ring entries live in `self`, which outlives the
        // registration (it is dropped after the ring, field order in
        // `Uring`).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(self.ring as u64, self.count, group, 0)
        }
    }
}

impl Drop for ProvidedBuffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it
        // is dropped first (field order in `Uring`).
        unsafe { dealloc(self.ring.cast(), self.ring_layout) };
    }
}

/// A received datagram waiting in buffer `bid`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ready {
    bid: u16,
    len: usize,
}

/// Send headers for one batch; they must stay put until the batch's
/// completions have arrived.
struct SendHeaders {
    headers: [libc::msghdr; BATCH],
    iovecs: [libc::iovec; BATCH],
    addresses: Vec<SockAddr>,
}

pub(crate) struct Uring {
    // Dropped first: the ring must be gone before the memory it points at.
    ring: IoUring,
    buffers: ProvidedBuffers,
    stream_buffers: ProvidedBuffers,
    /// The streams' completions since the shard last took them.
    stream_done: Vec<RingDone>,
    recv_msghdr: Box<libc::msghdr>,
    doorbell_word: Box<u64>,
    sends: Box<SendHeaders>,
    /// The listen socket (shared by the shards through SO_REUSEPORT).
    socket: RawFd,
    /// The shard's own socket: requests go out from it, their responses
    /// come back to it.
    own_socket: RawFd,
    /// The socket each send of the batch leaves from, for a resend.
    send_fds: [RawFd; BATCH],
    doorbell: RawFd,
    /// The three descriptors are registered with the ring (indices 0, 1
    /// and 2, in the order above), so that an operation on them skips the
    /// kernel's descriptor lookup and reference count.
    fixed: bool,
    /// Completions of sends not yet reaped.
    sends_in_flight: usize,
    send_result: Flushed,
    /// Sends to submit again (an ICMP error of another surfaced on them).
    resend: Vec<usize>,
    /// Which sends of this batch went again already.
    resent: [bool; BATCH],
}

impl Uring {
    /// Sets up a ring for one shard's socket and doorbell; fails where
    /// io_uring is missing or forbidden, and the shard uses epoll instead.
    pub(crate) fn new(socket: RawFd, own_socket: RawFd, doorbell: RawFd) -> io::Result<Uring> {
        // Completions are run only when the shard waits for them (6.1+):
        // a datagram then costs no task-work interrupt of its own. Older
        // kernels take the ring without it.
        let ring = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(256)
        {
            Ok(ring) => ring,
            Err(_) => IoUring::builder().build(256)?,
        };
        let buffers = ProvidedBuffers::new(BUFFERS, BUFFER_BYTES)?;
        buffers.register(&ring, BUFFER_GROUP)?;
        let stream_buffers = ProvidedBuffers::new(STREAM_BUFFERS, STREAM_BUFFER_BYTES)?;
        stream_buffers.register(&ring, STREAM_BUFFER_GROUP)?;
        // SAFETY: msghdr is a plain C struct; zero is valid.
        let mut recv_msghdr: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
        recv_msghdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let mut uring = Uring {
            ring,
            buffers,
            stream_buffers,
            stream_done: Vec::new(),
            recv_msghdr,
            doorbell_word: Box::new(0),
            sends: Box::new(SendHeaders {
                // SAFETY: plain C structs; zero is valid.
                headers: unsafe { zeroed() },
                iovecs: unsafe { zeroed() },
                addresses: Vec::with_capacity(BATCH),
            }),
            socket,
            own_socket,
            send_fds: [socket; BATCH],
            doorbell,
            fixed: false,
            sends_in_flight: 0,
            send_result: Flushed::default(),
            resend: Vec::with_capacity(BATCH),
            resent: [false; BATCH],
        };
        uring.fixed = uring
            .ring
            .submitter()
            .register_files(&[socket, own_socket, doorbell])
            .is_ok();
        uring.arm_recv(USER_RECV)?;
        uring.arm_recv(USER_RECV_OWN)?;
        uring.arm_doorbell()?;
        uring.ring.submit()?;
        Ok(uring)
    }

    fn push(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: every entry we push points at memory owned by `self`
        // that stays at its address while the operation is in flight.
        if unsafe { self.ring.submission().push(entry) }.is_err() {
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(entry) }
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        Ok(())
    }

    /// Arms the multishot receive of the listen socket (`USER_RECV`) or
    /// of the shard's own (`USER_RECV_OWN`).
    fn arm_recv(&mut self, which: u64) -> io::Result<()> {
        let fd = match which {
            USER_RECV_OWN => self.own_socket,
            _ => self.socket,
        };
        let entry = match self.fixed_index(fd) {
            Some(i) => {
                opcode::RecvMsgMulti::new(types::Fixed(i), &*self.recv_msghdr, BUFFER_GROUP).build()
            }
            None => {
                opcode::RecvMsgMulti::new(types::Fd(fd), &*self.recv_msghdr, BUFFER_GROUP).build()
            }
        }
        .user_data(which);
        self.push(&entry)?;
        Ok(())
    }

    /// The registered index of one of the shard's descriptors.
    fn fixed_index(&self, fd: RawFd) -> Option<u32> {
        if !self.fixed {
            return None;
        }
        [self.socket, self.own_socket, self.doorbell]
            .iter()
            .position(|&f| f == fd)
            .map(|i| i as u32)
    }

    fn send_entry(&self, fd: RawFd, header: *const libc::msghdr) -> io_uring::squeue::Entry {
        match self.fixed_index(fd) {
            Some(i) => opcode::SendMsg::new(types::Fixed(i), header).build(),
            None => opcode::SendMsg::new(types::Fd(fd), header).build(),
        }
    }

    fn arm_doorbell(&mut self) -> io::Result<()> {
        let word: *mut u64 = &mut *self.doorbell_word;
        let entry = match self.fixed_index(self.doorbell) {
            Some(i) => opcode::Read::new(types::Fixed(i), word.cast(), 8).build(),
            None => opcode::Read::new(types::Fd(self.doorbell), word.cast(), 8).build(),
        }
        .user_data(USER_DOORBELL);
        self.push(&entry)
    }

    /// Queues the streams' operations; the next [`Uring::wait`] submits
    /// them. A send's bytes stay put until its completion (`Streams`
    /// keeps them, and keeps them past a close).
    pub(crate) fn queue_stream_ops(&mut self, ops: &mut Vec<RingOp>) -> io::Result<()> {
        for op in ops.drain(..) {
            let entry = match op {
                RingOp::Accept { fd, user_data } => opcode::AcceptMulti::new(types::Fd(fd))
                    .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                    .build()
                    .user_data(user_data),
                RingOp::Recv { fd, user_data } => {
                    opcode::RecvMulti::new(types::Fd(fd), STREAM_BUFFER_GROUP)
                        .build()
                        .user_data(user_data)
                }
                RingOp::Writable { fd, user_data } => {
                    opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
                        .build()
                        .user_data(user_data)
                }
                RingOp::Send {
                    fd,
                    user_data,
                    bytes,
                    len,
                } => opcode::Send::new(types::Fd(fd), bytes as *const u8, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(user_data),
                RingOp::Cancel { user_data } => opcode::AsyncCancel::new(user_data)
                    .build()
                    .user_data((OpKind::Cancel as u64) << 56),
            };
            self.push(&entry)?;
        }
        Ok(())
    }

    /// The streams' completions since the last call.
    pub(crate) fn take_stream_done(&mut self, into: &mut Vec<RingDone>) {
        into.append(&mut self.stream_done);
    }

    /// The bytes a stream receive left in buffer `bid`.
    pub(crate) fn stream_buffer(&self, bid: u16, len: usize) -> &[u8] {
        self.stream_buffers.buffer(bid, len)
    }

    /// Gives the buffers of handled stream receives back to the kernel.
    pub(crate) fn recycle_stream(&mut self, done: &[RingDone]) {
        for done in done {
            if let RingDone::Received {
                buffer: Some(bid), ..
            } = done
            {
                self.stream_buffers.give_back(*bid);
            }
        }
    }

    /// Submits what is queued (the last turn's sends) and sleeps until a
    /// completion arrives or `timeout` passes; returns up to `BATCH`
    /// received datagrams, and the results of the sends it saw complete.
    /// When it returns, no send is in flight: the send batch may be reused.
    pub(crate) fn wait(
        &mut self,
        timeout: Duration,
        ready: &mut Vec<Ready>,
    ) -> io::Result<Flushed> {
        ready.clear();
        self.send_result = Flushed::default();
        let timespec = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&timespec);
        // The sends queued last turn complete as they are submitted; wait
        // for one event beyond them, so that their completions alone do
        // not end the wait and cost a turn of their own.
        let want = self.sends_in_flight + 1;
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.reap(ready)?;
        loop {
            for index in std::mem::take(&mut self.resend) {
                let header: *const libc::msghdr = &self.sends.headers[index];
                let entry = self
                    .send_entry(self.send_fds[index], header)
                    .user_data(USER_SEND + index as u64);
                self.push(&entry)?;
                self.sends_in_flight += 1;
            }
            if self.sends_in_flight == 0 {
                break;
            }
            self.ring.submit_and_wait(1)?;
            self.reap(ready)?;
        }
        self.resent = [false; BATCH];
        Ok(std::mem::take(&mut self.send_result))
    }

    /// Takes completions off the queue: datagrams into `ready` (at most
    /// BATCH), doorbell and send results handled here.
    fn reap(&mut self, ready: &mut Vec<Ready>) -> io::Result<()> {
        let mut rearm_recv = false;
        let mut rearm_recv_own = false;
        let mut rearm_doorbell = false;
        let mut completion = self.ring.completion();
        loop {
            // Send and doorbell completions are always taken; datagrams
            // only up to a batch, the rest wait in the queue.
            if ready.len() >= BATCH && self.sends_in_flight == 0 {
                break;
            }
            let Some(cqe) = completion.next() else { break };
            let (result, flags) = (cqe.result(), cqe.flags());
            match cqe.user_data() {
                which @ (USER_RECV | USER_RECV_OWN) => {
                    if !cqueue::more(flags) {
                        match which {
                            USER_RECV => rearm_recv = true,
                            _ => rearm_recv_own = true,
                        }
                    }
                    match (result, cqueue::buffer_select(flags)) {
                        (len, Some(bid)) if len >= 0 => ready.push(Ready {
                            bid,
                            len: len as usize,
                        }),
                        (_, Some(bid)) => self.buffers.give_back(bid),
                        (error, None) if is_icmp_error(-error) => {
                            self.send_result.icmp_pending = true;
                        }
                        (error, None) if error < 0 && error != -libc::ENOBUFS => {
                            tracing::debug!(error, "multishot receive ended");
                        }
                        _ => {}
                    }
                }
                USER_DOORBELL => rearm_doorbell = true,
                user_data if OpKind::of(user_data).is_some() => {
                    stream_completion(&mut self.stream_done, user_data, result, flags);
                }
                user_data => {
                    self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
                    let index = user_data.wrapping_sub(USER_SEND) as usize;
                    if result >= 0 {
                        self.send_result.sent += 1;
                    } else if is_icmp_error(-result) && index < BATCH && !self.resent[index] {
                        // An earlier datagram's ICMP error surfaced here:
                        // this one goes again, once.
                        self.send_result.icmp_pending = true;
                        self.resent[index] = true;
                        self.resend.push(index);
                    } else {
                        self.send_result.failed += 1;
                    }
                }
            }
        }
        drop(completion);
        if rearm_recv {
            self.arm_recv(USER_RECV)?;
        }
        if rearm_recv_own {
            self.arm_recv(USER_RECV_OWN)?;
        }
        if rearm_doorbell {
            self.arm_doorbell()?;
        }
        Ok(())
    }

    /// The source and payload of a received datagram; `None` when it was
    /// truncated or its address unreadable.
    pub(crate) fn datagram(&self, ready: Ready) -> Option<(SocketAddr, &[u8])> {
        let buffer = self.buffers.buffer(ready.bid, ready.len);
        let out = types::RecvMsgOut::parse(buffer, &self.recv_msghdr).ok()?;
        if out.is_payload_truncated() || out.is_name_data_truncated() {
            return None;
        }
        let name = out.name_data();
        // SAFETY: sockaddr_storage is plain data; we copy at most its size.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = name.len().min(size_of::<libc::sockaddr_storage>());
        // SAFETY: copies `len` bytes into a local of at least that size.
        unsafe {
            std::ptr::copy_nonoverlapping(
                name.as_ptr(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                len,
            )
        };
        // SAFETY: the storage holds a socket address of `len` bytes.
        let address = unsafe { SockAddr::new(storage, len as libc::socklen_t) };
        // The payload borrows from `out`; find it again in the buffer.
        let payload = out.payload_data();
        let start = (payload.as_ptr() as usize).checked_sub(buffer.as_ptr() as usize)?;
        let payload = buffer.get(start..start + payload.len())?;
        Some((address.as_socket()?, payload))
    }

    /// Returns the buffers of handled datagrams to the kernel.
    pub(crate) fn recycle(&mut self, ready: &[Ready]) {
        for r in ready {
            self.buffers.give_back(r.bid);
        }
    }

    /// Queues a batch as `SendMsg` entries; the next [`Uring::wait`]
    /// submits them with its wait and reaps their completions. The batch
    /// must not change until then.
    pub(crate) fn queue_sends(&mut self, batch: &SendBatch) -> io::Result<()> {
        let sends = &mut *self.sends;
        let count = batch.prepare(&mut sends.headers, &mut sends.iovecs, &mut sends.addresses);
        for i in 0..count {
            let header: *const libc::msghdr = &self.sends.headers[i];
            let fd = if batch.is_own(i) {
                self.own_socket
            } else {
                self.socket
            };
            self.send_fds[i] = fd;
            let entry = self.send_entry(fd, header).user_data(USER_SEND + i as u64);
            self.push(&entry)?;
        }
        self.sends_in_flight += count;
        Ok(())
    }
}

/// A stream operation's completion, kept for the shard.
fn stream_completion(done: &mut Vec<RingDone>, user_data: u64, result: i32, flags: u32) {
    let more = cqueue::more(flags);
    let completion = match OpKind::of(user_data) {
        Some(OpKind::Accept) => RingDone::Accepted {
            listener: (user_data & 0xff) as usize,
            // SAFETY: a non-negative accept result is a new descriptor the
            // kernel gave us, owned by nothing else.
            fd: (result >= 0).then(|| unsafe { OwnedFd::from_raw_fd(result) }),
            error: -result.min(0),
            more,
        },
        Some(OpKind::Recv) => RingDone::Received {
            user_data,
            result,
            buffer: cqueue::buffer_select(flags),
            more,
        },
        Some(OpKind::Send) => RingDone::Sent { user_data, result },
        Some(OpKind::Writable) => RingDone::Writable { user_data, result },
        Some(OpKind::Cancel) | None => return,
    };
    done.push(completion);
}
