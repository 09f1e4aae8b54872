//! The streams driven by a real ring on loopback sockets: accepts,
//! receives and sends as the shard's io_uring loop runs them.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::super::{StreamConfig, Streams};
use crate::shard::sys::Doorbell;
use crate::shard::uring::Uring;
use crate::sip::{Peer, Transport};

const MESSAGE: &[u8] =
    b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nCall-ID: r1\r\nContent-Length: 0\r\n\r\n";
const REPLY: &[u8] = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n";

/// A ring and the sockets it needs besides the streams'.
struct Ring {
    uring: Uring,
    _sockets: (UdpSocket, UdpSocket, Doorbell),
}

/// Streams on a TCP listener, driven by a ring; `None` where io_uring is
/// not allowed (the test then has nothing to show).
fn ringed(listen: &[(Transport, SocketAddr)]) -> Option<(Streams, Ring)> {
    ringed_with(listen, StreamConfig::default())
}

fn ringed_with(
    listen: &[(Transport, SocketAddr)],
    config: StreamConfig,
) -> Option<(Streams, Ring)> {
    let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
    let own = UdpSocket::bind("127.0.0.1:0").ok()?;
    let doorbell = Doorbell::new().ok()?;
    let uring = Uring::new(udp.as_raw_fd(), own.as_raw_fd(), doorbell.raw()).ok()?;
    let local = "127.0.0.1".parse().unwrap();
    let mut streams = Streams::new(3, config, listen, local, None).unwrap();
    streams.use_ring().unwrap();
    let ring = Ring {
        uring,
        _sockets: (udp, own, doorbell),
    };
    Some((streams, ring))
}

/// One turn of the shard's loop for the streams: flush, submit, wait, complete.
fn turn(s: &mut Streams, ring: &mut Ring) {
    s.flush();
    let mut ops = Vec::new();
    s.take_ring_ops(&mut ops);
    ring.uring.queue_stream_ops(&mut ops).unwrap();
    let mut ready = Vec::new();
    ring.uring
        .wait(Duration::from_millis(5), &mut ready)
        .unwrap();
    let mut done = Vec::new();
    ring.uring.take_stream_done(&mut done);
    let uring = &ring.uring;
    s.ring_done(Instant::now(), &mut done, |bid, len| {
        uring.stream_buffer(bid, len)
    });
    ring.uring.recycle_stream(&done);
}

fn turn_until(s: &mut Streams, ring: &mut Ring, done: impl Fn(&Streams) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !done(s) && Instant::now() < deadline {
        turn(s, ring);
    }
    assert!(done(s), "timed out");
}

#[test]
fn the_ring_accepts_frames_answers_pings_and_replies_over_the_flow() {
    let listen = [(Transport::Tcp, "127.0.0.1:0".parse().unwrap())];
    let Some((mut s, mut ring)) = ringed(&listen) else {
        return;
    };
    let mut c = TcpStream::connect(s.listen_addr().unwrap()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.write_all(b"\r\n\r\n").unwrap();
    c.write_all(&MESSAGE[..20]).unwrap();
    turn_until(&mut s, &mut ring, |s| s.counters.pings == 1);
    c.write_all(&MESSAGE[20..]).unwrap();
    turn_until(&mut s, &mut ring, |s| s.frames.len() == 1);
    let (peer, range) = s.frames[0].clone();
    assert_eq!(&s.arrivals[range], MESSAGE);
    assert_eq!(
        (peer.transport, peer.addr),
        (Transport::Tcp, c.local_addr().unwrap())
    );
    s.send(peer, REPLY, Instant::now()).unwrap();
    turn(&mut s, &mut ring);
    let mut got = vec![0; 2 + REPLY.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got[..2], b"\r\n", "the pong");
    assert_eq!(&got[2..], REPLY);
    // The peer closes: the receive's end closes ours.
    drop(c);
    turn_until(&mut s, &mut ring, |s| s.open() == 0);
    assert_eq!(s.counters.closed_by_peer, 1);
}

#[test]
fn the_ring_connects_sends_and_fails_over_a_refused_connect() {
    let Some((mut s, mut ring)) = ringed(&[]) else {
        return;
    };
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = Peer::new(Transport::Tcp, backend.local_addr().unwrap());
    s.send(to, MESSAGE, Instant::now()).unwrap();
    turn(&mut s, &mut ring);
    let (mut accepted, _) = backend.accept().unwrap();
    accepted.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while accepted.peek(&mut [0]).is_err() && Instant::now() < deadline {
        turn(&mut s, &mut ring);
    }
    accepted.set_nonblocking(false).unwrap();
    let mut got = vec![0; MESSAGE.len()];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(got, MESSAGE);
    // A port nothing listens on: the peer is reported for failover.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = Peer::new(Transport::Tcp, closed.local_addr().unwrap());
    drop(closed);
    s.send(nobody, MESSAGE, Instant::now()).unwrap();
    turn_until(&mut s, &mut ring, |s| !s.failed.is_empty());
    assert_eq!(s.failed, vec![nobody]);
    assert_eq!(s.counters.connect_failed, 1);
}

#[test]
fn a_connection_closed_with_a_send_in_flight_keeps_its_buffer_until_the_send_ends() {
    let listen = [(Transport::Tcp, "127.0.0.1:0".parse().unwrap())];
    let config = StreamConfig {
        send_queue_bytes_max: 64 << 20,
        ..StreamConfig::default()
    };
    let Some((mut s, mut ring)) = ringed_with(&listen, config) else {
        return;
    };
    let mut c = TcpStream::connect(s.listen_addr().unwrap()).unwrap();
    c.write_all(MESSAGE).unwrap();
    turn_until(&mut s, &mut ring, |s| s.frames.len() == 1);
    let peer = s.frames[0].0;
    // More than the socket buffers take from a reader that never reads:
    // the send stays in flight.
    let big = vec![b'x'; 32 << 20];
    s.send(peer, &big, Instant::now()).unwrap();
    turn(&mut s, &mut ring);
    turn(&mut s, &mut ring);
    assert_eq!(
        (s.open(), s.counters.closed_by_peer),
        (1, 0),
        "a send waits, it does not fail"
    );
    let slot = s.frames[0]
        .0
        .flow
        .map(|f| super::super::unpack(f).1)
        .unwrap();
    s.close(slot);
    assert_eq!(
        s.orphans.len(),
        1,
        "the in-flight buffer outlives the connection"
    );
    drop(c);
    turn_until(&mut s, &mut ring, |s| s.orphans.is_empty());
}
