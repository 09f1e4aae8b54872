//! Forwards and answers whatever the scanner accepts, and checks that what
//! the proxy writes scans again.
//!
//! The first `OPTIONS` bytes of the input choose how, the rest is the
//! datagram:
//!
//! | byte | meaning                                                        |
//! |------|----------------------------------------------------------------|
//! | 0    | bit 0: IPv6 source; bit 1: insert Record-Route; bit 2: the source is the top Via's own address when it is an IP literal |
//! | 1-2  | source port, big-endian                                        |
//! | 3-6  | source address (IPv4, or the low 32 bits of 2001:db8::/96)     |
//! | 7    | branch key length (mod 24); the key is token characters        |
//!
//! What is asserted holds for any accepted input: the output buffer is
//! large enough, the forwarded request scans (allowing for what a hop adds
//! to the limits, and for `Max-Forwards: 1` becoming 0, which the next
//! proxy answers with 483), its body, its unowned headers and the Vias
//! below ours are byte for byte the input's, and the 100 and 503 the
//! proxy would send scan with the request's Vias, Call-ID and CSeq.
#![no_main]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use sipshard::sip::{
    write_response, EditError, Editor, Fault, Forward, Limits, LocalAddress, LocalResponse,
    Message, Scanner,
};

const OPTIONS: usize = 8;
const TOKEN: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~";

fn sent_by_ip(message: &Message<'_>) -> Option<IpAddr> {
    let host = std::str::from_utf8(message.top_via().host).ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < OPTIONS {
        return;
    }
    let (options, datagram) = data.split_at(OPTIONS);
    let flags = options[0];
    let port = u16::from_be_bytes([options[1], options[2]]);
    let low = [options[3], options[4], options[5], options[6]];
    let key: Vec<u8> = (0..usize::from(options[7]) % 24)
        .map(|i| TOKEN[(usize::from(low[i % 4]) + i * 7) % TOKEN.len()])
        .collect();

    let mut scanner = Scanner::new(Limits::default());
    let Ok(message) = scanner.scan(datagram) else {
        return;
    };
    let ip = match sent_by_ip(&message).filter(|_| flags & 4 != 0) {
        Some(ip) => ip,
        None if flags & 1 != 0 => {
            let [a, b, c, d] = low;
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0x0db8,
                0,
                0,
                0,
                0,
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d]),
            ))
        }
        None => IpAddr::V4(Ipv4Addr::from(low)),
    };
    let source = SocketAddr::new(ip, port);
    let editor =
        Editor::new(LocalAddress::new("192.0.2.250", 5060).with_alias("lb.example.com", 5060));
    let mut out = vec![0u8; common::OUT_BYTES];

    if !message.is_request() {
        match editor.forward_response(&message, &mut out) {
            Ok(n) => {
                let mut rescanner = Scanner::new(common::relaxed());
                let forwarded = rescanner
                    .scan(&out[..n])
                    .unwrap_or_else(|e| panic!("forwarded response does not scan: {e}"));
                common::check_accessors(&forwarded);
                assert_eq!(forwarded.via_count() + 1, message.via_count());
                assert_eq!(forwarded.body(), message.body());
                assert_eq!(
                    common::unowned_headers(&forwarded),
                    common::unowned_headers(&message)
                );
                assert_eq!(
                    common::via_values(&forwarded)[..],
                    common::via_values(&message)[1..]
                );
            }
            Err(EditError::ViaNotOurs | EditError::ViaOnlyOurs) => {}
            Err(e) => panic!("forwarding a response failed: {e:?}"),
        }
        return;
    }

    let forward = Forward {
        source,
        branch_key: &key,
        record_route: flags & 2 != 0,
    };
    let n = editor
        .forward_request(&message, &forward, &mut out)
        .expect("the buffer has room for any datagram");
    let mut rescanner = Scanner::new(common::relaxed());
    match rescanner.scan(&out[..n]) {
        Ok(forwarded) => {
            common::check_accessors(&forwarded);
            assert_eq!(forwarded.body(), message.body(), "body is byte-exact");
            assert_eq!(forwarded.via_count(), message.via_count() + 1);
            let mut branch = b"z9hG4bK".to_vec();
            branch.extend_from_slice(&key);
            assert_eq!(forwarded.top_via().branch, Some(&branch[..]));
            assert_eq!(
                forwarded.max_forwards(),
                Some(message.max_forwards().map_or(70, |h| h - 1))
            );
            assert_eq!(
                common::unowned_headers(&forwarded),
                common::unowned_headers(&message)
            );
            assert_eq!(
                common::via_values(&forwarded)[2..],
                common::via_values(&message)[1..]
            );
            assert_eq!(forwarded.call_id(), message.call_id());
        }
        Err(e) if message.max_forwards() == Some(1) => assert_eq!(e.fault, Fault::MaxForwardsZero),
        Err(e) => panic!(
            "forwarded request does not scan: {e}\n{:?}",
            String::from_utf8_lossy(&out[..n])
        ),
    }

    for response in [LocalResponse::TRYING, LocalResponse::service_unavailable(5)] {
        let n = write_response(&message, source, &response, &mut out).expect("answerable");
        let mut rescanner = Scanner::new(common::relaxed());
        let reply = rescanner.scan(&out[..n]).unwrap_or_else(|e| {
            panic!(
                "local response does not scan: {e}\n{:?}",
                String::from_utf8_lossy(&out[..n])
            )
        });
        common::check_accessors(&reply);
        assert_eq!(reply.status_code(), Some(response.code));
        assert_eq!(reply.via_count(), message.via_count());
        assert_eq!(reply.call_id(), message.call_id());
        assert_eq!(reply.cseq(), message.cseq());
    }
});
