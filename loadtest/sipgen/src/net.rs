//! Batched UDP I/O: one `recvmmsg` takes up to a batch of datagrams, one
//! `sendmmsg` sends everything a loop turn produced for a socket. Syscalls,
//! not SIP, are what a generator spends its time on, so it makes few.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

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

fn to_sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

/// Receive buffers for one batch.
pub struct Receiver {
    buffers: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    addrs: Vec<libc::sockaddr_in>,
    count: usize,
    pub truncated: u64,
}

impl Receiver {
    pub fn new(batch: usize) -> Self {
        Receiver {
            buffers: vec![0; batch * MAX_DATAGRAM],
            // SAFETY: iovec, mmsghdr and sockaddr_in are plain C structs for
            // which all zeroes is a valid value.
            iovecs: vec![unsafe { mem::zeroed() }; batch],
            headers: vec![unsafe { mem::zeroed() }; batch],
            addrs: vec![unsafe { mem::zeroed() }; batch],
            count: 0,
            truncated: 0,
        }
    }

    /// Takes what is waiting on `socket`, up to a batch, without blocking.
    pub fn recv(&mut self, socket: &UdpSocket) -> usize {
        let batch = self.headers.len();
        for i in 0..batch {
            self.iovecs[i] = libc::iovec {
                iov_base: self.buffers[i * MAX_DATAGRAM..].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            let header = &mut self.headers[i].msg_hdr;
            header.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            header.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
        }
        // SAFETY: every header points into buffers owned by self, sized as
        // declared, alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                batch as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.count = usize::try_from(n).unwrap_or(0);
        self.count
    }

    /// The `i`th datagram of the last batch and where it came from; `None`
    /// when it was cut short.
    pub fn get(&mut self, i: usize) -> Option<(&[u8], SocketAddrV4)> {
        let header = &self.headers[i];
        if header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            self.truncated += 1;
            return None;
        }
        let len = (header.msg_len as usize).min(MAX_DATAGRAM);
        let from = from_sockaddr(&self.addrs[i]);
        Some((
            &self.buffers[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len],
            from,
        ))
    }
}

/// Datagrams waiting to go out of one socket.
pub struct Sender {
    bytes: Vec<u8>,
    pending: Vec<(usize, usize, libc::sockaddr_in)>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    /// Datagrams the kernel refused (after retrying), and sends retried.
    pub errors: u64,
    pub sent: u64,
}

impl Sender {
    pub fn new() -> Self {
        Sender {
            bytes: Vec::with_capacity(1 << 20),
            pending: Vec::with_capacity(1024),
            iovecs: Vec::new(),
            headers: Vec::new(),
            errors: 0,
            sent: 0,
        }
    }

    /// Queues `datagram` for `to`.
    pub fn push(&mut self, datagram: &[u8], to: SocketAddrV4) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(datagram);
        self.pending.push((start, datagram.len(), to_sockaddr(to)));
    }

    /// Builds a datagram in place with `build`, then queues it for `to`;
    /// a `false` from `build` drops what it wrote.
    pub fn build(&mut self, to: SocketAddrV4, build: impl FnOnce(&mut Vec<u8>) -> bool) {
        let start = self.bytes.len();
        if build(&mut self.bytes) {
            self.pending
                .push((start, self.bytes.len() - start, to_sockaddr(to)));
        } else {
            self.bytes.truncate(start);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Sends everything queued, in batches of up to 256.
    pub fn flush(&mut self, socket: &UdpSocket) {
        let mut done = 0;
        let mut retries = 0;
        while done < self.pending.len() {
            let batch = (self.pending.len() - done).min(256);
            self.iovecs.clear();
            self.headers.clear();
            for (start, len, _) in &self.pending[done..done + batch] {
                self.iovecs.push(libc::iovec {
                    iov_base: self.bytes[*start..].as_mut_ptr().cast(),
                    iov_len: *len,
                });
            }
            for (i, (_, _, to)) in self.pending[done..done + batch].iter().enumerate() {
                // SAFETY: all zeroes is a valid mmsghdr.
                let mut header: libc::mmsghdr = unsafe { mem::zeroed() };
                header.msg_hdr.msg_name = (to as *const libc::sockaddr_in).cast_mut().cast();
                header.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                header.msg_hdr.msg_iov = &mut self.iovecs[i];
                header.msg_hdr.msg_iovlen = 1;
                self.headers.push(header);
            }
            // SAFETY: the headers point into self.bytes, self.iovecs and
            // self.pending, none of which change during the call.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.headers.as_mut_ptr(),
                    batch as libc::c_uint,
                    0,
                )
            };
            if n > 0 {
                done += n as usize;
                self.sent += n as u64;
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN | libc::ENOBUFS) if retries < 1000 => {
                    retries += 1;
                    std::thread::yield_now();
                }
                _ => {
                    // ECONNREFUSED from an earlier ICMP error, or a lasting
                    // shortage: skip this datagram, count it.
                    self.errors += 1;
                    done += 1;
                }
            }
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
