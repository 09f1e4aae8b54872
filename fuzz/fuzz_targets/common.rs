//! Checks shared by the fuzz targets and `tests/proptest_scan.rs`, which
//! includes this file with `#[path]`: `scan_target` and `edit_target` are
//! what the two targets do with one input, so that the same bytes replay on
//! stable. Each includer uses only part of this module.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sipshard::sip::{
    write_rejection, write_response, Answer, Contact, EditError, Editor, Fault, Forward,
    HeaderName, Limits, LocalAddress, LocalResponse, Message, ResponseError, ScanError, Scanner,
    StartKind, StartLine,
};

pub const PROXY_HOST: &str = "192.0.2.250";
pub const PROXY_PORT: u16 = 5060;
/// Room for the largest datagram plus everything forwarding adds.
pub const OUT_BYTES: usize = 70_000;
/// How many option bytes come before the datagram in an `edit` input.
pub const EDIT_OPTIONS: usize = 8;
/// Where rejected and forwarded datagrams come from, unless an input says.
const SOURCE: &str = "198.51.100.9:5070";

pub fn editor() -> Editor {
    Editor::new(LocalAddress::new(PROXY_HOST, PROXY_PORT))
}

/// Limits small enough that every one of them trips on ordinary messages.
pub fn tiny() -> Limits {
    Limits {
        datagram_bytes_max: 512,
        headers_max: 6,
        header_line_bytes_max: 64,
        via_values_max: 2,
    }
}

/// Limits for scanning what we wrote: a hop adds a Via value, up to three
/// header fields (Via, Record-Route, Max-Forwards) and `received`/`rport`,
/// so a message just inside the default limits may come out just outside
/// them. That is by design (a hop adds bytes); rescans allow for it.
pub fn relaxed() -> Limits {
    let d = Limits::default();
    Limits {
        datagram_bytes_max: d.datagram_bytes_max * 2,
        headers_max: d.headers_max + 8,
        header_line_bytes_max: d.header_line_bytes_max + 128,
        via_values_max: d.via_values_max + 1,
    }
}

/// A Via sent-by host as an IP address, when it is a literal.
pub fn host_ip(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

/// Whether `inner` is a sub-slice of `outer` (an empty slice may point
/// anywhere).
pub fn within(outer: &[u8], inner: &[u8]) -> bool {
    if inner.is_empty() {
        return true;
    }
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    i >= o && i + inner.len() <= o + outer.len()
}

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

pub type Pair = (Vec<u8>, Vec<u8>);

/// (name as written, value) of every header the editor does not own.
pub fn unowned_headers(m: &Message<'_>) -> Vec<Pair> {
    m.headers()
        .filter(|h| {
            !matches!(
                h.name,
                HeaderName::Via
                    | HeaderName::Route
                    | HeaderName::RecordRoute
                    | HeaderName::MaxForwards
            )
        })
        .map(|h| (h.name_text.to_vec(), h.value.to_vec()))
        .collect()
}

pub fn via_values(m: &Message<'_>) -> Vec<Vec<u8>> {
    m.vias().map(|v| v.value.to_vec()).collect()
}

/// Calls every accessor of an accepted message and checks that the views
/// agree with each other and with the datagram.
pub fn check_accessors(m: &Message<'_>) {
    let datagram = m.datagram();
    let bytes = m.as_bytes();
    assert!(within(datagram, bytes));
    assert!(within(datagram, m.body()));
    assert!(bytes.ends_with(m.body()));
    match m.content_length() {
        Some(length) => assert_eq!(m.body().len(), length as usize),
        None => assert!(datagram.ends_with(m.body())),
    }
    match *m.start_line() {
        StartLine::Request {
            method,
            method_text,
            uri,
            uri_text,
        } => {
            assert!(m.is_request());
            assert_eq!(m.method(), Some(method));
            assert_eq!(m.status_code(), None);
            assert_eq!(m.request_uri(), Some(&uri));
            assert!(bytes.starts_with(method_text));
            assert!(within(datagram, uri_text));
            assert_eq!(m.cseq().method_text, method_text, "CSeq method checked");
            assert_eq!(m.cseq().method, method);
            assert_ne!(m.max_forwards(), Some(0), "Max-Forwards 0 is answered 483");
            let _ = (
                uri.lr(),
                uri.transport(),
                uri.maddr(),
                uri.port_or_default(),
            );
            let _ = uri.param(b"user");
        }
        StartLine::Response { code, reason } => {
            assert!(!m.is_request());
            assert_eq!(m.method(), None);
            assert!(m.request_uri().is_none());
            assert_eq!(m.status_code(), Some(code));
            assert!((100..=699).contains(&code));
            assert!(within(datagram, reason));
        }
    }
    let mut headers = 0;
    for h in m.headers() {
        headers += 1;
        assert!(within(datagram, h.name_text) && within(datagram, h.value));
        assert_eq!(HeaderName::classify(h.name_text), h.name);
        assert!(!h.name_text.is_empty());
        assert!(!h.value.first().is_some_and(|&b| is_lws(b)));
        assert!(!h.value.last().is_some_and(|&b| is_lws(b)));
    }
    assert!(headers >= 5);
    assert_eq!(
        m.header_values(HeaderName::Other).count(),
        m.headers().filter(|h| h.name == HeaderName::Other).count()
    );
    let vias: Vec<_> = m.vias().collect();
    assert_eq!(vias.len(), m.via_count(), "every Via value was validated");
    assert_eq!(vias.first(), Some(m.top_via()));
    for via in &vias {
        let _ = via.has_magic_cookie();
        assert!(within(datagram, via.value));
    }
    assert!(!m.call_id().is_empty());
    assert_eq!(m.header(HeaderName::CallId), Some(m.call_id()));
    let _ = (
        m.cseq().number,
        m.max_forwards(),
        m.header(HeaderName::Subject),
    );
    for addr in m.routes().chain(m.record_routes()).flatten() {
        if let Ok(uri) = addr.uri() {
            let _ = (
                uri.lr(),
                uri.transport(),
                uri.maddr(),
                uri.port_or_default(),
            );
        }
    }
    for contact in m.contacts() {
        if let Ok(Contact::Address(addr)) = contact {
            let _ = addr.uri();
        }
    }
    for addr in [m.from(), m.to()] {
        assert!(within(datagram, addr.value));
        if let Ok(uri) = addr.uri() {
            let _ = (uri.user, uri.host, uri.port, uri.param(b"tag"));
        }
    }
    for tag in m.proxy_require().chain(m.require()) {
        assert!(!tag.is_empty());
    }
}

/// What a rejection asks for, written into buffers of `sizes`: nothing for
/// a datagram that is dropped (also checked with 64 bytes), else a reply
/// that starts `SIP/2.0 <code> ` and ends `Content-Length: 0\r\n\r\n`.
pub fn check_rejection(scanner: &mut Scanner, datagram: &[u8], error: &ScanError, sizes: &[usize]) {
    let source: SocketAddr = SOURCE.parse().unwrap();
    let _ = error.to_string();
    match error.answer() {
        Answer::Drop => {
            for &size in sizes.iter().chain(&[64]) {
                let mut out = vec![0u8; size];
                assert_eq!(
                    write_rejection(scanner, datagram, error, source, &mut out),
                    Err(ResponseError::NoAnswer)
                );
            }
        }
        Answer::Reply { code, .. } => {
            assert_eq!(error.kind, StartKind::Request);
            for &size in sizes {
                let mut out = vec![0u8; size];
                match write_rejection(scanner, datagram, error, source, &mut out) {
                    Ok(n) => {
                        let reply = &out[..n];
                        assert!(reply.starts_with(format!("SIP/2.0 {code} ").as_bytes()));
                        assert!(reply.ends_with(b"Content-Length: 0\r\n\r\n"));
                    }
                    Err(ResponseError::BufferFull) => assert!(size < OUT_BYTES),
                    Err(ResponseError::Unanswerable) => {}
                    Err(e) => panic!("{error}: a request asking for a reply got {e:?}"),
                }
            }
        }
    }
}

/// Forwards an accepted message and answers an accepted request, checking
/// what must hold for any input: the output scans again (with room for
/// what a hop adds, and for `Max-Forwards: 1` becoming 0, which the next
/// proxy answers with 483), the body, every header the editor does not own
/// and the Vias below ours are byte for byte the input's, and the 100 and
/// 503 scan with the request's Vias, Call-ID and CSeq.
pub fn check_forwarding(m: &Message<'_>, editor: &Editor, forward: &Forward<'_>) {
    let source = forward.source;
    let mut out = vec![0u8; OUT_BYTES];
    if m.is_request() {
        let n = editor
            .forward_request(m, forward, &mut out)
            .expect("the buffer has room for any datagram");
        let mut rescanner = Scanner::new(relaxed());
        match rescanner.scan(&out[..n]) {
            Ok(f) => {
                check_accessors(&f);
                assert_eq!(f.body(), m.body(), "body is byte-exact");
                assert_eq!(f.via_count(), m.via_count() + 1);
                let branch = [b"z9hG4bK", forward.branch_key].concat();
                assert_eq!(f.top_via().branch, Some(&branch[..]));
                assert_eq!(
                    f.max_forwards(),
                    Some(m.max_forwards().map_or(70, |h| h - 1))
                );
                assert_eq!(unowned_headers(&f), unowned_headers(m));
                assert_eq!(via_values(&f)[2..], via_values(m)[1..]);
                assert_eq!(f.call_id(), m.call_id());
                assert_eq!(f.as_bytes().len(), n);
            }
            // The next hop answers 483; the request itself was fine.
            Err(e) if m.max_forwards() == Some(1) => {
                assert_eq!(e.fault, Fault::MaxForwardsZero)
            }
            Err(e) => panic!(
                "forwarded request does not scan: {e}\n{:?}",
                String::from_utf8_lossy(&out[..n])
            ),
        }
        for response in [LocalResponse::TRYING, LocalResponse::service_unavailable(5)] {
            let n = write_response(m, source, &response, &mut out).expect("answerable");
            let mut rescanner = Scanner::new(relaxed());
            let r = rescanner.scan(&out[..n]).unwrap_or_else(|e| {
                panic!(
                    "local response does not scan: {e}\n{:?}",
                    String::from_utf8_lossy(&out[..n])
                )
            });
            check_accessors(&r);
            assert_eq!(r.status_code(), Some(response.code));
            assert_eq!(r.via_count(), m.via_count());
            assert_eq!(r.call_id(), m.call_id());
            assert_eq!(r.cseq(), m.cseq());
            assert_eq!(r.from().value, m.from().value);
            if response.code > 100 {
                assert!(r.to().tag.is_some(), "a final response has a To tag");
            }
        }
    } else {
        match editor.forward_response(m, &mut out) {
            Ok(n) => {
                let mut rescanner = Scanner::new(relaxed());
                let f = rescanner.scan(&out[..n]).unwrap_or_else(|e| {
                    panic!(
                        "forwarded response does not scan: {e}\n{:?}",
                        String::from_utf8_lossy(&out[..n])
                    )
                });
                check_accessors(&f);
                assert_eq!(f.via_count() + 1, m.via_count());
                assert_eq!(f.body(), m.body());
                assert_eq!(unowned_headers(&f), unowned_headers(m));
                assert_eq!(via_values(&f)[..], via_values(m)[1..]);
            }
            Err(EditError::ViaNotOurs | EditError::ViaOnlyOurs) => {}
            Err(e) => panic!("forwarding a response failed: {e:?}"),
        }
        let mut small = [0u8; 16];
        assert_eq!(
            write_response(m, source, &LocalResponse::TRYING, &mut small),
            Err(ResponseError::NoAnswer)
        );
    }
}

/// Scans `datagram` with each scanner. What one accepts has every accessor
/// checked and, when its flag is set, is forwarded and answered by
/// `editor()` (`check_forwarding`); what one rejects has its answer written
/// into buffers of `reply_sizes` (`check_rejection`).
pub fn exercise(
    datagram: &[u8],
    scanners: impl IntoIterator<Item = (Scanner, bool)>,
    reply_sizes: &[usize],
) {
    let forward = Forward {
        source: SOURCE.parse().unwrap(),
        branch_key: b"pr0p.T",
        record_route: true,
    };
    for (mut scanner, forwards) in scanners {
        let error = match scanner.scan(datagram) {
            Ok(m) => {
                check_accessors(&m);
                if forwards {
                    check_forwarding(&m, &editor(), &forward);
                }
                continue;
            }
            Err(e) => e,
        };
        check_rejection(&mut scanner, datagram, &error, reply_sizes);
    }
}

/// The `scan` fuzz target: the datagram under the default limits and under
/// `tiny()` ones with Proxy-Require tags supported; accessors and rejections
/// are checked, nothing is forwarded.
pub fn scan_target(data: &[u8]) {
    let scanners = [
        (Scanner::new(Limits::default()), false),
        (
            Scanner::new(tiny()).with_proxy_require_supported(["timer", "100rel"]),
            false,
        ),
    ];
    exercise(data, scanners, &[OUT_BYTES]);
}

/// The `edit` fuzz target: the first `EDIT_OPTIONS` bytes choose the source
/// address, Record-Route and the branch key (see `edit.rs`), the rest is a
/// datagram; what the default limits accept is checked and forwarded.
pub fn edit_target(data: &[u8]) {
    const TOKEN: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~";
    if data.len() < EDIT_OPTIONS {
        return;
    }
    let (options, datagram) = data.split_at(EDIT_OPTIONS);
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
    let sent_by = std::str::from_utf8(message.top_via().host)
        .ok()
        .and_then(host_ip);
    let ip = match sent_by.filter(|_| flags & 4 != 0) {
        Some(ip) => ip,
        None if flags & 1 != 0 => {
            let [a, b, c, d] = low;
            let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
            IpAddr::V6(Ipv6Addr::new(0x2001, 0x0db8, 0, 0, 0, 0, hi, lo))
        }
        None => IpAddr::V4(Ipv4Addr::from(low)),
    };
    let editor =
        Editor::new(LocalAddress::new(PROXY_HOST, PROXY_PORT).with_alias("lb.example.com", 5060));
    let forward = Forward {
        source: SocketAddr::new(ip, port),
        branch_key: &key,
        record_route: flags & 2 != 0,
    };
    check_accessors(&message);
    check_forwarding(&message, &editor, &forward);
}
