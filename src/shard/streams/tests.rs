//! The stream side on real loopback sockets: accepting, framing, pongs,
//! replies over the flow, and every bound closing what passes it.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use super::*;

const MESSAGE: &str = "OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK1\r\nCall-ID: s1\r\nContent-Length: 0\r\n\r\n";

fn streams(config: StreamConfig) -> Streams {
    let listen = [(Transport::Tcp, "127.0.0.1:0".parse().unwrap())];
    Streams::new(3, config, &listen, "127.0.0.1".parse().unwrap(), None).unwrap()
}

fn client(streams: &Streams) -> TcpStream {
    let stream = TcpStream::connect(streams.listen_addr().unwrap()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream
}

/// Polls and flushes, as a shard's turns do, until `done` or two seconds pass.
fn turn_until(streams: &mut Streams, now: Instant, done: impl Fn(&Streams) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !done(streams) && Instant::now() < deadline {
        streams.poll(now).unwrap();
        streams.flush();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(done(streams), "timed out");
}

/// Polls until `done` or two seconds pass.
fn poll_until(streams: &mut Streams, now: Instant, done: impl Fn(&Streams) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !done(streams) && Instant::now() < deadline {
        streams.poll(now).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(done(streams), "timed out");
}

/// Whether the peer closed the connection (EOF or reset).
fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 64];
    loop {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

#[test]
fn messages_split_anyhow_arrive_whole_with_their_flow() {
    let mut s = streams(StreamConfig::default());
    let mut c = client(&s);
    let twice = format!("{MESSAGE}{MESSAGE}");
    let (a, b) = twice.as_bytes().split_at(30);
    c.write_all(a).unwrap();
    c.flush().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    c.write_all(b).unwrap();
    poll_until(&mut s, Instant::now(), |s| s.frames.len() == 2);
    for (peer, range) in &s.frames {
        assert_eq!(&s.arrivals[range.clone()], MESSAGE.as_bytes());
        assert_eq!(peer.transport, Transport::Tcp);
        assert_eq!(peer.addr, c.local_addr().unwrap());
        assert_eq!(unpack(peer.flow.unwrap()).0, 3, "the flow names this shard");
    }
    assert_eq!((s.open(), s.counters.accepted), (1, 1));
    // A reply over the flow reaches the client.
    let peer = s.frames[0].0;
    s.send(
        peer,
        b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        Instant::now(),
    )
    .unwrap();
    s.flush();
    let mut got = [0u8; 64];
    let n = c.read(&mut got).unwrap();
    assert!(got[..n].starts_with(b"SIP/2.0 200 OK"));
    // Another shard's flow is handed back, not sent.
    let other = Peer {
        flow: Some(pack(1, 0, 0)),
        ..peer
    };
    assert_eq!(s.send(other, b"x", Instant::now()), Err(1));
}

#[test]
fn a_ping_gets_a_pong() {
    let mut s = streams(StreamConfig::default());
    let mut c = client(&s);
    c.write_all(b"\r\n\r\n").unwrap();
    poll_until(&mut s, Instant::now(), |s| s.counters.pings == 1);
    s.flush();
    let mut pong = [0u8; 2];
    c.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");
}

#[test]
fn a_stream_that_cannot_be_framed_is_closed_and_counted() {
    let mut s = streams(StreamConfig::default());
    let mut c = client(&s);
    c.write_all(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n")
        .unwrap();
    poll_until(&mut s, Instant::now(), |s| {
        s.open() == 0 && s.counters.accepted == 1
    });
    assert_eq!(s.counters.faults[StreamFault::NoContentLength.index()], 1);
    assert!(s.frames.is_empty());
    assert!(closed(&mut c));
}

#[test]
fn connections_past_a_source_bound_are_refused() {
    let config = StreamConfig {
        connections_per_source_max: 2,
        ..StreamConfig::default()
    };
    let mut s = streams(config);
    let clients: Vec<TcpStream> = (0..3).map(|_| client(&s)).collect();
    poll_until(&mut s, Instant::now(), |s| {
        s.counters.accepted + s.counters.refused == 3
    });
    assert_eq!((s.open(), s.counters.refused), (2, 1));
    let mut third = clients.into_iter().nth(2).unwrap();
    assert!(closed(&mut third));
}

#[test]
fn idle_and_slow_connections_are_closed_at_their_deadlines() {
    let mut s = streams(StreamConfig::default());
    let _idle = client(&s);
    let mut slow = client(&s);
    slow.write_all(&MESSAGE.as_bytes()[..20]).unwrap();
    let now = Instant::now();
    poll_until(&mut s, now, |s| {
        s.open() == 2 && s.conn(1).is_some_and(|c| c.partial() > 0)
    });
    s.poll(now + Duration::from_secs(11)).unwrap();
    assert_eq!(
        (s.counters.closed_slow, s.counters.closed_idle, s.open()),
        (1, 0, 1)
    );
    s.poll(now + Duration::from_secs(200)).unwrap();
    assert_eq!((s.counters.closed_idle, s.open()), (1, 0));
    assert!(closed(&mut slow));
}

#[test]
fn a_refused_connect_fails_its_peer_over() {
    let mut s = streams(StreamConfig::default());
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let to = Peer::new(Transport::Tcp, SocketAddr::from(([127, 0, 0, 1], port)));
    s.send(to, MESSAGE.as_bytes(), Instant::now()).unwrap();
    poll_until(&mut s, Instant::now(), |s| !s.failed.is_empty());
    assert_eq!(s.failed, vec![to]);
    assert_eq!(s.open(), 0);
}

#[test]
fn outgoing_connections_are_reused_and_answers_come_back_on_them() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = Peer::new(Transport::Tcp, backend.local_addr().unwrap());
    let mut s = streams(StreamConfig::default());
    s.send(to, MESSAGE.as_bytes(), Instant::now()).unwrap();
    s.send(to, MESSAGE.as_bytes(), Instant::now()).unwrap();
    let (mut far, _) = backend.accept().unwrap();
    far.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    poll_until(&mut s, Instant::now(), |s| {
        s.conn(0).is_some_and(|c| !c.is_connecting())
    });
    let mut got = vec![0u8; 2 * MESSAGE.len()];
    far.read_exact(&mut got).unwrap();
    assert_eq!(got, format!("{MESSAGE}{MESSAGE}").as_bytes());
    assert_eq!((s.counters.connected, s.open()), (1, 1));
    far.write_all(MESSAGE.as_bytes()).unwrap();
    poll_until(&mut s, Instant::now(), |s| s.frames.len() == 1);
    assert_eq!(s.frames[0].0.addr, to.addr);
}

#[test]
fn a_reader_that_does_not_read_is_cut_off_at_the_queue_bound() {
    let config = StreamConfig {
        send_queue_bytes_max: 1 << 16,
        ..StreamConfig::default()
    };
    let mut s = streams(config);
    let _c = client(&s);
    poll_until(&mut s, Instant::now(), |s| s.open() == 1);
    let peer = Peer::new(Transport::Tcp, _c.local_addr().unwrap());
    let chunk = vec![b'x'; 60_000];
    for _ in 0..200 {
        s.send(peer, &chunk, Instant::now()).unwrap();
        s.flush();
        if s.open() == 0 {
            break;
        }
    }
    assert_eq!((s.counters.closed_backlog, s.open()), (1, 0));
}

#[test]
fn flow_ids_round_trip() {
    for (shard, slot, generation) in [(0, 0, 0), (255, u32::MAX, 0xff_ffff), (7, 12, 3)] {
        assert_eq!(
            unpack(pack(shard, slot, generation)),
            (shard, slot, generation)
        );
    }
}

#[test]
fn connections_past_the_shards_buffer_budget_are_closed() {
    let config = StreamConfig {
        buffered_bytes_max: 12 << 10,
        ..StreamConfig::default()
    };
    let mut s = streams(config);
    // Half of a 6,000-byte message each: a read buffer grown to 8 KiB.
    let head = "MESSAGE sip:a SIP/2.0\r\nContent-Length: 6000\r\n\r\n";
    let part = format!("{head}{}", "x".repeat(5000));
    let mut first = client(&s);
    first.write_all(part.as_bytes()).unwrap();
    poll_until(&mut s, Instant::now(), |s| s.buffered >= 8 << 10);
    let mut second = client(&s);
    second.write_all(part.as_bytes()).unwrap();
    poll_until(&mut s, Instant::now(), |s| s.counters.closed_budget == 1);
    assert_eq!(s.open(), 1, "the first keeps its place");
    assert!(closed(&mut second));
    assert!(s.buffered <= 12 << 10);
    // The first finishes its message and frames it.
    first.write_all("x".repeat(1000).as_bytes()).unwrap();
    poll_until(&mut s, Instant::now(), |s| s.frames.len() == 1);
    drop(first);
    poll_until(&mut s, Instant::now(), |s| s.open() == 0);
    assert_eq!(s.buffered, 0, "every byte accounted for on close");
}

/// Streams listening on TLS with the test PKI's certificate, trusting its
/// CA for backends.
fn tls_streams(config: StreamConfig, pki: &crate::tls::test_pki::Pki) -> Streams {
    let files = crate::tls::TlsFiles {
        cert: Some(pki.cert.clone()),
        key: Some(pki.key.clone()),
        client_ca: None,
        backend_ca: Some(pki.ca.clone()),
    };
    let tls = crate::tls::TlsContext::load(&files, true)
        .unwrap()
        .for_shard();
    let listen = [(Transport::Tls, "127.0.0.1:0".parse().unwrap())];
    Streams::new(3, config, &listen, "127.0.0.1".parse().unwrap(), Some(tls)).unwrap()
}

/// A TLS client on its own thread: handshakes, writes `send`, and returns
/// what it read back until `want` bytes came.
fn tls_client(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    send: &'static [u8],
    want: usize,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let session = rustls::ClientConnection::new(config, name).unwrap();
        let socket = TcpStream::connect(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(session, socket);
        tls.write_all(send).unwrap();
        let mut got = vec![0; want];
        tls.read_exact(&mut got).unwrap();
        got
    })
}

#[test]
fn a_tls_connection_is_framed_like_tcp_and_answered_over_its_session() {
    let pki = crate::tls::test_pki::Pki::make("streams-tls");
    let mut s = tls_streams(StreamConfig::default(), &pki);
    let client = s.tls.as_ref().unwrap().client.clone();
    const PING_AND_MESSAGE: &[u8] =
        b"\r\n\r\nOPTIONS sip:a@127.0.0.1 SIP/2.0\r\nCall-ID: t1\r\nContent-Length: 0\r\n\r\n";
    let reply = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n";
    let c = tls_client(
        s.listen_addr().unwrap(),
        client,
        PING_AND_MESSAGE,
        2 + reply.len(),
    );
    turn_until(&mut s, Instant::now(), |s| s.frames.len() == 1);
    let (peer, range) = s.frames[0].clone();
    assert_eq!(peer.transport, Transport::Tls);
    assert!(s.arrivals[range].starts_with(b"OPTIONS sip:a@127.0.0.1"));
    assert_eq!((s.counters.tls_handshakes_ok, s.counters.pings), (1, 1));
    s.send(peer, reply, Instant::now()).unwrap();
    s.flush();
    let got = c.join().unwrap();
    assert_eq!(&got[..2], b"\r\n", "the pong, inside TLS");
    assert_eq!(&got[2..], reply);
}

#[test]
fn a_handshake_not_done_in_time_or_not_tls_is_closed_and_counted() {
    let pki = crate::tls::test_pki::Pki::make("streams-tls-deadline");
    let config = StreamConfig {
        handshake_timeout: Duration::from_millis(100),
        ..StreamConfig::default()
    };
    let mut s = tls_streams(config, &pki);
    let mut silent = client(&s);
    let mut plain = client(&s);
    plain.write_all(MESSAGE.as_bytes()).unwrap();
    let now = Instant::now();
    turn_until(&mut s, now, |s| s.counters.tls_handshakes_failed == 1);
    assert!(closed(&mut plain), "plain SIP on the TLS port is refused");
    assert_eq!(s.open(), 1);
    s.poll(now + Duration::from_secs(1)).unwrap();
    assert_eq!((s.counters.closed_handshake_timeout, s.open()), (1, 0));
    assert!(closed(&mut silent));
}

#[test]
fn a_backend_whose_certificate_is_not_trusted_fails_over() {
    let pki = crate::tls::test_pki::Pki::make("streams-tls-untrusted");
    let other = crate::tls::test_pki::Pki::make("streams-tls-untrusted-ca");
    let mut backend = tls_streams(StreamConfig::default(), &other);
    let mut s = tls_streams(StreamConfig::default(), &pki);
    let to = Peer::new(Transport::Tls, backend.listen_addr().unwrap());
    s.send(to, MESSAGE.as_bytes(), Instant::now()).unwrap();
    s.flush();
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.failed.is_empty() && Instant::now() < deadline {
        backend.poll(Instant::now()).unwrap();
        backend.flush();
        s.poll(Instant::now()).unwrap();
        s.flush();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(s.failed, vec![Peer::new(Transport::Tls, to.addr)]);
    assert_eq!((s.counters.tls_handshakes_failed, s.open()), (1, 0));
    assert!(backend.frames.is_empty(), "nothing went out in the clear");
}

#[test]
fn a_source_the_guard_refuses_holds_no_connection() {
    let mut s = streams(StreamConfig::default());
    let mut c = client(&s);
    poll_until(&mut s, Instant::now(), |s| s.open() == 1);
    s.screen_accepted(|source| source.ip().is_loopback() && source.port() == 0);
    assert_eq!(
        (s.open(), s.counters.refused, s.counters.accepted),
        (0, 1, 0)
    );
    assert!(closed(&mut c));
    // Connections accepted in an earlier turn are not screened again.
    let _kept = client(&s);
    poll_until(&mut s, Instant::now(), |s| s.open() == 1);
    s.poll(Instant::now()).unwrap();
    s.screen_accepted(|_| false);
    assert_eq!(s.open(), 1);
}
