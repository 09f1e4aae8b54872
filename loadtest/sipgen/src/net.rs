//! Batched UDP I/O over `sipshard::udp`: one receive takes up to a batch
//! of datagrams, one flush sends everything a loop turn produced for a
//! socket. Syscalls, not SIP, are what a generator spends its time on, so
//! it makes few.

use std::io;
use std::mem;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use sipshard::udp::{RecvBatch, SendBatch, Wait, WhenFull};

/// Largest datagram the generator expects back; anything longer is counted
/// as truncated (the gateway's messages here are a few hundred bytes).
pub const MAX_DATAGRAM: usize = 8192;

/// A UDP socket bound to `addr`, with large buffers (forced past
/// `rmem_max` when we are allowed to), blocking for sends.
pub fn bind(addr: SocketAddrV4, reuse_port: bool, buffer_bytes: usize) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    force_buffer(&socket, libc::SO_RCVBUFFORCE, buffer_bytes)
        .or_else(|_| socket.set_recv_buffer_size(buffer_bytes))?;
    force_buffer(&socket, libc::SO_SNDBUFFORCE, buffer_bytes)
        .or_else(|_| socket.set_send_buffer_size(buffer_bytes))?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn force_buffer(socket: &socket2::Socket, option: libc::c_int, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes / 2).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receive buffers for one batch.
pub struct Receiver {
    batch: RecvBatch,
    pub truncated: u64,
}

impl Receiver {
    pub fn new(batch: usize) -> Self {
        Receiver {
            batch: RecvBatch::new(batch, MAX_DATAGRAM),
            truncated: 0,
        }
    }

    /// Takes what is waiting on `socket`, up to a batch, without blocking.
    pub fn recv(&mut self, socket: &UdpSocket) -> usize {
        self.batch.recv(socket.as_raw_fd(), Wait::No).unwrap_or(0)
    }

    /// The `i`th datagram of the last batch and where it came from; `None`
    /// when it was cut short.
    pub fn get(&mut self, i: usize) -> Option<(&[u8], SocketAddrV4)> {
        if self.batch.is_truncated(i) {
            self.truncated += 1;
            return None;
        }
        match self.batch.datagram(i)? {
            (SocketAddr::V4(from), datagram) => Some((datagram, from)),
            (SocketAddr::V6(_), _) => None,
        }
    }
}

/// Datagrams per send call.
const SEND_BATCH: usize = 256;

/// Datagrams waiting to go out of one socket.
pub struct Sender {
    bytes: Vec<u8>,
    pending: Vec<(usize, usize, SocketAddrV4)>,
    out: SendBatch,
    /// Datagrams the kernel refused (after retrying), and sends retried.
    pub errors: u64,
    pub sent: u64,
}

impl Sender {
    pub fn new() -> Self {
        Sender {
            bytes: Vec::with_capacity(1 << 20),
            pending: Vec::with_capacity(1024),
            out: SendBatch::new(SEND_BATCH),
            errors: 0,
            sent: 0,
        }
    }

    /// Queues `datagram` for `to`.
    pub fn push(&mut self, datagram: &[u8], to: SocketAddrV4) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(datagram);
        self.pending.push((start, datagram.len(), to));
    }

    /// Builds a datagram in place with `build`, then queues it for `to`;
    /// a `false` from `build` drops what it wrote.
    pub fn build(&mut self, to: SocketAddrV4, build: impl FnOnce(&mut Vec<u8>) -> bool) {
        let start = self.bytes.len();
        if build(&mut self.bytes) {
            self.pending.push((start, self.bytes.len() - start, to));
        } else {
            self.bytes.truncate(start);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Sends everything queued, in batches of up to 256. The socket blocks
    /// for sends; where the kernel still refuses for want of room, a batch
    /// yields and retries up to 1000 times before it counts an error.
    pub fn flush(&mut self, socket: &UdpSocket) {
        for batch in self.pending.chunks(SEND_BATCH) {
            let mut queue = self.out.queue();
            for &(start, len, to) in batch {
                let queued = queue.push(to.into(), &self.bytes[start..start + len]);
                debug_assert!(queued, "a chunk fits the batch");
            }
            let sent = queue.flush(socket.as_raw_fd(), WhenFull::Wait { retries: 1000 });
            self.sent += sent.sent;
            self.errors += sent.failed;
        }
        self.bytes.clear();
        self.pending.clear();
    }
}

/// Waits until one of `sockets` is readable or `timeout_ns` has passed.
pub fn wait(sockets: &[&UdpSocket], timeout_ns: u64) {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: fds is a live array of pollfd of the length passed.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &timeout,
            std::ptr::null(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_batch_goes_out_and_comes_back_whole() {
        let a = bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), false, 1 << 20).unwrap();
        let b = bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), false, 1 << 20).unwrap();
        let b_addr = match b.local_addr().unwrap() {
            std::net::SocketAddr::V4(v4) => v4,
            _ => unreachable!(),
        };
        let mut sender = Sender::new();
        for i in 0..100u32 {
            sender.push(format!("datagram {i}").as_bytes(), b_addr);
        }
        sender.flush(&a);
        assert_eq!(sender.sent, 100);
        let mut receiver = Receiver::new(64);
        let mut seen = Vec::new();
        while seen.len() < 100 {
            wait(&[&b], 1_000_000_000);
            let n = receiver.recv(&b);
            for i in 0..n {
                let (bytes, _) = receiver.get(i).unwrap();
                seen.push(String::from_utf8(bytes.to_vec()).unwrap());
            }
        }
        assert_eq!(seen[0], "datagram 0");
        assert_eq!(seen[99], "datagram 99");
    }
}
