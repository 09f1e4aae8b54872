//! ICMP errors about the datagrams we sent (ip(7) `IP_RECVERR`): a dead
//! destination is known at once, from the socket's error queue.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// The errors `IP_RECVERR` reports for an ICMP message about a datagram we
/// sent (port, host or network unreachable). A send or receive that
/// returns one was not its cause: it only surfaced there.
pub fn is_icmp_error(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN
    )
}

/// Asks the kernel to queue ICMP errors about our datagrams on the socket
/// (ip(7) `IP_RECVERR`, ipv6(7) `IPV6_RECVERR`). Without it an unconnected
/// UDP socket never hears of them.
pub fn enable_icmp_errors(fd: RawFd, ipv6: bool) -> io::Result<()> {
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
/// unreachable (port, host or network), in order, pushed to `unreachable`.
pub fn read_icmp_errors(fd: RawFd, unreachable: &mut Vec<SocketAddr>) {
    for _ in 0..ICMP_ERRORS_MAX {
        match read_one(fd) {
            Some(Some(address)) => unreachable.push(address),
            Some(None) => {}
            None => return,
        }
    }
}

/// One entry of the error queue: `None` when it is empty, `Some(None)` for
/// an entry that is not an unreachable destination.
fn read_one(fd: RawFd) -> Option<Option<SocketAddr>> {
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
        return None;
    }
    if !refused(&header) {
        return Some(None);
    }
    // SAFETY: the kernel wrote a socket address of msg_namelen bytes.
    let address = unsafe { SockAddr::new(name, header.msg_namelen) };
    Some(address.as_socket())
}

/// Whether the control messages of an error-queue entry say ICMP refused
/// the datagram.
fn refused(header: &libc::msghdr) -> bool {
    let mut refused = false;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled,
    // bounded by msg_controllen; a RECVERR message carries a
    // sock_extended_err, read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
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
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    refused
}
