//! Loopback round trips through the batches.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::*;

fn socket() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("receive timeout");
    let address = socket.local_addr().expect("local address");
    (socket, address)
}

/// Receives until `count` datagrams came, waiting for the first of each
/// batch; returns them as (source, bytes).
fn receive(batch: &mut RecvBatch, socket: &UdpSocket, count: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let n = batch
            .recv(socket.as_raw_fd(), Wait::ForOne)
            .expect("datagrams within the timeout");
        for i in 0..n {
            let (source, bytes) = batch.datagram(i).expect("a whole datagram");
            seen.push((source, bytes.to_vec()));
        }
    }
    seen
}

#[test]
fn a_batch_goes_out_and_comes_back_whole() {
    let (a, a_address) = socket();
    let (b, b_address) = socket();
    let datagrams: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("datagram {i}").into_bytes())
        .collect();
    let mut send = SendBatch::new(64);
    let mut total = Sent::default();
    for chunk in datagrams.chunks(64) {
        let mut queue = send.queue();
        for datagram in chunk {
            assert!(queue.push(b_address, datagram));
        }
        total += queue.flush(a.as_raw_fd(), WhenFull::DropOne);
    }
    assert_eq!(
        total,
        Sent {
            sent: 100,
            failed: 0,
            icmp_pending: false
        }
    );
    let mut recv = RecvBatch::new(32, 2048);
    let seen = receive(&mut recv, &b, 100);
    assert!(seen.iter().all(|(source, _)| *source == a_address));
    let bytes: Vec<Vec<u8>> = seen.into_iter().map(|(_, bytes)| bytes).collect();
    assert_eq!(bytes, datagrams);
}

#[test]
fn a_full_batch_refuses_one_more_and_fills_every_slot() {
    let (a, _) = socket();
    let (b, b_address) = socket();
    let mut send = SendBatch::new(8);
    let mut queue = send.queue();
    for _ in 0..8 {
        assert!(queue.push(b_address, b"slot"));
    }
    assert!(queue.is_full());
    assert!(!queue.push(b_address, b"one too many"));
    assert_eq!(queue.len(), 8);
    assert_eq!(queue.flush(a.as_raw_fd(), WhenFull::DropRest).sent, 8);
    assert!(queue.is_empty());
    // Eight waiting, eight slots: one call takes them all.
    std::thread::sleep(Duration::from_millis(20));
    let mut recv = RecvBatch::new(8, 64);
    assert_eq!(
        recv.recv(b.as_raw_fd(), Wait::No).expect("eight datagrams"),
        8
    );
    assert_eq!(recv.len(), 8);
    assert!((0..8).all(|i| recv.datagram(i).is_some_and(|(_, d)| d == b"slot")));
    assert!(recv.datagram(8).is_none());
}

#[test]
fn a_datagram_longer_than_a_slot_is_reported_truncated() {
    let (a, _) = socket();
    let (b, b_address) = socket();
    a.send_to(&[b'x'; 100], b_address).expect("send");
    a.send_to(&[b'y'; 16], b_address).expect("send");
    let mut recv = RecvBatch::new(4, 16);
    let mut seen = 0;
    while seen < 2 {
        let n = recv
            .recv(b.as_raw_fd(), Wait::ForOne)
            .expect("two datagrams");
        for i in 0..n {
            match seen + i {
                0 => {
                    assert!(recv.is_truncated(i));
                    assert!(recv.datagram(i).is_none());
                }
                _ => {
                    assert!(!recv.is_truncated(i));
                    assert_eq!(recv.datagram(i).map(|(_, d)| d), Some(&[b'y'; 16][..]));
                }
            }
        }
        seen += n;
    }
}

#[test]
fn an_empty_batch_moves_nothing() {
    let (a, own) = socket();
    let mut send = SendBatch::new(4);
    let mut queue = send.queue();
    assert!(queue.is_empty());
    assert_eq!(
        queue.flush(a.as_raw_fd(), WhenFull::DropOne),
        Sent::default()
    );
    // Nothing waiting: the kernel's WouldBlock, and no datagram.
    let mut recv = RecvBatch::new(4, 64);
    let error = recv
        .recv(a.as_raw_fd(), Wait::No)
        .expect_err("nothing waits");
    assert_eq!(error.kind(), std::io::ErrorKind::WouldBlock);
    assert!(recv.is_empty());
    assert!(recv.datagram(0).is_none());
    // No slots: no call.
    let mut none = RecvBatch::new(0, 64);
    a.send_to(b"waiting", own).expect("send");
    assert_eq!(none.recv(a.as_raw_fd(), Wait::No).expect("no call"), 0);
}

#[test]
fn bytes_are_sent_from_where_they_were_received() {
    // The floor's relay: a receive slot goes straight back out.
    let (a, a_address) = socket();
    let (relay, relay_address) = socket();
    a.send_to(b"there and back", relay_address).expect("send");
    let mut recv = RecvBatch::new(4, 64);
    let n = recv
        .recv(relay.as_raw_fd(), Wait::ForOne)
        .expect("one datagram");
    assert_eq!(n, 1);
    let mut send = SendBatch::new(4);
    let mut queue = send.queue();
    let (source, bytes) = recv.datagram(0).expect("whole");
    assert_eq!(source, a_address);
    assert!(queue.push(source, bytes));
    assert_eq!(queue.flush(relay.as_raw_fd(), WhenFull::DropOne).sent, 1);
    let mut back = RecvBatch::new(1, 64);
    let seen = receive(&mut back, &a, 1);
    assert_eq!(seen, vec![(relay_address, b"there and back".to_vec())]);
}

#[test]
fn an_unreachable_destination_is_read_from_the_error_queue() {
    let (a, _) = socket();
    // A port nobody listens on: bind one, note it, close it.
    let closed = socket().1;
    enable_icmp_errors(a.as_raw_fd(), false).expect("IP_RECVERR");
    let mut send = SendBatch::new(2);
    let mut queue = send.queue();
    assert!(queue.push(closed, b"anyone?"));
    assert_eq!(queue.flush(a.as_raw_fd(), WhenFull::DropOne).sent, 1);
    let mut unreachable = Vec::new();
    for _ in 0..200 {
        read_icmp_errors(a.as_raw_fd(), &mut unreachable);
        if !unreachable.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(unreachable, vec![closed]);
    assert!(is_icmp_error(libc::ECONNREFUSED));
    assert!(!is_icmp_error(libc::EAGAIN));
}

#[test]
fn meminfo_sees_a_queued_datagram() {
    let (a, own) = socket();
    let before = meminfo(a.as_raw_fd()).expect("SO_MEMINFO");
    assert_eq!(before.queued, 0);
    assert!(before.size > 0);
    a.send_to(b"queued", own).expect("send to itself");
    std::thread::sleep(Duration::from_millis(20));
    let after = meminfo(a.as_raw_fd()).expect("SO_MEMINFO");
    assert!(after.queued > 0);
    assert_eq!(after.drops, 0);
}

#[test]
fn a_batch_can_move_to_the_thread_that_uses_it() {
    fn send<T: Send>(_: &T) {}
    send(&RecvBatch::new(1, 64));
    send(&SendBatch::new(1));
}
