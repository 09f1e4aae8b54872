//! Hostile input through the proxy core: every limit answers as the
//! README says and moves its own counter, and what cannot be forwarded
//! whole is answered instead of forwarded in part or dropped in silence.

use super::lab::*;
use super::*;
use crate::sip::Limits;

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
    lab.proxy = Proxy::new(
        Scanner::new(Limits {
            datagram_bytes_max: 200,
            ..Limits::default()
        }),
        LocalAddress::new(LB, 5060),
        vec![BACKEND_A.parse().unwrap()],
        Algorithm::RoundRobin,
        TxnConfig::default(),
        0,
        7,
    );
    assert_eq!(
        lab.recv(CALLER, &invite("s1")),
        Outcome::Dropped(DropReason::Malformed(Fault::TooLarge))
    );
    assert_eq!(lab.proxy.counters().limits.get(Limit::DatagramBytes), 1);
    assert_eq!(lab.proxy.counters().dropped_malformed, 1);
}
