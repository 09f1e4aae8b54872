//! The kit itself: the clock stops at each deadline, the builders write
//! what an RFC 3261 user agent writes, the outbox keeps what was sent.

use super::lab::*;
use super::{clock, message, Outbox};
use crate::balance::Algorithm;
use crate::proxy::{Outcome, Transmit};
use crate::txn::Millis;

#[test]
fn the_clock_stops_at_each_deadline_on_the_way_and_ends_at_the_end() {
    let mut deadlines = vec![5, 5, 30, 120];
    let mut now: Millis = 10;
    let mut ran = Vec::new();
    while let Some(at) = clock::step_toward(&mut now, 100, deadlines.first().copied()) {
        deadlines.remove(0);
        ran.push(at);
    }
    // A deadline already past runs now; one after the end waits.
    assert_eq!(ran, [10, 10, 30]);
    assert_eq!((now, deadlines), (100, vec![120]));
    assert_eq!(clock::step_toward(&mut now, 100, None), None);
    assert_eq!(now, 100);
}

#[test]
fn cancel_and_ack_change_the_method_and_the_to_only() {
    let invite = invite("c1");
    let cancel = invite
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("1 INVITE", "1 CANCEL");
    assert_eq!(message::cancel("c1"), cancel);
    let response = Sent {
        to: CALLER.parse().unwrap(),
        peer: CALLER.parse().unwrap(),
        text: message::response(&invite, 486, Some("b1")),
    };
    let ack = invite
        .replacen("INVITE sip", "ACK sip", 1)
        .replace("1 INVITE", "1 ACK")
        .replace(
            &format!("To: <sip:+15551230001@{LB}>"),
            &format!("To: <sip:+15551230001@{LB}>;tag=b1"),
        );
    assert_eq!(ack_for("c1", &response), ack);
    assert_eq!(
        message::caller_request(b"SIP/2.0 200 OK\r\n", b"ACK", None),
        None
    );
}

#[test]
fn a_response_copies_what_rfc_3261_says_and_keeps_a_tag() {
    let request = request("BYE", "c2", 2).replace(
        "Max-Forwards",
        "Record-Route: <sip:192.0.2.250:5060;lr>\r\nMax-Forwards",
    );
    let response = message::response(&request, 200, Some("b2"));
    assert_eq!(
        response,
        format!(
            "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bK-c2-BYE;rport\r\n\
Record-Route: <sip:192.0.2.250:5060;lr>\r\n\
To: <sip:+15551230001@{LB}>;tag=b2\r\n\
From: <sip:alice@example.com>;tag=f1\r\n\
Call-ID: c2\r\n\
CSeq: 2 BYE\r\n\
Content-Length: 0\r\n\r\n"
        )
    );
    let tagged = message::response(&response, 487, Some("other"));
    assert!(tagged.contains(";tag=b2\r\n") && !tagged.contains("other"));
    assert!(message::response_head(&request, 999, None).starts_with("SIP/2.0 999 Whatever\r\n"));
}

#[test]
fn the_outbox_keeps_every_datagram_in_order_and_reads_it_as_text() {
    let mut outbox = Outbox::default();
    for (to, text) in [
        (BACKEND_A, invite("c3")),
        (CALLER, "SIP/2.0 100 Trying\r\n".into()),
    ] {
        let bytes = text.as_bytes();
        outbox.buffer()[..bytes.len()].copy_from_slice(bytes);
        outbox.send(to.parse().unwrap(), bytes.len());
    }
    let sent = outbox.take();
    assert!(outbox.sent.is_empty());
    assert_eq!(
        (sent[0].to(), sent[0].method(), sent[0].code()),
        (BACKEND_A.into(), "INVITE", 0)
    );
    assert_eq!(sent[0].branch(), "z9hG4bK-c3-INVITE");
    assert_eq!(sent[0].header("Call-ID"), Some("c3"));
    assert_eq!(
        (sent[1].to(), sent[1].method(), sent[1].code()),
        (CALLER.into(), "", 100)
    );
}

#[test]
fn the_lab_forwards_to_its_backends_and_runs_timers_as_time_goes() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    assert_eq!(lab.recv(CALLER, &invite("c4")), Outcome::Forwarded);
    let sent = lab.take();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!((sent[0].code(), sent[1].method()), (100, "INVITE"));
    // Timer A: the INVITE again after T1.
    lab.advance(500);
    assert_eq!(lab.now, 500);
    assert_eq!(lab.one().method(), "INVITE");
    // Without backends there is no routing: nothing to forward to.
    let mut empty = Lab::with(Algorithm::RoundRobin, Default::default(), &[]);
    assert_ne!(empty.recv(CALLER, &invite("c5")), Outcome::Forwarded);
}
