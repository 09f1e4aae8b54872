//! The proxy's use of transactions, driven with SIP bytes and a fake
//! clock: every transition of RFC 3261 figures 5 to 8 (with RFC 6026's
//! Accepted), every timer, CANCEL races and failover order. The state
//! machines alone are tested beside them in `crate::txn`.

use super::{Limit, Outcome};
use crate::balance::Algorithm;
use crate::testkit::lab::*;
use crate::txn::TxnConfig;

fn one_backend() -> Lab {
    Lab::with(Algorithm::RoundRobin, TxnConfig::default(), &[BACKEND_A])
}

fn three_backends(config: TxnConfig) -> Lab {
    Lab::with(
        Algorithm::RoundRobin,
        config,
        &[BACKEND_A, BACKEND_B, BACKEND_C],
    )
}

/// Sends the caller's INVITE; returns the request forwarded to a backend.
fn start_invite(lab: &mut Lab, call_id: &str) -> Sent {
    assert_eq!(lab.recv(CALLER, &invite(call_id)), Outcome::Forwarded);
    let sent = lab.take();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!((sent[0].code(), sent[0].to().as_str()), (100, CALLER));
    assert_eq!(sent[1].method(), "INVITE");
    sent[1].clone()
}

/// The times (ms) of each datagram sent while the clock runs to `until`.
fn sends_until(lab: &mut Lab, until: u64) -> Vec<(u64, Sent)> {
    let mut out = Vec::new();
    while lab.now < until {
        lab.advance(1);
        for sent in lab.take() {
            out.push((lab.now, sent));
        }
    }
    out
}

/// The INVITE the per-try timer sends to another backend when it gives
/// `first` up at 2 s.
fn next_try_after_per_try_timer(lab: &mut Lab, first: &Sent) -> Sent {
    lab.advance(2_000);
    lab.take()
        .into_iter()
        .find(|s| s.method() == "INVITE" && s.to != first.to)
        .unwrap()
}

/// The one datagram among `sent` that goes upstream to the caller.
fn the_one_upstream(sent: &[Sent]) -> &Sent {
    let upstream: Vec<_> = sent.iter().filter(|s| s.to() == CALLER).collect();
    assert_eq!(upstream.len(), 1, "{sent:#?}");
    upstream[0]
}

/// Timer C fires 180 s on: its CANCEL goes to the try `fwd`, and with
/// no answer to it the caller gets 408 64·T1 later. Returns the CANCEL.
fn timer_c_cancels_then_408(lab: &mut Lab, fwd: &Sent) -> Sent {
    lab.advance(180_000);
    assert_eq!(lab.proxy.counters().timer_c_fired, 1);
    let cancel = lab.one();
    assert_eq!((cancel.method(), cancel.to), ("CANCEL", fwd.to));
    lab.advance(32_000);
    let sent = lab.take();
    assert!(
        sent.iter().any(|s| s.code() == 408 && s.to() == CALLER),
        "{sent:#?}"
    );
    cancel
}

/// Runs the clock past every wait state: no transaction and no timer
/// may be left.
fn assert_all_ended(lab: &mut Lab) {
    lab.advance(600_000);
    assert_eq!(lab.proxy.transactions(), (0, 0));
    assert_eq!(lab.proxy.next_deadline(), None, "no timer left");
}

// ---- INVITE server transaction (figure 7) ----

#[test]
fn invite_gets_100_at_once_and_a_retransmission_gets_it_again() {
    let mut lab = one_backend();
    start_invite(&mut lab, "s1");
    assert_eq!(lab.recv(CALLER, &invite("s1")), Outcome::Absorbed);
    let again = lab.one();
    assert_eq!((again.code(), again.to().as_str()), (100, CALLER));
    assert_eq!(lab.proxy.counters().retransmissions_absorbed, 1);
    assert_eq!(lab.proxy.transactions(), (1, 1));
}

#[test]
fn proceeding_resends_the_last_provisional_and_100_is_not_forwarded() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "s2");
    assert_eq!(
        lab.recv(BACKEND_A, &fwd.answer(100, None)),
        Outcome::Absorbed
    );
    assert!(lab.take().is_empty(), "a 100 is hop by hop (§16.7 step 3)");
    assert_eq!(
        lab.recv(BACKEND_A, &fwd.answer(180, Some("b"))),
        Outcome::Forwarded
    );
    assert_eq!(lab.one().code(), 180);
    lab.recv(CALLER, &invite("s2"));
    assert_eq!(lab.one().code(), 180, "the last provisional again");
}

#[test]
fn accepted_absorbs_invites_passes_2xx_and_ends_with_timer_l() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "s3");
    let ok = fwd.answer(200, Some("b"));
    assert_eq!(lab.recv(BACKEND_A, &ok), Outcome::Forwarded);
    assert_eq!(lab.one().code(), 200);
    assert_eq!(lab.recv(CALLER, &invite("s3")), Outcome::Absorbed);
    assert!(
        lab.take().is_empty(),
        "RFC 6026: a retransmitted INVITE is absorbed"
    );
    assert_eq!(lab.recv(BACKEND_A, &ok), Outcome::Forwarded);
    let again = lab.one();
    assert_eq!((again.code(), again.to().as_str()), (200, CALLER));
    lab.advance(31_999);
    assert_eq!(lab.proxy.transactions(), (1, 1));
    lab.advance(1);
    assert_eq!(lab.proxy.transactions(), (0, 0), "Timer L and Timer M");
    // Past the transactions, a 2xx retransmission still reaches the caller.
    assert_eq!(lab.recv(BACKEND_A, &ok), Outcome::Forwarded);
    assert_eq!(lab.one().to(), CALLER);
}

#[test]
fn completed_retransmits_with_timer_g_until_the_ack_then_timer_i() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "s4");
    assert_eq!(
        lab.recv(BACKEND_A, &fwd.answer(486, Some("b"))),
        Outcome::Forwarded
    );
    let sent = lab.take();
    let ack = sent.iter().find(|s| s.method() == "ACK").unwrap();
    let busy = sent.iter().find(|s| s.code() == 486).unwrap().clone();
    assert_eq!(ack.to(), BACKEND_A);
    // Timer G: T1, 2·T1, 4·T1, then T2 (RFC 3261 §17.2.1).
    let times: Vec<u64> = sends_until(&mut lab, 12_000)
        .into_iter()
        .map(|(t, s)| {
            assert_eq!((s.code(), s.to().as_str()), (486, CALLER));
            t
        })
        .collect();
    assert_eq!(times, [500, 1_500, 3_500, 7_500, 11_500]);
    // A retransmitted INVITE gets the final again.
    lab.recv(CALLER, &invite("s4"));
    assert_eq!(lab.one().code(), 486);
    assert_eq!(lab.recv(CALLER, &ack_for("s4", &busy)), Outcome::Absorbed);
    assert!(
        sends_until(&mut lab, 16_000).is_empty(),
        "Confirmed: no more"
    );
    assert_eq!(lab.recv(CALLER, &ack_for("s4", &busy)), Outcome::Absorbed);
    assert!(lab.take().is_empty());
    assert_eq!(lab.proxy.transactions().0, 1);
    lab.advance(5_000 - (16_000 - 12_000) + 1);
    assert_eq!(lab.proxy.transactions().0, 0, "Timer I (T4) ended it");
}

#[test]
fn timer_h_ends_a_final_never_acked() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "s5");
    lab.recv(BACKEND_A, &fwd.answer(404, Some("b")));
    lab.take();
    lab.advance(31_999);
    assert_eq!(lab.proxy.transactions().0, 1);
    lab.advance(1);
    assert_eq!(lab.proxy.transactions().0, 0);
    assert_eq!(lab.proxy.counters().ack_timeouts, 1);
}

// ---- INVITE client transaction (figure 5) ----

#[test]
fn timer_a_doubles_until_a_provisional() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "c1");
    let sent = sends_until(&mut lab, 4_000);
    let times: Vec<u64> = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [500, 1_500, 3_500]);
    assert!(sent
        .iter()
        .all(|(_, s)| s.text == fwd.text && s.to == fwd.to));
    lab.recv(BACKEND_A, &fwd.answer(100, None));
    assert!(sends_until(&mut lab, 20_000).is_empty(), "A stops on a 1xx");
}

#[test]
fn timer_b_times_out_with_408_when_nothing_is_left_to_try() {
    let mut lab = one_backend();
    start_invite(&mut lab, "c2");
    let sent = sends_until(&mut lab, 32_000);
    let last = &sent.last().unwrap().1;
    assert_eq!((last.code(), sent.last().unwrap().0), (408, 32_000));
    assert_eq!(last.to(), CALLER);
    assert_eq!(lab.proxy.counters().timeouts, 1);
    assert!(sent[..sent.len() - 1]
        .iter()
        .all(|(_, s)| s.method() == "INVITE"));
}

#[test]
fn a_non_2xx_final_is_acked_hop_by_hop_and_its_retransmissions_absorbed() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "c3");
    let busy = fwd.answer(486, Some("b7"));
    lab.recv(BACKEND_A, &busy);
    let sent = lab.take();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    let ack = sent.iter().find(|s| s.method() == "ACK").unwrap();
    assert_eq!(
        ack.branch(),
        fwd.branch(),
        "the ACK is in the INVITE's transaction"
    );
    assert!(ack.header("To").unwrap().ends_with(";tag=b7"));
    assert_eq!(ack.header("CSeq"), Some("1 ACK"));
    assert_eq!(ack.header("Call-ID"), Some("c3"));
    assert!(!ack.text.contains("Record-Route"));
    let forwarded = sent.iter().find(|s| s.code() == 486).unwrap();
    assert_eq!(forwarded.to(), CALLER);
    assert!(
        !forwarded.text.contains("192.0.2.250:5060;branch"),
        "our Via is off"
    );
    // Completed: the backend retransmits its 486, we ACK it again, the
    // caller does not hear it twice from the client side.
    assert_eq!(lab.recv(BACKEND_A, &busy), Outcome::Absorbed);
    let again = lab.one();
    assert_eq!(again.text, ack.text);
    // Timer D (32 s) ends the client transaction.
    lab.advance(32_001);
    assert_eq!(lab.proxy.transactions().1, 0);
}

#[test]
fn timer_c_cancels_a_call_that_rings_too_long() {
    let mut config = TxnConfig::default();
    config.timers.timer_c_ms = 60_000;
    let mut lab = Lab::with(Algorithm::RoundRobin, config, &[BACKEND_A]);
    let fwd = start_invite(&mut lab, "c4");
    lab.recv(BACKEND_A, &fwd.answer(180, Some("b")));
    lab.take();
    lab.advance(30_000);
    lab.recv(BACKEND_A, &fwd.answer(183, Some("b")));
    lab.take();
    let sent = sends_until(&mut lab, 90_000);
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0].0, 90_000, "Timer C restarts on each provisional");
    assert_eq!(sent[0].1.method(), "CANCEL");
    assert_eq!(sent[0].1.branch(), fwd.branch());
    lab.recv(BACKEND_A, &fwd.answer(487, Some("b")));
    let sent = lab.take();
    assert!(sent.iter().any(|s| s.code() == 487 && s.to() == CALLER));
    assert_eq!(lab.proxy.counters().timer_c_fired, 1);
}

// ---- non-INVITE transactions (figures 6 and 8) ----

#[test]
fn non_invite_timer_e_caps_at_t2_and_proceeding_retransmits_at_t2() {
    let mut lab = one_backend();
    assert_eq!(
        lab.recv(CALLER, &request("REGISTER", "n1", 1)),
        Outcome::Forwarded
    );
    let fwd = lab.one();
    assert_eq!(fwd.method(), "REGISTER", "no 100 for a non-INVITE");
    let times: Vec<u64> = sends_until(&mut lab, 16_000)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(times, [500, 1_500, 3_500, 7_500, 11_500, 15_500]);
    assert_eq!(
        lab.recv(CALLER, &request("REGISTER", "n1", 1)),
        Outcome::Absorbed
    );
    assert!(lab.take().is_empty(), "Trying: nothing to resend");
    lab.recv(BACKEND_A, &fwd.answer(100, None));
    let times: Vec<u64> = sends_until(&mut lab, 24_000)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(times, [19_500, 23_500], "Proceeding: every T2");
}

#[test]
fn non_invite_final_then_timers_j_and_k() {
    let mut lab = one_backend();
    lab.recv(CALLER, &request("OPTIONS", "n2", 1));
    let fwd = lab.one();
    assert_eq!(
        lab.recv(BACKEND_A, &fwd.answer(200, Some("b"))),
        Outcome::Forwarded
    );
    assert_eq!(lab.one().code(), 200);
    assert_eq!(
        lab.recv(CALLER, &request("OPTIONS", "n2", 1)),
        Outcome::Absorbed
    );
    assert_eq!(lab.one().code(), 200, "Completed resends the final");
    // The backend's retransmitted 200 is absorbed by the client (Completed).
    assert_eq!(
        lab.recv(BACKEND_A, &fwd.answer(200, Some("b"))),
        Outcome::Absorbed
    );
    assert!(lab.take().is_empty());
    lab.advance(5_000);
    assert_eq!(lab.proxy.transactions(), (1, 0), "Timer K (T4)");
    lab.advance(27_000);
    assert_eq!(lab.proxy.transactions(), (0, 0), "Timer J (64·T1)");
}

#[test]
fn non_invite_timer_f_fails_over_then_answers_408() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    lab.recv(CALLER, &request("REGISTER", "n3", 1));
    let first = lab.one();
    let sent = sends_until(&mut lab, 64_000);
    let tries: Vec<String> = sent
        .iter()
        .filter(|(_, s)| s.method() == "REGISTER")
        .map(|(_, s)| s.to())
        .collect();
    assert!(tries.contains(&first.to()));
    let other = if first.to() == BACKEND_A {
        BACKEND_B
    } else {
        BACKEND_A
    };
    assert!(
        tries.iter().any(|t| t == other),
        "F fails over to the other backend"
    );
    let last = &sent.last().unwrap();
    assert_eq!((last.0, last.1.code()), (64_000, 408));
    assert_eq!(lab.proxy.counters().failovers, 1);
}

// ---- CANCEL ----

#[test]
fn cancel_after_180_gets_200_and_the_487_comes_back() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "x1");
    lab.recv(BACKEND_A, &fwd.answer(180, Some("b")));
    lab.take();
    assert_eq!(lab.recv(CALLER, &cancel("x1")), Outcome::Replied);
    let sent = lab.take();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    let ok = sent.iter().find(|s| s.code() == 200).unwrap();
    assert_eq!(
        (ok.to().as_str(), ok.header("CSeq")),
        (CALLER, Some("1 CANCEL"))
    );
    let downstream = sent.iter().find(|s| s.method() == "CANCEL").unwrap();
    assert_eq!(downstream.to(), BACKEND_A);
    assert_eq!(downstream.branch(), fwd.branch());
    assert_eq!(downstream.header("CSeq"), Some("1 CANCEL"));
    // The backend answers the CANCEL (absorbed) and the INVITE with 487.
    assert_eq!(
        lab.recv(BACKEND_A, &downstream.answer(200, Some("b"))),
        Outcome::Absorbed
    );
    assert!(lab.take().is_empty());
    lab.recv(BACKEND_A, &fwd.answer(487, Some("b")));
    let sent = lab.take();
    assert!(sent
        .iter()
        .any(|s| s.method() == "ACK" && s.to() == BACKEND_A));
    assert!(sent.iter().any(|s| s.code() == 487 && s.to() == CALLER));
    // A retransmitted CANCEL gets its 200 again and sends nothing on.
    lab.recv(CALLER, &cancel("x1"));
    let again = lab.one();
    assert_eq!(again.code(), 200);
}

#[test]
fn cancel_before_the_backend_answers_waits_for_its_provisional() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "x2");
    lab.recv(CALLER, &cancel("x2"));
    let ok = lab.one();
    assert_eq!(
        ok.code(),
        200,
        "no CANCEL downstream before a provisional (§9.1)"
    );
    lab.recv(BACKEND_A, &fwd.answer(100, None));
    let downstream = lab.one();
    assert_eq!(
        (downstream.method(), downstream.to().as_str()),
        ("CANCEL", BACKEND_A)
    );
    lab.recv(BACKEND_A, &fwd.answer(487, Some("b")));
    assert!(lab
        .take()
        .iter()
        .any(|s| s.code() == 487 && s.to() == CALLER));
}

#[test]
fn cancel_of_a_silent_backend_answers_487_without_trying_others() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    start_invite(&mut lab, "x3");
    lab.recv(CALLER, &cancel("x3"));
    lab.take();
    let sent = sends_until(&mut lab, 32_000);
    assert!(sent
        .iter()
        .all(|(_, s)| s.method() != "INVITE" || s.to == sent[0].1.to));
    let last = &sent.last().unwrap().1;
    assert_eq!((last.code(), last.to().as_str()), (487, CALLER));
    assert_eq!(lab.proxy.counters().failovers, 0);
}

#[test]
fn cancel_crossing_a_200_lets_the_200_through() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "x4");
    lab.recv(BACKEND_A, &fwd.answer(180, Some("b")));
    lab.take();
    lab.recv(CALLER, &cancel("x4"));
    let downstream = lab
        .take()
        .into_iter()
        .find(|s| s.method() == "CANCEL")
        .unwrap();
    // The backend had already answered 200: it comes through, and the
    // CANCEL's own 200 is absorbed.
    assert_eq!(
        lab.recv(BACKEND_A, &fwd.answer(200, Some("b"))),
        Outcome::Forwarded
    );
    let ok = lab.one();
    assert_eq!((ok.code(), ok.to().as_str()), (200, CALLER));
    assert_eq!(ok.header("CSeq"), Some("1 INVITE"));
    assert_eq!(
        lab.recv(BACKEND_A, &downstream.answer(200, Some("b"))),
        Outcome::Absorbed
    );
    assert!(lab.take().is_empty());
    // A CANCEL after the call was answered still gets 200, and nothing more.
    lab.recv(CALLER, &cancel("x4"));
    assert_eq!(lab.one().code(), 200);
}

#[test]
fn cancel_with_no_invite_here_is_forwarded_statelessly() {
    let mut lab = Lab::new(Algorithm::CallIdHash);
    assert_eq!(lab.recv(CALLER, &cancel("x5")), Outcome::Forwarded);
    let sent = lab.one();
    assert_eq!(sent.method(), "CANCEL");
    assert_eq!(lab.proxy.transactions(), (0, 0));
}

/// A CANCEL with no INVITE here that can go nowhere (no backend, or a
/// next hop named by host name) is answered 481 (§9.2), not dropped in
/// silence while the caller retransmits it for 64·T1.
#[test]
fn cancel_with_no_invite_here_and_no_way_on_gets_481() {
    let mut lab = Lab::with(Algorithm::RoundRobin, TxnConfig::default(), &[]);
    assert_eq!(lab.recv(CALLER, &cancel("x6")), Outcome::Replied);
    let sent = lab.one();
    assert_eq!((sent.code(), sent.to().as_str()), (481, CALLER));

    let mut lab = one_backend();
    let named = cancel("x7").replacen(
        "Max-Forwards: 70\r\n",
        &format!("Max-Forwards: 70\r\nRoute: <sip:{LB}:5060;lr>, <sip:pbx.example.com;lr>\r\n"),
        1,
    );
    assert_eq!(lab.recv(CALLER, &named), Outcome::Replied);
    assert_eq!(lab.one().code(), 481);
    assert_eq!(lab.proxy.transactions(), (0, 0));
}

// ---- failover ----

#[test]
fn a_503_fails_over_and_the_next_backend_answers() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let first = start_invite(&mut lab, "f1");
    lab.recv(&first.to(), &first.answer(503, Some("b1")));
    let sent = lab.take();
    assert_eq!(sent.len(), 2, "the ACK and the next try: {sent:#?}");
    assert_eq!((sent[0].method(), sent[0].to()), ("ACK", first.to()));
    let second = &sent[1];
    assert_eq!(second.method(), "INVITE");
    assert_ne!(second.to, first.to);
    assert_ne!(second.branch(), first.branch(), "a new client transaction");
    lab.recv(&second.to(), &second.answer(200, Some("b2")));
    let ok = lab.one();
    assert_eq!((ok.code(), ok.to().as_str()), (200, CALLER));
    assert_eq!(lab.proxy.counters().failovers, 1);
}

#[test]
fn when_every_backend_fails_the_caller_gets_the_best_final() {
    let mut config = TxnConfig::default();
    config.failover_codes.push(404);
    let mut lab = three_backends(config);
    let mut tries = vec![start_invite(&mut lab, "f2")];
    for code in [503, 404, 500] {
        let last = tries.last().unwrap().clone();
        lab.recv(&last.to(), &last.answer(code, Some("b")));
        let sent = lab.take();
        if let Some(next) = sent.iter().find(|s| s.method() == "INVITE") {
            tries.push(next.clone());
        } else {
            let best = sent.iter().find(|s| s.to() == CALLER).unwrap();
            assert_eq!(best.code(), 404, "the lowest class wins (§16.7 step 6)");
        }
    }
    let mut order: Vec<String> = tries.iter().map(Sent::to).collect();
    assert_eq!(order.len(), 3, "each backend once");
    order.sort();
    order.dedup();
    assert_eq!(order.len(), 3);
}

/// §16.7 step 6: when every backend answered 503, the caller gets 500,
/// not a 503 (with the backends' Retry-After) that would tell it this
/// proxy cannot serve; a better final from any try still wins.
#[test]
fn a_503_from_every_backend_reaches_the_caller_as_500() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "s503");
    let busy = fwd
        .answer(503, Some("b"))
        .replace("Content-Length: 0", "Retry-After: 60\r\nContent-Length: 0");
    lab.recv(BACKEND_A, &busy);
    let sent = lab.take();
    let upstream = the_one_upstream(&sent);
    assert_eq!(upstream.code(), 500);
    assert_eq!(upstream.header("Retry-After"), None);
    assert!(sent.iter().any(|s| s.method() == "ACK" && s.to == fwd.to));

    let mut lab = three_backends(TxnConfig::default());
    let first = start_invite(&mut lab, "s486");
    lab.recv(&first.to(), &first.answer(503, Some("b")));
    let sent = lab.take();
    let second = sent.iter().find(|s| s.method() == "INVITE").unwrap();
    lab.recv(&second.to(), &second.answer(486, Some("b")));
    let sent = lab.take();
    assert!(
        sent.iter().any(|s| s.code() == 486 && s.to() == CALLER),
        "{sent:#?}"
    );
}

#[test]
fn a_dead_backend_costs_the_per_try_timer_not_timer_b() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let first = start_invite(&mut lab, "f3");
    let sent = sends_until(&mut lab, 2_000);
    let next: Vec<_> = sent.iter().filter(|(_, s)| s.to != first.to).collect();
    assert_eq!(next.len(), 1, "{sent:#?}");
    assert_eq!(next[0].0, 2_000);
    let second = next[0].1.clone();
    assert_eq!(second.method(), "INVITE");
    lab.recv(&second.to(), &second.answer(180, Some("b")));
    assert_eq!(lab.one().code(), 180);
    assert_eq!(lab.proxy.counters().try_timeouts, 1);
    // The first backend wakes up late and rings: it is cancelled, and the
    // caller hears nothing of it.
    lab.recv(&first.to(), &first.answer(180, Some("late")));
    let cancel = lab.one();
    assert_eq!((cancel.method(), cancel.to), ("CANCEL", first.to));
    lab.recv(&first.to(), &first.answer(487, Some("late")));
    let sent = lab.take();
    assert!(
        sent.iter().all(|s| s.to != CALLER.parse().unwrap()),
        "{sent:#?}"
    );
}

/// §16.7 steps 5 and 6 with a try given up on: its late 603 cancels the
/// try in progress and is what the caller gets (not that try's 487), and
/// its late 486 is remembered, so when every later try fails the caller
/// hears 486 and not a 500 made of the others' 503s.
#[test]
fn a_late_final_from_a_try_given_up_on_counts_for_the_best() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let first = start_invite(&mut lab, "late6");
    let second = next_try_after_per_try_timer(&mut lab, &first);
    lab.recv(&second.to(), &second.answer(180, Some("b")));
    assert_eq!(lab.one().code(), 180);
    lab.recv(&first.to(), &first.answer(603, Some("a")));
    let sent = lab.take();
    assert!(
        sent.iter()
            .any(|s| s.method() == "CANCEL" && s.to == second.to),
        "{sent:#?}"
    );
    assert!(sent.iter().all(|s| s.to() != CALLER), "{sent:#?}");
    lab.recv(&second.to(), &second.answer(487, Some("b")));
    let sent = lab.take();
    assert_eq!(the_one_upstream(&sent).code(), 603);

    let mut lab = Lab::new(Algorithm::RoundRobin);
    let first = start_invite(&mut lab, "late4");
    let second = next_try_after_per_try_timer(&mut lab, &first);
    lab.recv(&first.to(), &first.answer(486, Some("a")));
    assert!(lab.take().iter().all(|s| s.to() != CALLER));
    lab.recv(&second.to(), &second.answer(503, Some("b")));
    let sent = lab.take();
    assert_eq!(the_one_upstream(&sent).code(), 486);
}

/// With the client table full, the per-try timer used to give the try up
/// and, unable to start another, answer 408 at 2 s; the try now runs on
/// to Timer B, so a backend that is slow but alive still gets the call.
#[test]
fn a_full_client_table_leaves_a_slow_try_running() {
    let config = TxnConfig {
        max_transactions: 1,
        ..TxnConfig::default()
    };
    // A table of two tries: the first, given up on at 2 s, still holds
    // its slot, and the second fills the table.
    let mut lab = three_backends(config);
    let first = start_invite(&mut lab, "full1");
    let second = next_try_after_per_try_timer(&mut lab, &first);
    lab.advance(2_500);
    let sent = lab.take();
    assert!(sent.iter().all(|s| s.to() != CALLER), "{sent:#?}");
    assert_eq!(lab.proxy.counters().try_timeouts, 1);
    lab.recv(&second.to(), &second.answer(200, Some("b")));
    let sent = lab.take();
    assert!(
        sent.iter().any(|s| s.code() == 200 && s.to() == CALLER),
        "{sent:#?}"
    );
}

#[test]
fn an_icmp_error_fails_over_at_once() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let first = start_invite(&mut lab, "f4");
    lab.proxy
        .on_unreachable(lab.now, first.peer, &mut lab.outbox);
    let next = lab.one();
    assert_eq!(next.method(), "INVITE");
    assert_ne!(next.to, first.to);
    assert_eq!(lab.proxy.counters().unreachable, 1);
}

#[test]
fn no_failover_after_a_6xx_or_after_ringing_unless_asked() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let fwd = start_invite(&mut lab, "f5");
    lab.recv(&fwd.to(), &fwd.answer(603, Some("b")));
    assert!(lab
        .take()
        .iter()
        .any(|s| s.code() == 603 && s.to() == CALLER));

    let fwd = start_invite(&mut lab, "f6");
    lab.recv(&fwd.to(), &fwd.answer(180, Some("b")));
    lab.recv(&fwd.to(), &fwd.answer(503, Some("b")));
    let sent = lab.take();
    // The backend's 503 goes upstream as 500 (§16.7 step 6).
    assert!(
        sent.iter().any(|s| s.code() == 500 && s.to() == CALLER),
        "{sent:#?}"
    );
    assert!(sent.iter().all(|s| s.code() != 503), "{sent:#?}");

    let config = TxnConfig {
        failover_after_provisional: true,
        ..TxnConfig::default()
    };
    let mut lab = Lab::with(Algorithm::RoundRobin, config, &[BACKEND_A, BACKEND_B]);
    let fwd = start_invite(&mut lab, "f7");
    lab.recv(&fwd.to(), &fwd.answer(180, Some("b")));
    lab.recv(&fwd.to(), &fwd.answer(503, Some("b")));
    let sent = lab.take();
    assert!(
        sent.iter()
            .any(|s| s.method() == "INVITE" && s.to != fwd.to),
        "{sent:#?}"
    );
}

#[test]
fn in_dialog_requests_do_not_fail_over() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let bye = format!(
        "BYE sip:bob@10.0.0.2:5080 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bKbye9\r\n\
Max-Forwards: 70\r\nRoute: <sip:{LB}:5060;lr>\r\n\
To: <sip:b@{LB}>;tag=b1\r\nFrom: <sip:a@example.com>;tag=f1\r\n\
Call-ID: d1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    lab.recv(CALLER, &bye);
    let fwd = lab.one();
    lab.recv(BACKEND_B, &fwd.answer(503, None));
    let sent = lab.take();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].code(), sent[0].to().as_str()), (500, CALLER));
}

// ---- bounds ----

#[test]
fn a_full_table_answers_503_with_retry_after() {
    let config = TxnConfig {
        max_transactions: 2,
        ..TxnConfig::default()
    };
    let mut lab = Lab::with(Algorithm::RoundRobin, config, &[BACKEND_A]);
    start_invite(&mut lab, "b1");
    start_invite(&mut lab, "b2");
    assert_eq!(lab.recv(CALLER, &invite("b3")), Outcome::Replied);
    let busy = lab.one();
    assert_eq!(busy.code(), 503);
    assert_eq!(busy.header("Retry-After"), Some("5"));
    assert_eq!(lab.proxy.counters().overload_rejected, 1);
    assert_eq!(lab.proxy.counters().limits.get(Limit::Transactions), 1);
    // Once the others end, there is room again.
    lab.advance(70_000);
    lab.take();
    assert_eq!(lab.proxy.transactions(), (0, 0));
    start_invite(&mut lab, "b4");
}

#[test]
fn timers_leave_nothing_behind() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    for i in 0..50 {
        let fwd = start_invite(&mut lab, &format!("t{i}"));
        match i % 5 {
            0 => {}
            1 => {
                lab.recv(&fwd.to(), &fwd.answer(200, Some("b")));
            }
            2 => {
                lab.recv(&fwd.to(), &fwd.answer(486, Some("b")));
            }
            3 => {
                lab.recv(&fwd.to(), &fwd.answer(180, Some("b")));
                lab.recv(CALLER, &cancel(&format!("t{i}")));
            }
            _ => {
                lab.recv(&fwd.to(), &fwd.answer(503, Some("b")));
            }
        }
        lab.advance(37);
        lab.take();
    }
    lab.advance(400_000);
    assert_eq!(lab.proxy.transactions(), (0, 0));
    assert_eq!(lab.proxy.next_deadline(), None, "no timer left");
}

#[test]
fn a_2xx_from_a_try_given_up_on_wins_and_cancels_the_current_try() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let first = start_invite(&mut lab, "f8");
    let second = sends_until(&mut lab, 2_000)
        .into_iter()
        .map(|(_, s)| s)
        .find(|s| s.to != first.to)
        .unwrap();
    // The first backend's 200 was only late: it is forwarded (§16.7).
    assert_eq!(
        lab.recv(&first.to(), &first.answer(200, Some("a"))),
        Outcome::Forwarded
    );
    let ok = lab.one();
    assert_eq!((ok.code(), ok.to().as_str()), (200, CALLER));
    // The second rings after the call was answered: not forwarded, and
    // cancelled now that it has a provisional.
    lab.recv(&second.to(), &second.answer(180, Some("b")));
    let sent = lab.one();
    assert_eq!((sent.method(), sent.to), ("CANCEL", second.to));
    lab.recv(&second.to(), &second.answer(487, Some("b")));
    let sent = lab.take();
    assert!(
        sent.iter().all(|s| s.to != CALLER.parse().unwrap()),
        "{sent:#?}"
    );
}

#[test]
fn an_in_dialog_request_without_our_route_goes_by_call_id_hash() {
    // Round robin for new calls, but a BYE of a dialog (To tag) that does
    // not carry our Route must reach the same backend every time.
    let bye = |branch: &str| {
        format!(
            "BYE sip:+15551230001@{LB} SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bK{branch}\r\n\
Max-Forwards: 70\r\nTo: <sip:b@{LB}>;tag=b1\r\nFrom: <sip:a@example.com>;tag=f1\r\n\
Call-ID: sticky-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let targets: Vec<_> = (0..4)
        .map(|i| {
            lab.recv(CALLER, &bye(&format!("s{i}")));
            lab.one().to
        })
        .collect();
    assert!(targets.iter().all(|t| *t == targets[0]), "{targets:?}");
}

/// The per-try timer fired with nothing else to try, then a 100 came:
/// it stopped Timers A and B but armed Timer C only for a provisional
/// above 100 or with the per-try timer still armed, so the try and its
/// server transaction held their slots for ever when nothing followed.
#[test]
fn a_100_after_the_per_try_timer_still_arms_timer_c() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "c100");
    lab.advance(2_500);
    lab.take();
    lab.recv(BACKEND_A, &fwd.answer(100, None));
    assert!(lab.take().is_empty(), "a 100 goes no further");
    timer_c_cancels_then_408(&mut lab, &fwd);
    assert_all_ended(&mut lab);
}

/// Only a provisional above 100 restarts Timer C (§16.7 step 2): a
/// backend that rang and then repeats 100 is still cancelled on time.
#[test]
fn a_repeated_100_does_not_restart_timer_c() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "c101");
    lab.recv(BACKEND_A, &fwd.answer(180, Some("b")));
    assert_eq!(lab.one().code(), 180);
    for _ in 0..3 {
        lab.advance(59_000);
        lab.recv(BACKEND_A, &fwd.answer(100, None));
        assert!(lab.take().is_empty());
    }
    lab.advance(3_000);
    assert_eq!(lab.proxy.counters().timer_c_fired, 1, "180 s after the 180");
    let cancel = lab.one();
    assert_eq!((cancel.method(), cancel.to), ("CANCEL", fwd.to));
}

/// An in-dialog INVITE without our Route goes where its Call-ID hashes
/// and nowhere else. Its per-try timer used to see the pool's other
/// members as free, give the try up at 2 s and then find nothing to try
/// (in-dialog requests do not fail over): the caller got a 408, which
/// ends a dialog (§12.2.1.2), while the backend never saw a retransmission.
#[test]
fn an_in_dialog_invite_waits_for_timer_b_not_the_per_try_timer() {
    let mut lab = three_backends(TxnConfig::default());
    let reinvite = format!(
        "INVITE sip:+15551230001@{LB} SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bKreinv1\r\n\
Max-Forwards: 70\r\nTo: <sip:b@{LB}>;tag=b1\r\nFrom: <sip:a@example.com>;tag=f1\r\n\
Call-ID: sticky-2\r\nCSeq: 3 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(lab.recv(CALLER, &reinvite), Outcome::Forwarded);
    let sent = lab.take();
    let fwd = sent
        .iter()
        .find(|s| s.method() == "INVITE")
        .unwrap()
        .clone();
    let sent = sends_until(&mut lab, 4_000);
    assert!(
        sent.iter()
            .all(|(_, s)| s.to == fwd.to && s.method() == "INVITE"),
        "only retransmissions to the same backend: {sent:#?}"
    );
    assert_eq!(sent.len(), 3, "Timer A at 0.5, 1.5 and 3.5 s: {sent:#?}");
    assert_eq!(lab.proxy.counters().try_timeouts, 0);
    lab.recv(&fwd.to(), &fwd.answer(200, Some("b1")));
    let sent = lab.take();
    assert!(
        sent.iter().any(|s| s.code() == 200 && s.to() == CALLER),
        "{sent:#?}"
    );
}

// ---- requests sent on with Max-Forwards 0 ----

/// An INVITE that came with `Max-Forwards: 1` goes on with 0. The proxy
/// reads the request as sent again to write its CANCEL and ACK, and that
/// read used to refuse Max-Forwards 0 (as it must for a request received),
/// so no CANCEL or ACK was ever written for such a call: the callee rang
/// on after the caller's CANCEL, and a backend's 486 was never ACKed.
/// Found by the `proxy` fuzz target's timed mode (the try's end) and in
/// review (the missing CANCEL and ACK).
fn start_one_hop_invite(lab: &mut Lab, call_id: &str) -> Sent {
    let invite = invite(call_id).replace("Max-Forwards: 70", "Max-Forwards: 1");
    assert_eq!(lab.recv(CALLER, &invite), Outcome::Forwarded);
    let sent = lab.take();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[1].header("Max-Forwards"), Some("0"));
    sent[1].clone()
}

/// Timer C fires on such a try: its CANCEL goes to the backend, and with
/// no answer to it the caller gets 408 64·T1 later and nothing is left.
#[test]
fn timer_c_cancels_a_try_sent_on_with_max_forwards_0() {
    let mut lab = one_backend();
    let fwd = start_one_hop_invite(&mut lab, "h1");
    lab.recv(BACKEND_A, &fwd.answer(180, Some("b")));
    assert_eq!(lab.one().code(), 180);
    let cancel = timer_c_cancels_then_408(&mut lab, &fwd);
    assert_eq!(cancel.header("Max-Forwards"), Some("70"));
    assert_all_ended(&mut lab);
}

/// The caller's CANCEL is answered 200 and sent on; the backend's 487
/// comes back to the caller.
#[test]
fn a_cancel_of_a_try_sent_on_with_max_forwards_0_reaches_the_backend() {
    let mut lab = one_backend();
    let fwd = start_one_hop_invite(&mut lab, "h2");
    lab.recv(BACKEND_A, &fwd.answer(180, Some("b")));
    lab.take();
    assert_eq!(lab.recv(CALLER, &cancel("h2")), Outcome::Replied);
    let sent = lab.take();
    assert!(sent.iter().any(|s| s.code() == 200 && s.to() == CALLER));
    let cancel = sent.iter().find(|s| s.method() == "CANCEL").cloned();
    assert_eq!(cancel.map(|c| c.to), Some(fwd.to), "{sent:#?}");
    lab.recv(BACKEND_A, &fwd.answer(487, Some("b")));
    let sent = lab.take();
    assert!(sent.iter().any(|s| s.code() == 487 && s.to() == CALLER));
    assert!(sent.iter().any(|s| s.method() == "ACK" && s.to == fwd.to));
    assert_all_ended(&mut lab);
}

/// The backend's 486 is ACKed hop by hop, and so is its retransmission.
#[test]
fn a_486_to_a_try_sent_on_with_max_forwards_0_is_acked() {
    let mut lab = one_backend();
    let fwd = start_one_hop_invite(&mut lab, "h3");
    let busy = fwd.answer(486, Some("b"));
    lab.recv(BACKEND_A, &busy);
    let sent = lab.take();
    assert!(sent.iter().any(|s| s.code() == 486 && s.to() == CALLER));
    assert!(
        sent.iter().any(|s| s.method() == "ACK" && s.to == fwd.to),
        "{sent:#?}"
    );
    assert_eq!(lab.recv(BACKEND_A, &busy), Outcome::Absorbed);
    let ack = lab.one();
    assert_eq!((ack.method(), ack.to), ("ACK", fwd.to));
}

/// An INVITE at the limits (64 Via values, 128 header fields) gets one
/// more Via, a Record-Route and ours on the way: its CANCEL is still
/// written from the request as sent.
#[test]
fn a_cancel_is_written_for_an_invite_at_the_scanner_limits() {
    let config = TxnConfig {
        udp_request_bytes_max: crate::sip::UDP_PAYLOAD_MAX,
        ..TxnConfig::default()
    };
    let mut lab = Lab::with(Algorithm::RoundRobin, config, &[BACKEND_A]);
    let vias: String = (0..63)
        .map(|i| {
            format!(
                "Via: SIP/2.0/UDP 192.0.2.{}:5060;branch=z9hG4bKv{i}\r\n",
                i + 1
            )
        })
        .collect();
    let fillers: String = (0..128 - 63 - 9)
        .map(|i| format!("X-Filler-{i}: {i}\r\n"))
        .collect();
    let invite = invite("lim").replacen(
        "Max-Forwards: 70\r\n",
        &format!("Max-Forwards: 70\r\n{vias}{fillers}"),
        1,
    );
    assert_eq!(
        lab.recv(CALLER, &invite),
        Outcome::Forwarded,
        "at the limits, not over"
    );
    let sent = lab.take();
    let fwd = sent
        .iter()
        .find(|s| s.method() == "INVITE")
        .cloned()
        .unwrap();
    lab.recv(BACKEND_A, &fwd.answer(180, Some("b")));
    lab.take();
    assert_eq!(lab.recv(CALLER, &cancel("lim")), Outcome::Replied);
    let sent = lab.take();
    assert!(
        sent.iter()
            .any(|s| s.method() == "CANCEL" && s.to == fwd.to),
        "{sent:#?}"
    );
}

/// A provisional that crosses our CANCEL (the backend's 183 sent before
/// it saw the CANCEL) used to stop the 64·T1 wait armed with the CANCEL,
/// as if it were Timer B; if no final came, Timer C then fired on a try
/// already cancelled and did nothing: the server and client transactions
/// stayed for ever. Found by the `proxy` fuzz target (timed mode, first
/// CI run: a late provisional on a try given up on after an ICMP error).
#[test]
fn a_provisional_after_our_cancel_does_not_stop_its_wait() {
    let mut lab = one_backend();
    let fwd = start_invite(&mut lab, "p1");
    lab.recv(BACKEND_A, &fwd.answer(180, Some("b")));
    lab.take();
    assert_eq!(lab.recv(CALLER, &cancel("p1")), Outcome::Replied);
    let sent = lab.take();
    assert!(sent.iter().any(|s| s.method() == "CANCEL"), "{sent:#?}");
    lab.recv(BACKEND_A, &fwd.answer(183, Some("b")));
    lab.take();
    // The backend answers neither the CANCEL nor the INVITE.
    lab.advance(32_000);
    let sent = lab.take();
    assert!(sent.iter().any(|s| s.code() == 487 && s.to() == CALLER));
    assert_all_ended(&mut lab);
}
