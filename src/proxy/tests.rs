//! The proxy core's routing, driven with SIP bytes: requests out to the
//! pool and back along Route, responses back along Via, loops, and what is
//! dropped. Transaction behaviour is tested in `txn_tests`.

use super::*;
use crate::balance::Algorithm;
use crate::sip::{Fault, Peer, Via};
use crate::testkit::lab::*;
use crate::testkit::Outbox;

/// The request forwarded for an INVITE (after its 100 Trying).
fn forwarded_invite(lab: &mut Lab, call_id: &str) -> Sent {
    assert_eq!(lab.recv(CALLER, &invite(call_id)), Outcome::Forwarded);
    let sent = lab.take();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[0].code(), 100);
    assert_eq!(sent[0].to(), CALLER);
    sent[1].clone()
}

#[test]
fn initial_invite_goes_to_the_pool_with_record_route() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let out = forwarded_invite(&mut lab, "c1");
    assert!([BACKEND_A, BACKEND_B].contains(&out.to().as_str()));
    let text = &out.text;
    assert!(
        text.contains("\r\nRecord-Route: <sip:192.0.2.250:5060;lr>\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nVia: SIP/2.0/UDP 192.0.2.250:5060;branch=z9hG4bK"),
        "{text}"
    );
    assert!(
        text.contains(";rport=5070;received=198.51.100.7\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nMax-Forwards: 69\r\n"));
    assert_eq!(lab.proxy.counters().requests_forwarded, 1);
}

#[test]
fn round_robin_alternates_and_call_id_hash_sticks() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let first = forwarded_invite(&mut lab, "c1").to;
    let second = forwarded_invite(&mut lab, "c2").to;
    let third = forwarded_invite(&mut lab, "c3").to;
    assert_ne!(first, second);
    assert_eq!(first, third);

    let targets: Vec<_> = (0..20)
        .map(|i| {
            let mut lab = Lab::new(Algorithm::CallIdHash);
            forwarded_invite(&mut lab, &format!("call-{i}")).to
        })
        .collect();
    for (i, target) in targets.iter().enumerate() {
        let mut lab = Lab::new(Algorithm::CallIdHash);
        lab.now = 1000 * i as u64;
        assert_eq!(*target, forwarded_invite(&mut lab, &format!("call-{i}")).to);
    }
    assert!(
        targets.iter().any(|t| t.to_string() == BACKEND_A)
            && targets.iter().any(|t| t.to_string() == BACKEND_B)
    );
}

#[test]
fn each_try_gets_its_own_branch_in_our_format() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let one = forwarded_invite(&mut lab, "b1").branch();
    let two = forwarded_invite(&mut lab, "b2").branch();
    assert_ne!(one, two);
    for branch in [&one, &two] {
        let key = branch.strip_prefix("z9hG4bK").unwrap();
        assert_eq!(key.len(), 33, "{branch}");
        assert_eq!(&key[16..17], ".");
    }
}

#[test]
fn response_follows_the_via_back_to_the_caller() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let forwarded = forwarded_invite(&mut lab, "c4");
    let ringing = forwarded.answer(180, Some("b1"));
    assert_eq!(lab.recv(&forwarded.to(), &ringing), Outcome::Forwarded);
    let out = lab.one();
    assert_eq!(out.to(), CALLER, "received + rport");
    assert!(out.text.starts_with("SIP/2.0 180 Ringing\r\n"));
    let vias: Vec<_> = out.text.lines().filter(|l| l.starts_with("Via:")).collect();
    assert_eq!(
        vias,
        ["Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bK-c4-INVITE;rport=5070;received=198.51.100.7"],
        "ours is stripped"
    );
    assert_eq!(lab.proxy.counters().responses_forwarded, 1);
}

#[test]
fn responses_not_ours_or_for_us_are_dropped() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let foreign = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKx\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n";
    assert_eq!(
        lab.recv(BACKEND_A, foreign),
        Outcome::Dropped(DropReason::ResponseNotOurs)
    );
    let ours_only = foreign.replace("10.9.9.9", "192.0.2.250:5060");
    assert_eq!(
        lab.recv(BACKEND_A, &ours_only),
        Outcome::Dropped(DropReason::ResponseForUs)
    );
    assert_eq!(lab.proxy.counters().dropped_response_not_ours, 1);
    assert_eq!(lab.proxy.counters().dropped_response_for_us, 1);
    assert!(lab.take().is_empty());
}

#[test]
fn in_dialog_requests_are_loose_routed() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let bye = format!(
        "BYE sip:bob@10.0.0.2:5080 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bKbye1\r\n\
Max-Forwards: 70\r\nRoute: <sip:{LB}:5060;lr>\r\n\
To: <sip:+15551230001@{LB}>;tag=b1\r\nFrom: <sip:alice@example.com>;tag=f1\r\n\
Call-ID: c5\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(lab.recv(CALLER, &bye), Outcome::Forwarded);
    let out = lab.one();
    assert_eq!(
        out.to(),
        BACKEND_B,
        "to the Request-URI once our Route is popped"
    );
    assert!(!out.text.contains("Route:"), "{}", out.text);

    let two_routes = bye
        .replace(
            &format!("Route: <sip:{LB}:5060;lr>"),
            &format!("Route: <sip:{LB}:5060;lr>, <sip:10.0.0.9:5090;lr>"),
        )
        .replace("bye1", "bye2");
    assert_eq!(lab.recv(CALLER, &two_routes), Outcome::Forwarded);
    let out = lab.one();
    assert_eq!(out.to(), "10.0.0.9:5090");
    assert!(
        out.text.contains("\r\nRoute: <sip:10.0.0.9:5090;lr>\r\n"),
        "{}",
        out.text
    );

    let named = bye
        .replace("sip:bob@10.0.0.2:5080", "sip:bob@pbx.example.com")
        .replace("bye1", "bye3");
    assert_eq!(
        lab.recv(CALLER, &named),
        Outcome::Dropped(DropReason::UnresolvedNextHop)
    );
}

#[test]
fn ack_for_a_2xx_is_forwarded_statelessly_along_its_route() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let ack = format!(
        "ACK sip:bob@10.0.0.1:5080 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bKack2xx\r\n\
Max-Forwards: 70\r\nRoute: <sip:{LB}:5060;lr>\r\n\
To: <sip:+15551230001@{LB}>;tag=b1\r\nFrom: <sip:alice@example.com>;tag=f1\r\n\
Call-ID: c10\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(lab.recv(CALLER, &ack), Outcome::Forwarded);
    assert_eq!(lab.one().to(), BACKEND_A);
    assert_eq!(lab.proxy.transactions(), (0, 0), "ACK makes no transaction");
}

#[test]
fn a_request_that_comes_back_unchanged_is_a_loop() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let forwarded = forwarded_invite(&mut lab, "c6");
    let backend = forwarded.to();
    // The backend sends it straight back to us: same Request-URI, tags, CSeq.
    assert_eq!(lab.recv(&backend, &forwarded.text), Outcome::Replied);
    let out = lab.one();
    assert!(
        out.text.starts_with("SIP/2.0 482 Loop Detected\r\n"),
        "{}",
        out.text
    );
    // Sent to the packet's source at the top Via's sent-by port (no rport):
    // here the top Via is our own, 5060.
    let backend_ip = backend.split(':').next().unwrap();
    assert_eq!(out.to(), format!("{backend_ip}:5060"));
    assert_eq!(lab.proxy.counters().loops_detected, 1);

    // A spiral: the backend retargets the Request-URI and sends it back.
    let spiral = forwarded
        .text
        .replacen("INVITE sip:+15551230001@", "INVITE sip:+15559990000@", 1);
    assert_eq!(lab.recv(&backend, &spiral), Outcome::Forwarded);
}

#[test]
fn malformed_requests_are_answered_at_their_source_and_responses_dropped() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let zero = invite("c7").replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_eq!(lab.recv(CALLER, &zero), Outcome::Replied);
    let out = lab.one();
    assert_eq!(out.to(), CALLER);
    assert!(out.text.starts_with("SIP/2.0 483 Too Many Hops\r\n"));
    let bad = "SIP/2.0 2000 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n";
    assert!(matches!(
        lab.recv(BACKEND_A, bad),
        Outcome::Dropped(DropReason::Malformed(_))
    ));
    assert_eq!(
        lab.recv(CALLER, "\r\n\r\n"),
        Outcome::Dropped(DropReason::Malformed(Fault::Empty))
    );
    let no_via = "OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n";
    assert_eq!(
        lab.recv(CALLER, no_via),
        Outcome::Dropped(DropReason::Unanswerable)
    );
    assert_eq!(lab.proxy.counters().replies, 1);
    assert_eq!(lab.proxy.counters().dropped_malformed, 2);
    assert_eq!(lab.proxy.transactions(), (0, 0));
}

#[test]
fn reply_addresses_follow_rfc_3581() {
    let source: Peer = "203.0.113.9:40000".parse().unwrap();
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
fn stream_replies_go_back_over_their_connection() {
    use crate::sip::{FlowId, Transport};
    let source: Peer = "tcp:203.0.113.9:40000".parse().unwrap();
    let source = source.on(FlowId(9));
    // No rport, a sent-by port of its own: still the connection (§18.2.2).
    let via = Via::parse(b"SIP/2.0/TCP 10.1.1.1:5062;branch=z9hG4bK1").unwrap();
    assert_eq!(reply_address(&via, source), source);
    let via = Via::parse(b"SIP/2.0/TCP h.example.com;branch=z9hG4bK1;received=192.0.2.1").unwrap();
    assert_eq!(
        response_address(&via),
        Some(Peer::new(Transport::Tcp, "192.0.2.1:5060".parse().unwrap()))
    );
    let via = Via::parse(b"SIP/2.0/SCTP 192.0.2.1;branch=z9hG4bK1").unwrap();
    assert_eq!(response_address(&via), None, "not a transport we speak");
}

#[test]
fn no_backend_is_counted() {
    let mut p = Setup {
        backends: vec![],
        seed: 1,
        ..Setup::default()
    }
    .proxy();
    let mut outbox = Outbox::default();
    let outcome = p.handle(
        0,
        CALLER.parse().unwrap(),
        invite("c8").as_bytes(),
        &mut outbox,
    );
    assert_eq!(outcome, Outcome::Dropped(DropReason::NoBackend));
    assert_eq!(p.counters().dropped_no_backend, 1);
    assert!(outbox.sent.is_empty());
}

#[test]
fn an_answered_call_counts_on_its_backend_until_its_bye_and_gives_a_round_trip() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    assert_eq!(lab.recv(CALLER, &invite("d1")), Outcome::Forwarded);
    let sent = lab.take();
    let forwarded = sent[1].clone();
    let backend = forwarded.to();
    let routing = lab.proxy.routing().unwrap().clone();
    let set = routing.set(routing.default_set());
    let member = set
        .members
        .iter()
        .find(|m| m.address.to_string() == backend)
        .unwrap();
    assert_eq!(member.health.latency_ewma_us(), None);
    lab.advance(30);
    assert_eq!(
        lab.recv(&backend, &forwarded.answer(180, Some("t1"))),
        Outcome::Forwarded
    );
    assert_eq!(
        member.health.latency_ewma_us(),
        Some(30_000),
        "the first answer is the round trip"
    );
    assert_eq!(
        member.health.active_dialogs(),
        0,
        "ringing is not a dialog yet"
    );
    assert_eq!(
        lab.recv(&backend, &forwarded.answer(200, Some("t1"))),
        Outcome::Forwarded
    );
    assert_eq!(member.health.active_dialogs(), 1);
    assert_eq!(lab.proxy.dialogs(), 1);
    lab.take();
    let bye = request("BYE", "d1", 2).replace(
        &format!("To: <sip:+15551230001@{LB}>"),
        &format!("To: <sip:+15551230001@{LB}>;tag=t1"),
    );
    assert_eq!(lab.recv(CALLER, &bye), Outcome::Forwarded);
    assert_eq!(member.health.active_dialogs(), 0, "the BYE ends it");
    assert_eq!(lab.proxy.dialogs(), 0);
}

#[test]
fn a_set_with_every_member_down_or_draining_answers_503_at_once() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let routing = lab.proxy.routing().unwrap().clone();
    let set = routing.set(routing.default_set());
    set.members[0].health.set_state(crate::balance::State::Down);
    set.members[1]
        .health
        .set_state(crate::balance::State::Draining);
    assert_eq!(lab.recv(CALLER, &invite("down1")), Outcome::Replied);
    let answer = lab.one();
    assert_eq!((answer.code(), answer.to().as_str()), (503, CALLER));
    assert!(answer.header("Retry-After").is_some(), "{answer:#?}");
    assert_eq!(lab.proxy.counters().unavailable_rejected, 1);
    assert_eq!(lab.proxy.transactions(), (0, 0), "nothing waits on a timer");
    // A draining member still takes what is not a new dialog.
    let in_dialog = request("BYE", "down0", 2).replace(
        &format!("To: <sip:+15551230001@{LB}>"),
        &format!("To: <sip:+15551230001@{LB}>;tag=t9"),
    );
    assert_eq!(lab.recv(CALLER, &in_dialog), Outcome::Forwarded);
    assert_eq!(lab.one().to(), set.members[1].address.to_string());
    // Back up: new calls flow again.
    set.members[0].health.set_state(crate::balance::State::Up);
    assert_eq!(lab.recv(CALLER, &invite("down2")), Outcome::Forwarded);
}

/// Overload control (issue #7): while the shard says it is overloaded, new
/// INVITEs and REGISTERs get 503 with Retry-After up to the budget and are
/// dropped past it; an admitted call's in-dialog requests, responses and
/// CANCELs still flow; the caller's ACK for our 503 goes nowhere.
#[test]
fn overloaded_sheds_new_invites_and_registers_but_admitted_calls_go_on() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    // A call admitted before the overload.
    assert_eq!(lab.recv(CALLER, &invite("early")), Outcome::Forwarded);
    let sent = lab.take();
    let forwarded = sent
        .iter()
        .find(|s| s.method() == "INVITE")
        .unwrap()
        .clone();
    let backend = forwarded.to();

    lab.proxy.set_admission(0.0, 2, lab.now);
    for (i, method) in ["INVITE", "REGISTER"].into_iter().enumerate() {
        let call_id = format!("shed{i}");
        assert_eq!(
            lab.recv(CALLER, &request(method, &call_id, 1)),
            Outcome::Replied
        );
        let answer = lab.one();
        assert_eq!((answer.code(), answer.to()), (503, CALLER.to_string()));
        assert!(answer.header("Retry-After").is_some(), "{}", answer.text);
        if method == "INVITE" {
            // Its ACK is absorbed, not sent to a backend that never saw it.
            assert_eq!(
                lab.recv(CALLER, &ack_for(&call_id, &answer)),
                Outcome::Absorbed
            );
            assert!(lab.take().is_empty());
        }
    }
    // The budget (2 a second) is spent: the next new INVITE is dropped.
    assert_eq!(
        lab.recv(CALLER, &invite("shed2")),
        Outcome::Dropped(DropReason::Overloaded)
    );
    assert!(lab.take().is_empty());
    // Other new requests still pass (an OPTIONS), and so does the
    // admitted call: its 200 goes up, its BYE goes down.
    assert_eq!(
        lab.recv(CALLER, &request("OPTIONS", "o1", 1)),
        Outcome::Forwarded
    );
    lab.take();
    assert_eq!(
        lab.recv(&backend, &forwarded.answer(200, Some("uas"))),
        Outcome::Forwarded
    );
    assert_eq!(lab.one().code(), 200);
    let bye = request("BYE", "early", 2).replace(
        &format!("To: <sip:+15551230001@{LB}>"),
        &format!("To: <sip:+15551230001@{LB}>;tag=uas"),
    );
    assert_eq!(lab.recv(CALLER, &bye), Outcome::Forwarded);
    assert_eq!(lab.one().method(), "BYE");
    // A second later the budget has refilled.
    lab.advance(1_000);
    lab.take();
    assert_eq!(lab.recv(CALLER, &invite("shed3")), Outcome::Replied);
    assert_eq!(lab.one().code(), 503);
    let c = lab.proxy.counters();
    assert_eq!(
        (c.shed_rejected, c.shed_dropped, c.local_acks_absorbed),
        (3, 1, 1)
    );
    // Out of overload: new calls are admitted again.
    lab.proxy.set_admission(1.0, 2, lab.now);
    assert_eq!(lab.recv(CALLER, &invite("late")), Outcome::Forwarded);
}
