//! The proxy core driven with SIP bytes: requests out to the pool and back
//! along Route, responses back along Via, loops, and what is dropped.

use super::*;
use crate::sip::Limits;

const LB: &str = "192.0.2.250";
const BACKEND_A: &str = "10.0.0.1:5080";
const BACKEND_B: &str = "10.0.0.2:5080";
const CALLER: &str = "198.51.100.7:5070";

fn proxy(algorithm: Algorithm) -> Proxy {
    Proxy::new(
        Scanner::new(Limits::default()),
        LocalAddress::new(LB, 5060),
        vec![BACKEND_A.parse().unwrap(), BACKEND_B.parse().unwrap()],
        algorithm,
    )
}

fn invite(call_id: &str) -> String {
    format!(
        "INVITE sip:+15551230001@{LB} SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bK-{call_id};rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:+15551230001@{LB}>\r\n\
From: <sip:alice@example.com>;tag=f1\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@198.51.100.7:5070>\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// Runs one datagram; returns the action and the bytes it wrote.
fn run(proxy: &mut Proxy, from: &str, datagram: &str) -> (Action, String) {
    let mut out = vec![0u8; 4096];
    let action = proxy.handle(from.parse().unwrap(), datagram.as_bytes(), &mut out);
    let len = match action {
        Action::Forward { len, .. } | Action::Reply { len, .. } => len,
        Action::Drop(_) => 0,
    };
    (action, String::from_utf8(out[..len].to_vec()).unwrap())
}

fn destination(action: Action) -> SocketAddr {
    match action {
        Action::Forward { to, .. } | Action::Reply { to, .. } => to,
        Action::Drop(reason) => panic!("dropped: {reason:?}"),
    }
}

#[test]
fn initial_invite_goes_to_the_pool_with_record_route() {
    let mut p = proxy(Algorithm::RoundRobin);
    let (action, out) = run(&mut p, CALLER, &invite("c1"));
    assert!(matches!(action, Action::Forward { .. }));
    assert!([BACKEND_A, BACKEND_B].contains(&destination(action).to_string().as_str()));
    assert!(
        out.contains("\r\nRecord-Route: <sip:192.0.2.250:5060;lr>\r\n"),
        "{out}"
    );
    assert!(
        out.contains("\r\nVia: SIP/2.0/UDP 192.0.2.250:5060;branch=z9hG4bK"),
        "{out}"
    );
    assert!(
        out.contains(";rport=5070;received=198.51.100.7\r\n"),
        "{out}"
    );
    assert!(out.contains("\r\nMax-Forwards: 69\r\n"));
    assert_eq!(p.counters().requests_forwarded, 1);
}

#[test]
fn round_robin_alternates_and_call_id_hash_sticks() {
    let mut p = proxy(Algorithm::RoundRobin);
    let first = destination(run(&mut p, CALLER, &invite("c1")).0);
    let second = destination(run(&mut p, CALLER, &invite("c2")).0);
    let third = destination(run(&mut p, CALLER, &invite("c3")).0);
    assert_ne!(first, second);
    assert_eq!(first, third);

    let mut p = proxy(Algorithm::CallIdHash);
    let targets: Vec<_> = (0..20)
        .map(|i| destination(run(&mut p, CALLER, &invite(&format!("call-{i}"))).0))
        .collect();
    for (i, target) in targets.iter().enumerate() {
        assert_eq!(
            *target,
            destination(run(&mut p, CALLER, &invite(&format!("call-{i}"))).0)
        );
    }
    assert!(
        targets.iter().any(|t| t.to_string() == BACKEND_A)
            && targets.iter().any(|t| t.to_string() == BACKEND_B)
    );
}

#[test]
fn retransmission_gets_the_same_branch_and_cancel_follows_the_invite() {
    let mut p = proxy(Algorithm::CallIdHash);
    let (a1, out1) = run(&mut p, CALLER, &invite("c9"));
    let (a2, out2) = run(&mut p, CALLER, &invite("c9"));
    assert_eq!(out1, out2, "a retransmission is forwarded identically");
    let cancel = invite("c9")
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL");
    let (a3, out3) = run(&mut p, CALLER, &cancel);
    assert_eq!(destination(a1), destination(a3));
    assert_eq!(destination(a1), destination(a2));
    let branch = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("Via: SIP/2.0/UDP 192.0.2.250"))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        branch(&out1),
        branch(&out3),
        "CANCEL carries the INVITE's branch (RFC 3261 §9.1)"
    );
    assert!(!out3.contains("Record-Route"));
}

#[test]
fn response_follows_the_via_back_to_the_caller() {
    let mut p = proxy(Algorithm::RoundRobin);
    let (action, forwarded) = run(&mut p, CALLER, &invite("c4"));
    let backend = destination(action).to_string();
    // The backend answers: it copies the Vias (ours on top) and the headers.
    let request_head = forwarded.split("\r\n\r\n").next().unwrap();
    let vias: Vec<&str> = request_head
        .lines()
        .filter(|l| l.starts_with("Via:"))
        .collect();
    let ringing = format!(
        "SIP/2.0 180 Ringing\r\n{}\r\nRecord-Route: <sip:192.0.2.250:5060;lr>\r\n\
To: <sip:+15551230001@{LB}>;tag=b1\r\nFrom: <sip:alice@example.com>;tag=f1\r\n\
Call-ID: c4\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        vias.join("\r\n")
    );
    let (action, out) = run(&mut p, &backend, &ringing);
    assert_eq!(
        destination(action),
        CALLER.parse().unwrap(),
        "received + rport"
    );
    assert!(
        out.starts_with("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 198.51.100.7:5070;"),
        "{out}"
    );
    assert_eq!(p.counters().responses_forwarded, 1);
}

#[test]
fn responses_not_ours_or_for_us_are_dropped() {
    let mut p = proxy(Algorithm::RoundRobin);
    let foreign = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKx\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n";
    assert_eq!(
        run(&mut p, BACKEND_A, foreign).0,
        Action::Drop(DropReason::ResponseNotOurs)
    );
    let ours_only = foreign.replace("10.9.9.9", "192.0.2.250:5060");
    assert_eq!(
        run(&mut p, BACKEND_A, &ours_only).0,
        Action::Drop(DropReason::ResponseForUs)
    );
    assert_eq!(p.counters().dropped_response_not_ours, 1);
    assert_eq!(p.counters().dropped_response_for_us, 1);
}

#[test]
fn in_dialog_requests_are_loose_routed() {
    let mut p = proxy(Algorithm::RoundRobin);
    let bye = format!(
        "BYE sip:bob@10.0.0.2:5080 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bKbye1\r\n\
Max-Forwards: 70\r\nRoute: <sip:{LB}:5060;lr>\r\n\
To: <sip:+15551230001@{LB}>;tag=b1\r\nFrom: <sip:alice@example.com>;tag=f1\r\n\
Call-ID: c5\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let (action, out) = run(&mut p, CALLER, &bye);
    assert_eq!(
        destination(action).to_string(),
        BACKEND_B,
        "to the Request-URI once our Route is popped"
    );
    assert!(!out.contains("Route:"), "{out}");
    assert!(!out.contains("Record-Route"));

    let two_routes = bye.replace(
        &format!("Route: <sip:{LB}:5060;lr>"),
        &format!("Route: <sip:{LB}:5060;lr>, <sip:10.0.0.9:5090;lr>"),
    );
    let (action, out) = run(&mut p, CALLER, &two_routes);
    assert_eq!(destination(action).to_string(), "10.0.0.9:5090");
    assert!(
        out.contains("\r\nRoute: <sip:10.0.0.9:5090;lr>\r\n"),
        "{out}"
    );

    let named = bye.replace("sip:bob@10.0.0.2:5080", "sip:bob@pbx.example.com");
    assert_eq!(
        run(&mut p, CALLER, &named).0,
        Action::Drop(DropReason::UnresolvedNextHop)
    );
}

#[test]
fn a_request_that_comes_back_unchanged_is_a_loop() {
    let mut p = proxy(Algorithm::RoundRobin);
    let (action, forwarded) = run(&mut p, CALLER, &invite("c6"));
    let backend = destination(action).to_string();
    // The backend sends it straight back to us: same Request-URI, tags, CSeq.
    let (action, out) = run(&mut p, &backend, &forwarded);
    assert!(matches!(action, Action::Reply { .. }), "{action:?}");
    assert!(out.starts_with("SIP/2.0 482 Loop Detected\r\n"), "{out}");
    // Sent to the packet's source at the top Via's sent-by port (no rport):
    // here the top Via is our own, 5060.
    let backend_ip = backend.split(':').next().unwrap();
    assert_eq!(
        destination(action).to_string(),
        format!("{backend_ip}:5060")
    );
    assert_eq!(p.counters().loops_detected, 1);

    // A spiral: the backend retargets the Request-URI and sends it back.
    let spiral = forwarded.replacen("INVITE sip:+15551230001@", "INVITE sip:+15559990000@", 1);
    assert!(matches!(
        run(&mut p, &backend, &spiral).0,
        Action::Forward { .. }
    ));
}

#[test]
fn malformed_requests_are_answered_at_their_source_and_responses_dropped() {
    let mut p = proxy(Algorithm::RoundRobin);
    let zero = invite("c7").replace("Max-Forwards: 70", "Max-Forwards: 0");
    let (action, out) = run(&mut p, CALLER, &zero);
    assert_eq!(destination(action), CALLER.parse().unwrap());
    assert!(out.starts_with("SIP/2.0 483 Too Many Hops\r\n"));
    let bad = "SIP/2.0 2000 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n";
    assert!(matches!(
        run(&mut p, BACKEND_A, bad).0,
        Action::Drop(DropReason::Malformed(_))
    ));
    assert_eq!(
        run(&mut p, CALLER, "\r\n\r\n").0,
        Action::Drop(DropReason::Malformed(Fault::Empty))
    );
    let no_via = "OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n";
    assert_eq!(
        run(&mut p, CALLER, no_via).0,
        Action::Drop(DropReason::Unanswerable)
    );
    assert_eq!(p.counters().replies, 1);
    assert_eq!(p.counters().dropped_malformed, 2);
}

#[test]
fn reply_addresses_follow_rfc_3581() {
    let source: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let via = Via::parse(b"SIP/2.0/UDP 10.1.1.1:5062;branch=z9hG4bK1;rport").unwrap();
    assert_eq!(reply_address(&via, source), source);
    let via = Via::parse(b"SIP/2.0/UDP 10.1.1.1:5062;branch=z9hG4bK1").unwrap();
    assert_eq!(
        reply_address(&via, source),
        "203.0.113.9:5062".parse().unwrap()
    );
    let via =
        Via::parse(b"SIP/2.0/UDP h.example.com;branch=z9hG4bK1;received=192.0.2.1;rport=7000")
            .unwrap();
    assert_eq!(
        response_address(&via),
        Some("192.0.2.1:7000".parse().unwrap())
    );
    let via = Via::parse(b"SIP/2.0/UDP h.example.com;branch=z9hG4bK1").unwrap();
    assert_eq!(response_address(&via), None);
}

#[test]
fn no_backend_is_counted() {
    let mut p = Proxy::new(
        Scanner::new(Limits::default()),
        LocalAddress::new(LB, 5060),
        Vec::new(),
        Algorithm::RoundRobin,
    );
    assert_eq!(
        run(&mut p, CALLER, &invite("c8")).0,
        Action::Drop(DropReason::NoBackend)
    );
    assert_eq!(p.counters().dropped_no_backend, 1);
}
