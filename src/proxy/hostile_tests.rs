//! Hostile input through the proxy core: every limit answers as the
//! README says and moves its own counter, and what cannot be forwarded
//! whole is answered instead of forwarded in part or dropped in silence.

use super::*;
use crate::balance::Algorithm;
use crate::sip::{Fault, Limits, UDP_PAYLOAD_MAX};
use crate::testkit::lab::*;

/// `invite(call_id)` with `extra` header lines before Content-Length.
fn invite_with(call_id: &str, extra: &str) -> String {
    invite(call_id).replace(
        "Content-Length: 0\r\n",
        &format!("{extra}Content-Length: 0\r\n"),
    )
}

#[test]
fn each_scanner_limit_gets_its_answer_and_its_counter() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let headers: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let line = format!("X-Long: {}\r\n", "a".repeat(60_000));
    // 500 values of 14 bytes: under the 8 KiB line limit, over 64 Via.
    let one_via = vec!["SIP/2.0/UDP h"; 500];
    let one_via = format!("Via: {}\r\n", one_via.join(","));
    let vias: String = (0..65)
        .map(|i| format!("Via: SIP/2.0/UDP h{i}\r\n"))
        .collect();
    let cases = [
        (
            invite_with("l1", &headers),
            Limit::Headers,
            400,
            "Too Many Headers",
        ),
        (
            invite_with("l2", &line),
            Limit::HeaderLineBytes,
            400,
            "Header Too Long",
        ),
        (
            invite_with("l3", &one_via),
            Limit::ViaValues,
            400,
            "Too Many Via",
        ),
        (
            invite_with("l4", &vias),
            Limit::ViaValues,
            400,
            "Too Many Via",
        ),
    ];
    for (i, (text, limit, code, reason)) in cases.iter().enumerate() {
        assert_eq!(lab.recv(CALLER, text), Outcome::Replied, "case {i}");
        let out = lab.one();
        assert_eq!((out.code(), out.to().as_str()), (*code, CALLER), "case {i}");
        assert!(out.text.contains(reason), "case {i}: {}", out.text);
        assert!(lab.proxy.counters().limits.get(*limit) > 0, "case {i}");
    }
    // Past datagram_bytes_max: dropped, not answered (UDP itself stops
    // at 65,507 bytes, so only a smaller configured limit is reachable).
    let big = invite("l5").replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Length: 70000\r\n\r\n{}", "v".repeat(70_000)),
    );
    assert_eq!(
        lab.recv(CALLER, &big),
        Outcome::Dropped(DropReason::Malformed(Fault::TooLarge))
    );
    assert!(lab.take().is_empty());
    let limits = lab.proxy.counters().limits;
    assert_eq!(
        Limit::ALL.map(|l| limits.get(l)),
        [1, 1, 1, 2, 0, 0],
        "{limits:?}"
    );
    assert_eq!(lab.proxy.transactions(), (0, 0));
}

#[test]
fn limits_of_a_smaller_configuration_count_too() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    lab.proxy = Setup {
        limits: Limits {
            datagram_bytes_max: 200,
            ..Limits::default()
        },
        backends: addresses(&[BACKEND_A]),
        seed: 7,
        ..Setup::default()
    }
    .proxy();
    assert_eq!(
        lab.recv(CALLER, &invite("s1")),
        Outcome::Dropped(DropReason::Malformed(Fault::TooLarge))
    );
    assert_eq!(lab.proxy.counters().limits.get(Limit::DatagramBytes), 1);
    assert_eq!(lab.proxy.counters().dropped_malformed, 1);
}

/// The transaction defaults, but UDP carrying requests up to the
/// largest datagram (§18.1.1's 1,300 bytes lifted): the UDP bounds alone.
fn datagrams_up_to_the_max() -> TxnConfig {
    TxnConfig {
        udp_request_bytes_max: UDP_PAYLOAD_MAX,
        ..TxnConfig::default()
    }
}

/// `invite(call_id)` grown to `total` bytes with a body.
fn invite_of_size(call_id: &str, total: usize) -> String {
    let head = invite(call_id).len() - "Content-Length: 0\r\n\r\n".len();
    // "Content-Length: NNNNN\r\n\r\n" is 25 bytes for a five-digit length.
    let body = total - head - 25;
    let text = invite(call_id).replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Length: {body}\r\n\r\n{}", "v".repeat(body)),
    );
    assert_eq!(text.len(), total);
    text
}

/// A request that UDP carries to us but that our Via and Record-Route
/// would push past what UDP carries on: it used to get 100 Trying and
/// then nothing (the caller waits in Proceeding with no timer), or, a
/// few bytes smaller, be written and refused by the kernel on every
/// retransmission until Timer B. Now: 513 from its transaction.
#[test]
fn a_request_too_large_to_forward_gets_513_not_silence() {
    let mut lab = Lab::with(
        Algorithm::RoundRobin,
        datagrams_up_to_the_max(),
        &[BACKEND_A],
    );
    // Fits once forwarded (about 160 bytes more): forwarded whole.
    let fits = invite_of_size("f1", UDP_PAYLOAD_MAX - 200);
    assert_eq!(lab.recv(CALLER, &fits), Outcome::Forwarded);
    let sent = lab.take();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        (sent[1].to().as_str(), sent[1].method()),
        (BACKEND_A, "INVITE")
    );
    assert!(sent[1].text.len() <= UDP_PAYLOAD_MAX);

    // 140 under: about 10 bytes over once forwarded, which the kernel
    // used to refuse; at the maximum: past the buffer itself.
    for (i, total) in [UDP_PAYLOAD_MAX - 140, UDP_PAYLOAD_MAX]
        .into_iter()
        .enumerate()
    {
        let call_id = format!("big{i}");
        let text = invite_of_size(&call_id, total);
        assert_eq!(lab.recv(CALLER, &text), Outcome::Replied);
        let sent = lab.take();
        let codes: Vec<_> = sent.iter().map(|s| (s.code(), s.to())).collect();
        assert_eq!(
            codes,
            [(100, CALLER.into()), (513, CALLER.into())],
            "{total}"
        );
        assert!(sent[1]
            .text
            .starts_with("SIP/2.0 513 Message Too Large\r\n"));
        // A retransmission gets the 513 again; the ACK is absorbed.
        assert_eq!(lab.recv(CALLER, &text), Outcome::Absorbed);
        assert_eq!(lab.one().code(), 513);
        assert_eq!(
            lab.recv(CALLER, &ack_for(&call_id, &sent[1])),
            Outcome::Absorbed
        );
        assert!(lab.take().is_empty());
    }
    // A non-INVITE gets no 100, only the 513.
    let message = invite_of_size("m1", UDP_PAYLOAD_MAX - 2)
        .replace("INVITE sip:", "MESSAGE sip:")
        .replace("1 INVITE", "1 MESSAGE");
    assert_eq!(lab.recv(CALLER, &message), Outcome::Replied);
    assert_eq!(lab.one().code(), 513);
    assert_eq!(lab.proxy.counters().limits.get(Limit::UdpPayload), 3);
    // Nothing is left behind once the timers run out.
    lab.advance(70_000);
    lab.take();
    assert_eq!(lab.proxy.transactions(), (0, 0));
}

/// Failed tries linger in the client table (Timer D, 32 s), which holds
/// twice as many as the server table: a caller whose INVITEs every
/// backend refuses can fill it while server transactions are free. A new
/// request then got 100 Trying and nothing more; it gets 503 at once.
#[test]
fn a_full_client_table_answers_503_not_silence() {
    let config = TxnConfig {
        max_transactions: 2,
        ..TxnConfig::default()
    };
    let mut lab = Lab::with(
        Algorithm::RoundRobin,
        config,
        &[BACKEND_A, BACKEND_B, BACKEND_C],
    );
    // Two calls refused by all three backends: six failed tries, four of
    // which fit in the client table (the fourth try stops the second call).
    for call in ["r1", "r2"] {
        assert_eq!(lab.recv(CALLER, &invite(call)), Outcome::Forwarded);
        let mut forwarded: Vec<Sent> = lab.take().into_iter().filter(|s| s.code() == 0).collect();
        while let Some(try_) = forwarded.pop() {
            lab.recv(&try_.to(), &try_.answer(503, Some("busy")));
            for sent in lab.take() {
                match sent.code() {
                    0 if sent.method() == "INVITE" => forwarded.push(sent),
                    // Every backend's 503 reaches the caller as 500 (§16.7).
                    500 => {
                        assert_eq!(lab.recv(CALLER, &ack_for(call, &sent)), Outcome::Absorbed)
                    }
                    _ => {}
                }
            }
        }
    }
    // Timer I frees the server transactions; Timer D keeps the tries.
    lab.advance(6_000);
    lab.take();
    let (servers, clients) = lab.proxy.transactions();
    assert_eq!((servers, clients), (0, 4));
    assert_eq!(lab.recv(CALLER, &invite("r3")), Outcome::Replied);
    let busy = lab.one();
    assert_eq!(busy.code(), 503);
    assert_eq!(busy.header("Retry-After"), Some("5"));
    assert_eq!(lab.proxy.counters().limits.get(Limit::Transactions), 1);
    assert_eq!(lab.proxy.counters().overload_rejected, 1);
    // Once Timer D lets the tries go, calls go through again.
    lab.advance(40_000);
    lab.take();
    assert_eq!(lab.recv(CALLER, &invite("r4")), Outcome::Forwarded);
}

/// A NUL or a lone CR in a header the proxy does not parse used to be
/// copied to the backend byte for byte: a C parser there stops at the NUL,
/// and one that ends lines at a lone CR (PJSIP, Sofia-SIP do) reads the
/// rest as a header of its own. Now the request gets 400 at its source.
#[test]
fn control_characters_are_answered_400_and_never_forwarded() {
    let mut lab = Lab::with(
        Algorithm::RoundRobin,
        datagrams_up_to_the_max(),
        &[BACKEND_A],
    );
    let cases = [
        invite_with("n1", "X-Nul: a\0b\r\n"),
        invite_with(
            "n2",
            "X-Cr: a\rVia: SIP/2.0/UDP 203.0.113.66;branch=z9hG4bKevil\r\n",
        ),
        invite("n3").replace("<sip:alice@", "<sip:al\0ice@"),
        invite("n4").replace("INVITE sip:+1555", "INVITE sip:+1\x01555"),
    ];
    for text in &cases {
        assert_eq!(lab.recv(CALLER, text), Outcome::Replied, "{text:?}");
        let out = lab.one();
        assert_eq!((out.code(), out.to().as_str()), (400, CALLER), "{text:?}");
        assert!(
            out.text
                .starts_with("SIP/2.0 400 Bad Request - Control Character\r\n"),
            "{}",
            out.text
        );
    }
    // Escaped in a quoted display name it is legal (RFC 4475 intmeth).
    let quoted = invite("n5").replace("<sip:alice@", "\"al\\\0ice\" <sip:alice@");
    assert_eq!(lab.recv(CALLER, &quoted), Outcome::Forwarded);
    assert_eq!(lab.take().len(), 2);
    assert_eq!(lab.proxy.counters().replies, 4);
    assert_eq!(lab.proxy.counters().requests_forwarded, 1);
}

/// An ACK is never answered (§17): one with Max-Forwards 0 or a CSeq
/// naming another method is counted and dropped, where an INVITE with the
/// same fault gets its 483 or 400.
#[test]
fn a_bad_ack_is_dropped_not_answered() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let ack = request("ACK", "ack-bad", 1);
    let cases = [
        (
            ack.replace("Max-Forwards: 70", "Max-Forwards: 0"),
            Fault::MaxForwardsZero,
        ),
        (ack.replace("1 ACK", "1 INVITE"), Fault::CSeqMethod),
        (
            format!("\r\n{}", ack.replace("Max-Forwards: 70", "Max-Forwards: 0")),
            Fault::MaxForwardsZero,
        ),
    ];
    for (text, fault) in cases {
        assert_eq!(
            lab.recv(CALLER, &text),
            Outcome::Dropped(DropReason::Malformed(fault))
        );
        assert!(lab.take().is_empty(), "{text}");
    }
    let invite = invite("inv-bad").replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_eq!(lab.recv(CALLER, &invite), Outcome::Replied);
    assert_eq!(lab.one().code(), 483);
}
