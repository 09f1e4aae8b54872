//! The core across transports: a request's transport in and out, the
//! Via and the doubled Record-Route (RFC 5658) that follow from them, and
//! responses back over the connection a request came on (§18.2.2).

use crate::balance::Algorithm;
use crate::sip::{FlowId, Peer, Transport};
use crate::testkit::lab::*;
use crate::testkit::message;
use crate::txn::TxnConfig;

fn caller_on_tcp() -> Peer {
    let peer: Peer = format!("tcp:{CALLER}").parse().unwrap();
    peer.on(FlowId(0x0100_0007))
}

fn tcp_backends() -> Lab {
    let backend = format!("tcp:{BACKEND_A}");
    Lab::with(Algorithm::RoundRobin, TxnConfig::default(), &[&backend])
}

#[test]
fn a_tcp_caller_reaches_a_udp_backend_and_hears_back_on_its_connection() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let caller = caller_on_tcp();
    let invite = invite("x1").replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    lab.recv_from(caller, &invite);
    let sent = lab.take();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[0].code(), 100);
    assert_eq!(
        sent[0].peer, caller,
        "100 Trying over the caller's connection"
    );
    let forwarded = &sent[1];
    assert_eq!(forwarded.peer, Peer::udp(BACKEND_A.parse().unwrap()));
    assert!(forwarded
        .text
        .contains(&format!("Via: SIP/2.0/UDP {LB}:{LB_PORT};branch=")));
    // The callee's side (UDP) on top, the caller's (TCP) below it.
    let want = format!(
        "Record-Route: <sip:{LB}:{LB_PORT};lr>\r\n\
Record-Route: <sip:{LB}:{LB_PORT};transport=tcp;lr>\r\n"
    );
    assert!(forwarded.text.contains(&want), "{}", forwarded.text);
    lab.recv(
        BACKEND_A,
        &message::response(&forwarded.text, 200, Some("b1")),
    );
    let ok = lab.one();
    assert_eq!((ok.code(), ok.peer), (200, caller));
}

#[test]
fn a_udp_caller_reaches_a_tcp_backend_over_tcp() {
    let mut lab = tcp_backends();
    lab.recv(CALLER, &invite("x2"));
    let sent = lab.take();
    assert_eq!(sent[0].peer, Peer::udp(CALLER.parse().unwrap()));
    let forwarded = &sent[1];
    let backend = Peer::new(Transport::Tcp, BACKEND_A.parse().unwrap());
    assert_eq!(forwarded.peer, backend);
    assert!(forwarded
        .text
        .contains(&format!("Via: SIP/2.0/TCP {LB}:{LB_PORT};branch=")));
    let want = format!(
        "Record-Route: <sip:{LB}:{LB_PORT};transport=tcp;lr>\r\n\
Record-Route: <sip:{LB}:{LB_PORT};lr>\r\n"
    );
    assert!(forwarded.text.contains(&want), "{}", forwarded.text);
    // The caller gives up: the CANCEL follows its INVITE over TCP.
    lab.recv(
        BACKEND_A,
        &message::response(&forwarded.text, 180, Some("b1")),
    );
    lab.take();
    lab.recv(CALLER, &cancel("x2"));
    let sent = lab.take();
    let to_backend = sent.iter().find(|s| s.peer == backend).expect("a CANCEL");
    assert!(to_backend.text.starts_with("CANCEL "));
    assert!(
        to_backend.text.contains("Via: SIP/2.0/TCP "),
        "{}",
        to_backend.text
    );
}

#[test]
fn one_transport_records_one_route() {
    let mut lab = tcp_backends();
    let invite = invite("x3").replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    lab.recv_from(caller_on_tcp(), &invite);
    let forwarded = lab.take().pop().unwrap();
    assert_eq!(forwarded.text.matches("Record-Route:").count(), 1);
}

/// An in-dialog request carrying both of our doubled Routes: both are
/// ours to pop, and the next hop's transport is its URI's.
fn in_dialog(route: &str, request_uri: &str) -> String {
    format!(
        "BYE {request_uri} SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bK-bye1;rport\r\n\
Max-Forwards: 70\r\n\
Route: {route}\r\n\
To: <sip:bob@example.com>;tag=b1\r\n\
From: <sip:alice@example.com>;tag=f1\r\n\
Call-ID: d1\r\n\
CSeq: 2 BYE\r\n\
Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn doubled_routes_are_both_popped_toward_the_callee() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let route = format!("<sip:{LB}:{LB_PORT};lr>, <sip:{LB}:{LB_PORT};transport=tcp;lr>");
    lab.recv(
        CALLER,
        &in_dialog(&route, "sip:bob@10.0.0.9:5090;transport=tcp"),
    );
    let bye = lab.one();
    assert_eq!(
        bye.peer,
        Peer::new(Transport::Tcp, "10.0.0.9:5090".parse().unwrap())
    );
    assert!(!bye.text.contains("Route:"), "{}", bye.text);
    assert!(bye.text.contains("Via: SIP/2.0/TCP "), "{}", bye.text);
}

#[test]
fn doubled_routes_in_two_fields_are_both_popped_toward_the_caller() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let route = format!(
        "<sip:{LB}:{LB_PORT};transport=tcp;lr>\r\nRoute: <sip:{LB}:{LB_PORT};lr>, <sip:edge.example.com;lr>"
    );
    let request = in_dialog(&route, "sip:alice@198.51.100.7:5070");
    lab.recv_from(
        caller_on_tcp(),
        &request.replace("SIP/2.0/UDP", "SIP/2.0/TCP"),
    );
    let sent = lab.take();
    // The next Route is a name: nowhere to send it (no resolver yet).
    assert!(sent.is_empty(), "{sent:#?}");
    lab.recv(
        CALLER,
        &in_dialog(
            &route.replace(", <sip:edge.example.com;lr>", ""),
            "sip:alice@198.51.100.7:5070",
        ),
    );
    let bye = lab.one();
    assert_eq!(bye.peer, Peer::udp(CALLER.parse().unwrap()));
    assert!(!bye.text.contains("Route:"), "{}", bye.text);
}

#[test]
fn a_sips_request_uri_goes_over_tls() {
    let mut lab = Lab::new(Algorithm::RoundRobin);
    let route = format!("<sip:{LB}:{LB_PORT};lr>");
    lab.recv(CALLER, &in_dialog(&route, "sips:bob@10.0.0.9"));
    let bye = lab.one();
    assert_eq!(
        bye.peer,
        Peer::new(Transport::Tls, "10.0.0.9:5061".parse().unwrap())
    );
    assert!(bye.text.contains("Via: SIP/2.0/TLS "), "{}", bye.text);
}

/// A proxy that also listens on TCP (port 5061), with UDP backend A as
/// written (`also_tcp` as a plain `sip:` URI has it) or UDP alone.
fn tcp_served(also_tcp: bool) -> Lab {
    use crate::balance::{Routing, RoutingSpec};
    let mut lab = Lab::new(Algorithm::RoundRobin);
    lab.proxy = crate::testkit::Setup {
        backends: addresses(&[BACKEND_A]),
        tcp_port: Some(5061),
        ..crate::testkit::Setup::default()
    }
    .proxy();
    let mut spec = RoutingSpec::one_set(Algorithm::RoundRobin, &addresses(&[BACKEND_A]));
    spec.sets[0].members[0].also_tcp = also_tcp;
    lab.proxy
        .set_routing(std::sync::Arc::new(Routing::build(&spec, None).unwrap()));
    lab
}

/// An INVITE of about `total` bytes (a body of filler).
fn large_invite(call_id: &str, total: usize) -> String {
    let body = "v".repeat(total - invite(call_id).len());
    invite(call_id).replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Length: {}\r\n\r\n{body}", body.len()),
    )
}

#[test]
fn a_request_past_1300_bytes_goes_to_its_udp_backend_over_tcp() {
    let mut lab = tcp_served(true);
    lab.recv(CALLER, &large_invite("big1", 1400));
    let forwarded = lab.take().pop().unwrap();
    let backend = Peer::new(Transport::Tcp, BACKEND_A.parse().unwrap());
    assert_eq!(forwarded.peer, backend);
    assert!(forwarded
        .text
        .contains(&format!("Via: SIP/2.0/TCP {LB}:5061;branch=")));
    assert!(forwarded
        .text
        .contains(&format!("<sip:{LB}:5061;transport=tcp;lr>")));
    assert_eq!(lab.proxy.counters().moved_to_tcp, 1);
    // A small one stays on UDP.
    lab.recv(CALLER, &invite("small1"));
    let forwarded = lab.take().pop().unwrap();
    assert_eq!(forwarded.peer, Peer::udp(BACKEND_A.parse().unwrap()));
}

#[test]
fn a_request_past_1300_bytes_with_no_tcp_way_gets_513() {
    // The backend takes UDP alone; then we do not listen on TCP.
    for mut lab in [
        tcp_served(false),
        Lab::with(Algorithm::RoundRobin, TxnConfig::default(), &[BACKEND_A]),
    ] {
        lab.recv(CALLER, &large_invite("big2", 1400));
        let sent = lab.take();
        let codes: Vec<u16> = sent.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [100, 513], "{sent:#?}");
        assert!(sent
            .iter()
            .all(|s| s.peer == Peer::udp(CALLER.parse().unwrap())));
        assert_eq!(lab.proxy.counters().moved_to_tcp, 0);
    }
}

#[test]
fn a_udp_caller_reaches_a_tls_backend_with_our_tls_address_on_its_side() {
    let backend = format!("tls:{BACKEND_A}");
    let mut lab = Lab::new(Algorithm::RoundRobin);
    lab.proxy = crate::testkit::Setup {
        backends: addresses(&[&backend]),
        tls_port: Some(5071),
        ..crate::testkit::Setup::default()
    }
    .proxy();
    lab.recv(CALLER, &invite("x9"));
    let sent = lab.take();
    let forwarded = &sent[1];
    let tls = Peer::new(Transport::Tls, BACKEND_A.parse().unwrap());
    assert_eq!(forwarded.peer, tls);
    assert!(
        forwarded
            .text
            .contains(&format!("Via: SIP/2.0/TLS {LB}:5071;branch=")),
        "{}",
        forwarded.text
    );
    // The callee's in-dialog requests come back to us over TLS.
    let want = format!(
        "Record-Route: <sip:{LB}:5071;transport=tls;lr>\r\n\
Record-Route: <sip:{LB}:{LB_PORT};lr>\r\n"
    );
    assert!(forwarded.text.contains(&want), "{}", forwarded.text);
    let ok = message::response(&forwarded.text, 200, Some("b1"));
    lab.recv_from(tls.on(FlowId(0x0200_0003)), &ok);
    let back = lab.take();
    let ok = back.iter().find(|s| s.code() == 200).expect("the 200");
    assert_eq!(ok.peer, Peer::udp(CALLER.parse().unwrap()));
}
