//! The streams under io_uring: the shard's ring accepts (multishot), and
//! receives into provided buffers (multishot) and sends for every
//! connection, so a turn costs no system call per connection. `Streams`
//! asks for operations ([`RingOp`]) and takes their completions
//! ([`RingDone`]); the shard's `Uring` runs them. Under epoll none of this
//! is used.
//!
//! A completion names its connection by slot and generation (its tag), so
//! one for a connection since closed is recognised and dropped. A closing
//! connection cancels its operations; the buffer of a send in flight is
//! kept until that send completes, since the kernel reads it until then.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use super::conn::{Conn, Read};
use super::Streams;
use crate::sip::Transport;

/// What an operation is for, in the top byte of its ring user data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    Accept = 0x10,
    Recv = 0x11,
    Send = 0x12,
    Writable = 0x13,
    Cancel = 0x14,
}

impl OpKind {
    /// The kind of a stream operation's user data; `None` for the
    /// shard's own (datagram) operations.
    pub(crate) fn of(user_data: u64) -> Option<OpKind> {
        Some(match user_data >> 56 {
            0x10 => OpKind::Accept,
            0x11 => OpKind::Recv,
            0x12 => OpKind::Send,
            0x13 => OpKind::Writable,
            0x14 => OpKind::Cancel,
            _ => return None,
        })
    }
}

/// An operation for the ring to start.
#[derive(Debug)]
pub(crate) enum RingOp {
    /// Multishot accept on a listener.
    Accept { fd: RawFd, user_data: u64 },
    /// Multishot receive into the streams' provided buffers.
    Recv { fd: RawFd, user_data: u64 },
    /// Until a connecting socket is writable (connected or refused).
    Writable { fd: RawFd, user_data: u64 },
    /// `len` bytes at address `bytes`, which stay put until the
    /// completion (an address, not a pointer: `Streams` moves to its
    /// shard's thread before any op exists).
    Send {
        fd: RawFd,
        user_data: u64,
        bytes: usize,
        len: u32,
    },
    /// Cancels the operation with this user data.
    Cancel { user_data: u64 },
}

impl RingOp {
    /// A send of `bytes`, which must stay put until its completion.
    fn send(fd: RawFd, user_data: u64, bytes: &[u8]) -> RingOp {
        RingOp::Send {
            fd,
            user_data,
            bytes: bytes.as_ptr() as usize,
            len: bytes.len() as u32,
        }
    }
}

/// A stream operation's completion.
#[derive(Debug)]
pub(crate) enum RingDone {
    /// `fd` is taken by the shard; `error` is the accept's errno.
    Accepted {
        listener: usize,
        fd: Option<OwnedFd>,
        error: i32,
        more: bool,
    },
    Received {
        user_data: u64,
        result: i32,
        buffer: Option<u16>,
        more: bool,
    },
    Sent {
        user_data: u64,
        result: i32,
    },
    Writable {
        user_data: u64,
        result: i32,
    },
}

/// A connection's operation's user data: kind, generation, slot.
fn tag(kind: OpKind, slot: u32, generation: u32) -> u64 {
    ((kind as u64) << 56) | (u64::from(generation & 0xff_ffff) << 32) | u64::from(slot)
}

fn untag(user_data: u64) -> (u32, u32) {
    (user_data as u32, ((user_data >> 32) & 0xff_ffff) as u32)
}

impl Streams {
    /// Hands the connections to the shard's ring: the listeners leave the
    /// epoll set (which is not polled any more) and get multishot
    /// accepts. Called once, before any connection exists.
    pub(in crate::shard) fn use_ring(&mut self) -> std::io::Result<()> {
        self.poller = crate::shard::sys::Poller::with_capacity(1)?;
        self.ring = true;
        for index in 0..self.listeners.len() {
            self.arm_accept(index);
        }
        Ok(())
    }

    /// A multishot accept on listener `index`.
    fn arm_accept(&mut self, index: usize) {
        if let Some((listener, _)) = self.listeners.get(index) {
            let user_data = ((OpKind::Accept as u64) << 56) | index as u64;
            let fd = listener.as_raw_fd();
            self.ring_ops.push(RingOp::Accept { fd, user_data });
        }
    }

    /// The operations asked for since the last call, for the ring.
    pub(in crate::shard) fn take_ring_ops(&mut self, into: &mut Vec<RingOp>) {
        into.append(&mut self.ring_ops);
    }

    /// Takes the ring's completions for the streams; `buffer` reads the
    /// provided buffer a receive filled. Messages land in `arrivals`.
    pub(in crate::shard) fn ring_done<'b>(
        &mut self,
        now: Instant,
        done: &mut [RingDone],
        buffer: impl Fn(u16, usize) -> &'b [u8],
    ) {
        self.accepted_now.clear();
        for done in done {
            match done {
                RingDone::Accepted {
                    listener,
                    fd,
                    error,
                    more,
                } => self.ring_accepted(*listener, fd.take(), *error, *more, now),
                RingDone::Received {
                    user_data,
                    result,
                    buffer: bid,
                    more,
                } => {
                    let bytes = match (*result, *bid) {
                        (len, Some(bid)) if len > 0 => buffer(bid, len as usize),
                        _ => &[],
                    };
                    self.ring_received(*user_data, *result, bytes, *more, now);
                }
                RingDone::Sent { user_data, result } => self.ring_sent(*user_data, *result),
                RingDone::Writable { user_data, result } => {
                    self.ring_writable(*user_data, *result, now)
                }
            }
        }
        self.sweep_if_due(now);
    }

    /// A connection the live slot `user_data` names, if still there.
    fn live(&self, user_data: u64) -> Option<u32> {
        let (slot, generation) = untag(user_data);
        let entry = self.slots.get(slot as usize)?;
        (entry.generation & 0xff_ffff == generation && entry.conn.is_some()).then_some(slot)
    }

    fn ring_accepted(
        &mut self,
        listener: usize,
        fd: Option<OwnedFd>,
        error: i32,
        more: bool,
        now: Instant,
    ) {
        if !more {
            // The multishot accept ended (an error such as EMFILE): again,
            // as a level-triggered listener would be tried each turn.
            self.arm_accept(listener);
        }
        let Some(fd) = fd else {
            // EMFILE and the like: counted by the kernel's listen queue,
            // logged here; the accept is armed again above.
            let error = std::io::Error::from_raw_os_error(error);
            tracing::debug!(%error, "accept failed");
            return;
        };
        let stream = std::net::TcpStream::from(fd);
        let Ok(remote) = stream.peer_addr() else {
            return;
        };
        let transport = self.listeners.get(listener).map_or(Transport::Tcp, |l| l.1);
        self.admit(stream, remote, transport, now);
    }

    /// Arms what a new connection needs on the ring: a receive, or first
    /// the end of its connect.
    pub(super) fn ring_arm(&mut self, slot: u32) {
        let generation = self.slots.get(slot as usize).map_or(0, |s| s.generation);
        let Some(conn) = self.conn_mut(slot) else {
            return;
        };
        let fd = conn.fd();
        if conn.is_connecting() {
            let user_data = tag(OpKind::Writable, slot, generation);
            self.ring_ops.push(RingOp::Writable { fd, user_data });
        } else if !conn.receiving {
            conn.receiving = true;
            let user_data = tag(OpKind::Recv, slot, generation);
            self.ring_ops.push(RingOp::Recv { fd, user_data });
        }
    }

    fn ring_received(
        &mut self,
        user_data: u64,
        result: i32,
        bytes: &[u8],
        more: bool,
        now: Instant,
    ) {
        let Some(slot) = self.live(user_data) else {
            return;
        };
        if !more {
            if let Some(conn) = self.conn_mut(slot) {
                conn.receiving = false;
            }
        }
        let before = self.conn(slot).map_or(0, Conn::held_bytes);
        let read = match result {
            0 => Read::Closed,
            // No buffer was free: the receive is armed again below, and
            // the bytes wait in the socket meanwhile.
            r if r == -libc::ENOBUFS => Read::Open,
            r if r < 0 => Read::Closed,
            _ => self.ring_take_in(slot, bytes, now),
        };
        self.after_read(slot, read, before);
        if read == Read::Open && !more {
            self.ring_arm(slot);
        }
    }

    /// Frames received bytes into `arrivals`, as `service` does for epoll.
    fn ring_take_in(&mut self, slot: u32, bytes: &[u8], now: Instant) -> Read {
        let flow = self.flow(slot);
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return Read::Closed;
        };
        let (arrivals, frames, counters) =
            (&mut self.arrivals, &mut self.frames, &mut self.counters);
        let peer = conn.peer().on(flow);
        conn.received(now, bytes, |frame| {
            super::arrive(frame, peer, arrivals, frames, counters)
        })
    }

    fn ring_sent(&mut self, user_data: u64, result: i32) {
        if self.orphans.remove(&user_data).is_some() {
            return;
        }
        let Some(slot) = self.live(user_data) else {
            return;
        };
        let Some(conn) = self.conn_mut(slot) else {
            return;
        };
        if result < 0 {
            self.counters.closed_by_peer += 1;
            self.close(slot);
            return;
        }
        let fd = conn.fd();
        if let Some(rest) = conn.ring_sent(result as usize) {
            let op = RingOp::send(fd, user_data, rest);
            self.ring_ops.push(op);
            return;
        }
        if conn.has_queued() {
            self.dirty.push(slot);
        }
    }

    fn ring_writable(&mut self, user_data: u64, result: i32, now: Instant) {
        let Some(slot) = self.live(user_data) else {
            return;
        };
        let Some(conn) = self.conn_mut(slot) else {
            return;
        };
        let before = conn.held_bytes();
        let read = match result {
            r if r < 0 => Read::Refused,
            _ => conn.connected(now),
        };
        let connecting = conn.is_connecting();
        match read {
            // Writable and not connected, nor failed: ask again.
            Read::Open if connecting => self.ring_arm(slot),
            Read::Open => {
                self.ring_arm(slot);
                self.dirty.push(slot);
            }
            read => self.after_read(slot, read, before),
        }
    }

    /// Starts a send of what `slot` has queued, unless one is in flight.
    pub(super) fn ring_flush(&mut self, slot: u32) {
        let generation = self.slots.get(slot as usize).map_or(0, |s| s.generation);
        let max = self.config.send_queue_bytes_max;
        let Some(conn) = self.conn_mut(slot) else {
            return;
        };
        let before = conn.held_bytes();
        let fd = conn.fd();
        match conn.ring_send(max) {
            Ok(Some(bytes)) => {
                let user_data = tag(OpKind::Send, slot, generation);
                let op = RingOp::send(fd, user_data, bytes);
                self.ring_ops.push(op);
                self.account(slot, before);
            }
            Ok(None) => {
                self.account(slot, before);
            }
            Err(error) => self.close_on_send_error(slot, error),
        }
    }

    /// A closing connection's operations: cancelled, and the buffer of a
    /// send in flight kept until its completion.
    pub(super) fn ring_closing(&mut self, slot: u32, generation: u32, conn: &mut Conn) {
        let recv = tag(OpKind::Recv, slot, generation);
        if conn.receiving {
            self.ring_ops.push(RingOp::Cancel { user_data: recv });
        }
        if conn.is_connecting() {
            let user_data = tag(OpKind::Writable, slot, generation);
            self.ring_ops.push(RingOp::Cancel { user_data });
        }
        if let Some(inflight) = conn.take_inflight() {
            let user_data = tag(OpKind::Send, slot, generation);
            self.orphans.insert(user_data, inflight);
            self.ring_ops.push(RingOp::Cancel { user_data });
        }
    }
}

#[cfg(test)]
mod tests;
