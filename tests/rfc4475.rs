//! RFC 4475 torture messages: every one gets the verdict `INDEX.md` names.
//!
//! The messages are a committed copy of `shared/conformance/rfc4475/` so a
//! clean clone tests without anything beside it. Each test hands the
//! message to the proxy core (`Proxy::handle`) as a datagram from a client
//! and checks the verdict (forward, answer with a code, drop), what was
//! sent, and the scanned fields worth checking.

use std::path::PathBuf;

use sipshard::balance::{Algorithm, Routing, RoutingSpec};
use sipshard::proxy::{DropReason, Outcome, Proxy};
use sipshard::sip::{
    write_rejection, AddrError, Answer, Fault, HeaderName, Limits, LocalAddress, Message, Method,
    ScanError, Scanner, StartLine, Transport, UriError, ViaError,
};
use sipshard::testkit::Outbox;
use sipshard::txn::TxnConfig;

const PROXY_HOST: &str = "192.0.2.250";
const PROXY_PORT: u16 = 5060;

fn path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/rfc4475")
        .join(file)
}

fn load(name: &str) -> Vec<u8> {
    std::fs::read(path(&format!("{name}.sip"))).expect("torture message")
}

/// The verdict INDEX.md gives the file, normalised to its first word.
fn index_verdict(name: &str) -> String {
    let index = std::fs::read_to_string(path("INDEX.md")).unwrap();
    let row = index
        .lines()
        .find(|l| l.starts_with(&format!("| {name}.sip |")))
        .unwrap_or_else(|| panic!("{name} missing from INDEX.md"));
    let verdict = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
    verdict.split([' ', ';']).next().unwrap().to_string()
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Forward,
    Reply(u16),
    Drop,
}

fn source() -> std::net::SocketAddr {
    "198.51.100.9:5070".parse().unwrap()
}

fn backend() -> std::net::SocketAddr {
    "10.0.0.1:5080".parse().unwrap()
}

/// What the proxy core does with the datagram when it arrives from a
/// client, checking on the way that what it sends scans cleanly again.
fn verdict(datagram: &[u8]) -> (Verdict, Option<ScanError>) {
    let spec = RoutingSpec::one_set(Algorithm::RoundRobin, &[backend()]);
    let mut proxy = Proxy::with_routing(
        Scanner::new(Limits::default()),
        // Listening on TCP too: requests over 1,300 bytes go on over TCP.
        LocalAddress::new(PROXY_HOST, PROXY_PORT).with_stream_port(Transport::Tcp, PROXY_PORT),
        Routing::build(&spec, None).ok().map(std::sync::Arc::new),
        TxnConfig::default(),
        0,
        7,
    );
    let error = Scanner::new(Limits::default()).scan(datagram).err();
    let mut outbox = Outbox::default();
    let outcome = proxy.handle(0, source().into(), datagram, &mut outbox);
    // An INVITE's 100 Trying goes first; the verdict is what follows it.
    let mut sent = outbox.sent.into_iter().peekable();
    if outcome == Outcome::Forwarded
        && sent
            .peek()
            .is_some_and(|(_, bytes)| bytes.starts_with(b"SIP/2.0 100 "))
    {
        sent.next();
    }
    let last = sent.next();
    assert!(sent.next().is_none(), "one datagram per verdict");
    match (outcome, last) {
        (Outcome::Forwarded, Some((to, out))) => {
            let len = out.len();
            assert_eq!(to.addr, backend(), "an initial request goes to the pool");
            let transport = match len > 1300 {
                true => Transport::Tcp,
                false => Transport::Udp,
            };
            assert_eq!(to.transport, transport, "RFC 3261 §18.1.1");
            let mut scanner = Scanner::new(Limits::default());
            let original = scanner.scan(datagram).expect("forwarded, so it scanned");
            let body = original.body().to_vec();
            let mut rescanner = Scanner::new(Limits::default());
            let forwarded = rescanner
                .scan(&out[..len])
                .expect("forwarded request scans");
            assert_eq!(
                forwarded.body(),
                &body[..],
                "body is forwarded byte for byte"
            );
            let via = forwarded.top_via();
            assert_eq!(via.host, PROXY_HOST.as_bytes());
            assert!(via.has_magic_cookie());
            (Verdict::Forward, None)
        }
        (Outcome::Replied, Some((to, out))) => {
            let len = out.len();
            assert_eq!(
                to,
                source().into(),
                "a malformed request is answered where it came from"
            );
            let reply = &out[..len];
            let code: u16 = std::str::from_utf8(&reply[8..11]).unwrap().parse().unwrap();
            assert!(reply.starts_with(format!("SIP/2.0 {code} ").as_bytes()));
            assert!(reply.ends_with(b"\r\nContent-Length: 0\r\n\r\n"));
            // The answer copies the request's headers as they came, so it
            // scans cleanly whenever those headers were well formed.
            let mut rescanner = Scanner::new(Limits::default());
            if let Ok(reply) = rescanner.scan(reply) {
                assert_eq!(reply.status_code(), Some(code));
            }
            assert_eq!(
                error.map(|e| e.answer()).and_then(|a| match a {
                    Answer::Reply { code, .. } => Some(code),
                    Answer::Drop => None,
                }),
                Some(code)
            );
            (Verdict::Reply(code), error)
        }
        (Outcome::Dropped(reason), None) => {
            if error.is_none() {
                assert_eq!(
                    reason,
                    DropReason::ResponseNotOurs,
                    "a valid message is only dropped when it is a response not ours"
                );
            }
            (Verdict::Drop, error)
        }
        (outcome, sent) => panic!("{outcome:?} with {sent:?}"),
    }
}

/// Checks the verdict against INDEX.md and returns the error, if any.
fn check(name: &str, want: Verdict) -> Option<ScanError> {
    let index = index_verdict(name);
    let from_index = match index.as_str() {
        "forward" => Verdict::Forward,
        "drop" | "parse" => Verdict::Drop,
        "either" => want_either(&want),
        code => Verdict::Reply(code.parse().expect("status code")),
    };
    assert_eq!(want, from_index, "{name}: test disagrees with INDEX.md");
    let (got, error) = verdict(&load(name));
    assert_eq!(got, want, "{name}: {error:?}");
    error
}

/// "either" rows allow 400 or forwarding; sipshard forwards them (README).
fn want_either(want: &Verdict) -> Verdict {
    assert_eq!(
        *want,
        Verdict::Forward,
        "sipshard forwards every 'either' case"
    );
    Verdict::Forward
}

/// Scans a forward case for its fields.
fn with_message(name: &str, f: impl FnOnce(&Message<'_>)) {
    let bytes = load(name);
    let mut scanner = Scanner::new(Limits::default());
    let message = scanner.scan(&bytes).unwrap();
    f(&message);
}

fn fault(name: &str, want: Verdict) -> Fault {
    check(name, want).expect("rejected").fault
}

#[test]
fn wsinv() {
    check("wsinv", Verdict::Forward);
    with_message("wsinv", |m| {
        assert_eq!(m.call_id(), b"wsinv.ndaksdj@192.0.2.1");
        assert_eq!(m.cseq().number, 9);
        assert_eq!(m.cseq().method, Method::Invite);
        assert_eq!(m.max_forwards(), Some(68));
        assert_eq!(m.top_via().branch, Some(&b"390skdjuw"[..]));
        assert_eq!(m.top_via().host, b"192.0.2.2");
        assert_eq!(m.via_count(), 3);
        let vias: Vec<_> = m.vias().map(|v| (v.transport, v.branch.unwrap())).collect();
        assert_eq!(vias[1], (&b"TCP"[..], &b"z9hG4bK9ikj8"[..]));
        assert_eq!(vias[2], (&b"UDP"[..], &b"z9hG4bK30239"[..]));
        assert_eq!(m.to().tag, Some(&b"1918181833n"[..]));
        assert_eq!(m.from().tag, Some(&b"98asjd8"[..]));
        assert_eq!(m.from().uri().unwrap().user, Some(&b"jdrosen"[..]));
        let route = m.routes().next().unwrap().unwrap();
        assert!(route.uri().unwrap().lr());
        assert_eq!(route.uri().unwrap().host, b"services.example.com");
        assert_eq!(m.header(HeaderName::Subject), Some(&b""[..]));
        assert_eq!(m.content_length(), Some(150));
        assert_eq!(m.body().len(), 150);
        let uri = m.request_uri().unwrap();
        assert_eq!(uri.param(b"unknownparam"), Some(None));
    });
}

#[test]
fn intmeth() {
    check("intmeth", Verdict::Forward);
    with_message("intmeth", |m| {
        assert_eq!(m.method(), Some(Method::Other));
        assert_eq!(
            m.cseq().method_text,
            b"!interesting-Method0123456789_*+`.%indeed'~"
        );
        assert_eq!(m.call_id(), b"intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{");
        assert_eq!(m.from().tag, Some(&b"_token~1'+`*%!-."[..]));
        assert_eq!(m.request_uri().unwrap().host, b"example.com");
        assert_eq!(m.max_forwards(), Some(255));
    });
}

#[test]
fn esc01() {
    check("esc01", Verdict::Forward);
    with_message("esc01", |m| {
        assert_eq!(
            m.request_uri().unwrap().user,
            Some(&b"sips%3Auser%40example.com"[..])
        );
        assert_eq!(m.call_id(), b"esc01.239409asdfakjkn23onasd0-3234");
        let contact = m.contacts().next().unwrap().unwrap();
        assert!(
            matches!(contact, sipshard::sip::Contact::Address(a) if a.uri().unwrap().user == Some(b"cal%6Cer"))
        );
    });
}

#[test]
fn escnull() {
    check("escnull", Verdict::Forward);
    with_message("escnull", |m| {
        assert_eq!(m.to().uri().unwrap().user, Some(&b"null-%00-null"[..]));
        assert_eq!(m.contacts().count(), 2);
    });
}

#[test]
fn esc02() {
    check("esc02", Verdict::Forward);
    with_message("esc02", |m| {
        assert_eq!(m.method(), Some(Method::Other));
        assert!(
            matches!(m.start_line(), StartLine::Request { method_text, .. } if *method_text == b"RE%47IST%45R")
        );
        assert_eq!(m.top_via().branch, Some(&b"z9hG4bK209%fzsnel234"[..]));
        // `C%6Fntact` is an extension header, not Contact.
        assert_eq!(m.contacts().count(), 2);
    });
}

#[test]
fn lwsdisp() {
    check("lwsdisp", Verdict::Forward);
    with_message("lwsdisp", |m| {
        assert_eq!(m.from().display_name, Some(&b"caller"[..]))
    });
}

#[test]
fn longreq() {
    check("longreq", Verdict::Forward);
    with_message("longreq", |m| {
        assert_eq!(m.via_count(), 34);
        assert_eq!(m.top_via().host, b"sip33.example.com");
        assert!(m.from().tag.unwrap().len() > 100);
        assert!(m.call_id().starts_with(b"longreq.one"));
    });
}

#[test]
fn dblreq() {
    check("dblreq", Verdict::Forward);
    with_message("dblreq", |m| {
        assert_eq!(m.method(), Some(Method::Register));
        assert_eq!(m.call_id(), b"dblreq.0ha0isndaksdj99sdfafnl3lk233412");
        assert_eq!(m.body(), b"");
        // The second request in the datagram is not part of the message.
        assert!(m.datagram().len() > m.as_bytes().len());
        assert!(!m.as_bytes().windows(7).any(|w| w == b"INVITE "));
    });
}

#[test]
fn semiuri() {
    check("semiuri", Verdict::Forward);
    with_message("semiuri", |m| {
        let uri = m.request_uri().unwrap();
        assert_eq!(uri.user, Some(&b"user;par=u%40example.net"[..]));
        assert_eq!(uri.host, b"example.com");
    });
}

#[test]
fn transports() {
    check("transports", Verdict::Forward);
    with_message("transports", |m| {
        let transports: Vec<_> = m.vias().map(|v| v.transport).collect();
        assert_eq!(
            transports,
            vec![&b"UDP"[..], b"SCTP", b"TLS", b"UNKNOWN", b"TCP"]
        );
    });
}

#[test]
fn mpart01() {
    check("mpart01", Verdict::Forward);
    let bytes = load("mpart01");
    with_message("mpart01", |m| {
        let length = m.content_length().unwrap() as usize;
        assert_eq!(m.body().len(), length);
        assert_eq!(
            m.body(),
            &bytes[bytes.len() - length..],
            "binary body is byte-exact"
        );
    });
}

#[test]
fn unreason() {
    check("unreason", Verdict::Drop);
    with_message("unreason", |m| {
        assert_eq!(m.status_code(), Some(200));
        assert!(
            matches!(m.start_line(), StartLine::Response { reason, .. } if reason.starts_with(b"= 2**3 * 5**2 "))
        );
    });
}

#[test]
fn noreason() {
    check("noreason", Verdict::Drop);
    with_message("noreason", |m| {
        assert_eq!(m.status_code(), Some(100));
        assert!(matches!(m.start_line(), StartLine::Response { reason, .. } if reason.is_empty()));
    });
}

#[test]
fn badinv01() {
    assert_eq!(
        fault("badinv01", Verdict::Reply(400)),
        Fault::Via(ViaError::Parameter)
    );
}

#[test]
fn clerr() {
    assert_eq!(fault("clerr", Verdict::Reply(400)), Fault::BodyTooShort);
}

#[test]
fn ncl() {
    assert_eq!(fault("ncl", Verdict::Reply(400)), Fault::ContentLength);
}

#[test]
fn scalar02() {
    assert_eq!(fault("scalar02", Verdict::Reply(400)), Fault::CSeq);
}

#[test]
fn scalarlg() {
    assert_eq!(fault("scalarlg", Verdict::Drop), Fault::CSeq);
}

#[test]
fn quotbal() {
    assert_eq!(
        fault("quotbal", Verdict::Reply(400)),
        Fault::To(AddrError::UnterminatedQuote)
    );
}

#[test]
fn ltgtruri() {
    assert_eq!(
        fault("ltgtruri", Verdict::Reply(400)),
        Fault::RequestUri(UriError::Scheme)
    );
}

#[test]
fn lwsruri() {
    assert_eq!(fault("lwsruri", Verdict::Reply(400)), Fault::StartLine);
}

#[test]
fn lwsstart() {
    assert_eq!(fault("lwsstart", Verdict::Reply(400)), Fault::StartLine);
}

#[test]
fn trws() {
    check("trws", Verdict::Forward);
    with_message("trws", |m| {
        assert_eq!(m.request_uri().unwrap().host, b"example.com")
    });
}

#[test]
fn escruri() {
    assert_eq!(
        fault("escruri", Verdict::Reply(400)),
        Fault::RequestUriHeaders
    );
}

#[test]
fn baddate() {
    check("baddate", Verdict::Forward);
}

#[test]
fn regbadct() {
    check("regbadct", Verdict::Forward);
}

#[test]
fn badaspec() {
    assert_eq!(
        fault("badaspec", Verdict::Reply(400)),
        Fault::To(AddrError::AngleBrackets)
    );
}

#[test]
fn baddn() {
    assert_eq!(
        fault("baddn", Verdict::Reply(400)),
        Fault::From(AddrError::DisplayName)
    );
}

#[test]
fn badvers() {
    assert_eq!(fault("badvers", Verdict::Reply(505)), Fault::Version);
}

#[test]
fn mismatch01() {
    assert_eq!(fault("mismatch01", Verdict::Reply(400)), Fault::CSeqMethod);
}

#[test]
fn mismatch02() {
    assert_eq!(fault("mismatch02", Verdict::Reply(400)), Fault::CSeqMethod);
}

#[test]
fn bigcode() {
    assert_eq!(fault("bigcode", Verdict::Drop), Fault::StatusCode);
}

#[test]
fn badbranch() {
    check("badbranch", Verdict::Forward);
    with_message("badbranch", |m| {
        assert_eq!(m.top_via().branch, Some(&b"z9hG4bK"[..]));
    });
}

#[test]
fn insuf() {
    assert_eq!(
        fault("insuf", Verdict::Reply(400)),
        Fault::Missing(HeaderName::From)
    );
}

#[test]
fn unkscm() {
    assert_eq!(
        fault("unkscm", Verdict::Reply(416)),
        Fault::UnsupportedScheme
    );
}

#[test]
fn novelsc() {
    assert_eq!(
        fault("novelsc", Verdict::Reply(416)),
        Fault::UnsupportedScheme
    );
}

#[test]
fn unksm2() {
    check("unksm2", Verdict::Forward);
    with_message("unksm2", |m| {
        assert_eq!(m.to().uri().unwrap().scheme_name, b"isbn");
        assert_eq!(m.from().uri().unwrap().scheme_name, b"http");
    });
}

#[test]
fn bext01() {
    assert_eq!(fault("bext01", Verdict::Reply(420)), Fault::ProxyRequire);
    let bytes = load("bext01");
    let mut scanner = Scanner::new(Limits::default());
    let error = scanner.scan(&bytes).unwrap_err();
    let mut out = vec![0u8; 4096];
    let n = write_rejection(&mut scanner, &bytes, &error, source(), &mut out).unwrap();
    let reply = String::from_utf8_lossy(&out[..n]);
    assert!(
        reply.contains("\r\nUnsupported: noProxiesSupportThis, norDoAnyProxiesSupportThis\r\n"),
        "{reply}"
    );
    assert!(
        !reply.contains("nothingSupportsThis"),
        "Require is for the UAS, not us"
    );
}

#[test]
fn invut() {
    check("invut", Verdict::Forward);
}

#[test]
fn regaut01() {
    check("regaut01", Verdict::Forward);
}

#[test]
fn multi01() {
    assert!(matches!(
        fault("multi01", Verdict::Reply(400)),
        Fault::Duplicate(_)
    ));
}

#[test]
fn mcl01() {
    assert_eq!(
        fault("mcl01", Verdict::Reply(400)),
        Fault::Duplicate(HeaderName::ContentLength)
    );
}

#[test]
fn bcast() {
    check("bcast", Verdict::Drop);
    with_message("bcast", |m| {
        assert_eq!(m.vias().nth(1).unwrap().host, b"255.255.255.255");
    });
}

#[test]
fn zeromf() {
    assert_eq!(fault("zeromf", Verdict::Reply(483)), Fault::MaxForwardsZero);
}

#[test]
fn cparam01() {
    check("cparam01", Verdict::Forward);
}

#[test]
fn cparam02() {
    check("cparam02", Verdict::Forward);
    with_message("cparam02", |m| {
        let contact = m.contacts().next().unwrap().unwrap();
        assert!(
            matches!(contact, sipshard::sip::Contact::Address(a) if a.uri().unwrap().param(b"unknownparam") == Some(None))
        );
    });
}

#[test]
fn regescrt() {
    check("regescrt", Verdict::Forward);
}

#[test]
fn sdp01() {
    check("sdp01", Verdict::Forward);
}

#[test]
fn inv2543() {
    check("inv2543", Verdict::Forward);
    with_message("inv2543", |m| {
        assert_eq!(m.top_via().branch, None);
        assert_eq!(m.max_forwards(), None);
        assert_eq!(m.content_length(), None);
        // In addr-spec form everything after `;` is a header parameter
        // (RFC 3261 §20.10), so `user=phone` belongs to To, not its URI.
        assert_eq!(m.to().uri().unwrap().param(b"user"), None);
        assert_eq!(m.to().params, b";user=phone");
        assert_eq!(
            m.from().uri().unwrap().param(b"user"),
            Some(Some(&b"phone"[..]))
        );
        assert_eq!(
            m.record_routes()
                .next()
                .unwrap()
                .unwrap()
                .uri()
                .unwrap()
                .maddr(),
            Some(&b"ss1.example.com"[..])
        );
    });
}

/// Every file in the directory has a test above, and INDEX.md lists 49.
#[test]
fn every_message_is_covered() {
    let source = std::fs::read_to_string(file!()).unwrap();
    let mut files = 0;
    for entry in std::fs::read_dir(path("")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".sip") {
            files += 1;
            assert!(
                source.contains(&format!("fn {stem}()")),
                "no test for {stem}"
            );
        }
    }
    assert_eq!(files, 49);
}
