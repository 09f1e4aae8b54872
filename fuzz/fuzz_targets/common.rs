//! Checks shared by the fuzz targets and `tests/proptest_scan.rs`, which
//! includes this file with `#[path]`: `scan_target`, `edit_target` and
//! `proxy_target` are what the three targets do with one input, so that the
//! same bytes replay on stable. Each includer uses only part of this module.
//! The proxy, its outbox, its clock and the caller's CANCEL and ACK are
//! `sipshard::testkit`'s, as the unit tests' and the benches' are.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sipshard::balance::Algorithm;
use sipshard::proxy::{Counters, DropReason, Outcome, Proxy};
use sipshard::sip::{
    find_call_id, write_rejection, write_response, AddrError, Answer, Contact, Deframer, EditError,
    Editor, Fault, Forward, Frame, HeaderName, Limits, LocalAddress, LocalResponse, Message,
    Method, NameAddr, ResponseError, ScanError, Scanner, Scheme, StartKind, StartLine, StreamFault,
    StreamLimits, Transport, Uri, Via,
};
use sipshard::testkit::message::caller_request;
use sipshard::testkit::{clock, lab, Outbox, Setup};
use sipshard::txn::TxnConfig;

/// The lab's proxy address.
pub const PROXY_HOST: &str = lab::LB;
pub const PROXY_PORT: u16 = lab::LB_PORT;
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
        inbound: Transport::Udp,
        outbound: Transport::Udp,
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
        inbound: Transport::Udp,
        outbound: Transport::Udp,
    };
    check_accessors(&message);
    check_forwarding(&message, &editor, &forward);
}

// ---------------------------------------------------------------------------
// The `proxy` target: a sequence of datagrams through one `Proxy`.
// ---------------------------------------------------------------------------

/// The backends of the `proxy` target's `Proxy`: the lab's A and B.
pub const BACKENDS: [&str; 2] = [lab::BACKEND_A, lab::BACKEND_B];
/// Where a `proxy` datagram comes from: its source byte modulo 4 picks a
/// client (the lab's caller), backend A, backend B or an IPv6 client.
pub const PEERS: [&str; 4] = [lab::CALLER, BACKENDS[0], BACKENDS[1], "[2001:db8::7]:5070"];
/// The length that means "the rest of the input" (so that a datagram can
/// be larger than 65535 bytes and reach `Fault::TooLarge`).
pub const PROXY_REST: u16 = u16::MAX;

/// Option byte, bit 0: `Algorithm::CallIdHash`, else `RoundRobin`.
pub const OPTION_CALL_ID_HASH: u8 = 1;
/// Option byte, bit 1: the timed mode (see [`Record`]); else the isolated
/// mode, where each datagram comes an hour after the last.
pub const OPTION_TIMED: u8 = 2;
/// `max_transactions` in the timed mode, by option bits 2-3: small, so
/// that a full table (503) is reached by a short input.
pub const TIMED_MAX_TRANSACTIONS: [usize; 4] = [64, 16, 4, 1];
/// `max_transactions` in the isolated mode (and of [`proxy`]).
pub const MAX_TRANSACTIONS: usize = 64;
/// A time step's unit, by the low two bits of its kind byte.
pub const STEP_UNITS_MS: [u64; 4] = [1, 10, 100, 1_000];
/// The end of every input: the clock goes on by this twice, running the
/// timers at their deadlines, and then no transaction may be left.
pub const DRAIN_MS: u64 = 600_000;
/// How many of the requests and responses the proxy sent (and of the
/// INVITEs it received) answer, ICMP, CANCEL and ACK records can name.
const HISTORY: usize = 32;

/// One record of a `proxy` input: 2 bytes (`word`), a kind byte, then the
/// datagram for kinds below 0x80.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// Kinds 0x00-0x7f: a datagram of `word` bytes (`ffff`, or past the
    /// end: the rest of the input) from `PEERS[kind % 4]`.
    Datagram { source: SocketAddr, bytes: &'a [u8] },
    /// Kinds 0x80-0x9f: the clock goes on by `word` units of
    /// `STEP_UNITS_MS[kind & 3]` (up to 18 hours). The timers run at
    /// their deadlines, as a shard that sleeps until `next_deadline` runs
    /// them, or with bit 2 (`late`) once at the end, as a shard that was
    /// busy runs them.
    Step { ms: u64, late: bool },
    /// Kinds 0xa0-0xbf: an ICMP error for the destination of the
    /// `kind & 0x1f`-th latest request the proxy sent.
    Unreachable { nth: usize },
    /// Kinds 0xc0-0xdf: the `kind & 0x1f`-th latest request the proxy
    /// sent is answered `100 + word % 600` by its destination (a response
    /// with its Vias, From, To with a tag, Call-ID and CSeq).
    Answer { nth: usize, code: u16 },
    /// Kinds 0xe0-0xef: the sender of the `kind & 0xf`-th latest INVITE
    /// the proxy received cancels it (the INVITE with CANCEL for method).
    Cancel { nth: usize },
    /// Kinds 0xf0-0xff: the same sender ACKs it (the INVITE with ACK for
    /// method and the To of the latest response the proxy sent it).
    Ack { nth: usize },
}

/// A decoded `proxy` input.
#[derive(Clone, Debug)]
pub struct ProxyInput<'a> {
    pub algorithm: Algorithm,
    pub timed: bool,
    pub max_transactions: usize,
    pub records: Vec<Record<'a>>,
}

/// Encodes a `proxy` input in the isolated mode: the option byte (bit 0:
/// Call-ID hash instead of round robin), then per datagram a 2-byte
/// big-endian length, the source byte (an index into `PEERS`) and the
/// bytes. The seed generator uses it.
pub fn proxy_input(call_id_hash: bool, datagrams: &[(u8, &[u8])]) -> Vec<u8> {
    let seeds: Vec<Seed<'_>> = datagrams.iter().map(|&(p, d)| Seed::Peer(p, d)).collect();
    timed_proxy_input(u8::from(call_id_hash), &seeds)
}

/// A record as the seed generator writes it (see [`Record`]).
#[derive(Clone, Copy, Debug)]
pub enum Seed<'a> {
    /// A datagram from `PEERS[peer]`.
    Peer(u8, &'a [u8]),
    /// A time step of this many milliseconds (rounded down to its unit),
    /// timers at their deadlines.
    Step(u64),
    /// The same, timers run once at its end.
    LateStep(u64),
    Unreachable(u8),
    /// The n-th latest request sent, answered with this code.
    Answer(u8, u16),
    Cancel(u8),
    Ack(u8),
}

/// Encodes a `proxy` input: the option byte as it is, then the records.
pub fn timed_proxy_input(options: u8, records: &[Seed<'_>]) -> Vec<u8> {
    let mut input = vec![options];
    let mut put = |word: u16, kind: u8, bytes: &[u8]| {
        input.extend_from_slice(&word.to_be_bytes());
        input.push(kind);
        input.extend_from_slice(bytes);
    };
    for &record in records {
        match record {
            Seed::Peer(peer, datagram) => {
                let len = u16::try_from(datagram.len()).expect("a seed datagram under 64 KiB");
                assert_ne!(len, PROXY_REST);
                assert!(peer < 0x80);
                put(len, peer, datagram);
            }
            Seed::Step(ms) | Seed::LateStep(ms) => {
                let late = if matches!(record, Seed::LateStep(_)) {
                    4
                } else {
                    0
                };
                let unit = (0..4)
                    .find(|&u| ms / STEP_UNITS_MS[u] <= u64::from(u16::MAX))
                    .expect("a step under 18 hours");
                let word = (ms / STEP_UNITS_MS[unit]) as u16;
                put(word, 0x80 | late | unit as u8, &[]);
            }
            Seed::Unreachable(nth) => put(0, 0xa0 | (nth & 0x1f), &[]),
            Seed::Answer(nth, code) => put(code - 100, 0xc0 | (nth & 0x1f), &[]),
            Seed::Cancel(nth) => put(0, 0xe0 | (nth & 0xf), &[]),
            Seed::Ack(nth) => put(0, 0xf0 | (nth & 0xf), &[]),
        }
    }
    input
}

/// Decodes a `proxy` input: its option byte, then records until fewer
/// than 3 bytes are left.
pub fn proxy_records(data: &[u8]) -> ProxyInput<'_> {
    let (options, mut rest) = data.split_first().map_or((0, &[][..]), |(&o, r)| (o, r));
    let algorithm = if options & OPTION_CALL_ID_HASH == 0 {
        Algorithm::RoundRobin
    } else {
        Algorithm::CallIdHash
    };
    let mut records = Vec::new();
    while rest.len() >= 3 {
        let word = u16::from_be_bytes([rest[0], rest[1]]);
        let kind = rest[2];
        rest = &rest[3..];
        let nth = usize::from(kind & 0x1f);
        let record = match kind {
            0x00..=0x7f => {
                let len = if word == PROXY_REST {
                    rest.len()
                } else {
                    usize::from(word).min(rest.len())
                };
                let (bytes, tail) = rest.split_at(len);
                rest = tail;
                Record::Datagram {
                    source: PEERS[usize::from(kind) % PEERS.len()].parse().unwrap(),
                    bytes,
                }
            }
            0x80..=0x9f => Record::Step {
                ms: u64::from(word) * STEP_UNITS_MS[usize::from(kind & 3)],
                late: kind & 4 != 0,
            },
            0xa0..=0xbf => Record::Unreachable { nth },
            0xc0..=0xdf => Record::Answer {
                nth,
                code: 100 + word % 600,
            },
            0xe0..=0xef => Record::Cancel { nth: nth & 0xf },
            _ => Record::Ack { nth: nth & 0xf },
        };
        records.push(record);
    }
    ProxyInput {
        algorithm,
        timed: options & OPTION_TIMED != 0,
        max_transactions: TIMED_MAX_TRANSACTIONS[usize::from(options >> 2) & 3],
        records,
    }
}

/// The `proxy` fuzz target. In the isolated mode every datagram of the
/// input goes through one `Proxy` an hour after the last (see
/// `ProxyRun::handle` for what is checked), and every request it forwards
/// to a backend is fed back from that backend once; the other records are
/// skipped. In the timed mode every record goes through one `Proxy` as it
/// comes (see `TimedRun`). Either way the input ends with two 10-minute
/// steps, after which no transaction and no timer may be left.
pub fn proxy_target(data: &[u8]) {
    let input = proxy_records(data);
    if input.timed {
        let mut run = TimedRun::new(input.algorithm, input.max_transactions);
        for record in input.records {
            run.record(record);
        }
        run.finish();
    } else {
        let mut run = ProxyRun::new(input.algorithm);
        for record in input.records {
            if let Record::Datagram { source, bytes } = record {
                run.handle(source, bytes, true);
            }
        }
        run.finish();
    }
}

/// The `Proxy` of the `proxy` target's isolated mode.
pub fn proxy(algorithm: Algorithm) -> Proxy {
    proxy_with(algorithm, MAX_TRANSACTIONS)
}

/// A `Proxy` of the `proxy` target with a table of `max_transactions`.
pub fn proxy_with(algorithm: Algorithm, max_transactions: usize) -> Proxy {
    Setup {
        backends: lab::addresses(&BACKENDS),
        algorithm,
        // A small table: the default reserves 63 MiB per proxy, and the
        // fuzzer makes one proxy per input.
        // UDP up to the largest datagram, as the model below predicts
        // (moving large requests to TCP, §18.1.1, is tested in
        // `proxy::stream_tests`).
        txn: TxnConfig {
            max_transactions,
            udp_request_bytes_max: sipshard::sip::UDP_PAYLOAD_MAX,
            ..TxnConfig::default()
        },
        seed: 1,
        ..Setup::default()
    }
    .proxy()
}

/// What the proxy sent for one datagram, in the shape these checks were
/// written for: the last datagram sent (a 100 Trying before it is checked
/// apart), or the reason nothing was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Forward { to: SocketAddr, len: usize },
    Reply { to: SocketAddr, len: usize },
    Drop(DropReason),
}

/// The counters as an array in declaration order. Destructured, so that a
/// new counter fails to compile here until the accounting below knows it.
fn counter_array(c: &Counters) -> [u64; 12] {
    // Transaction counters (tries, timers, CANCEL) are not outcomes of a
    // datagram: each datagram here meets an empty transaction table.
    let Counters {
        requests_forwarded,
        responses_forwarded,
        replies,
        loops_detected,
        dropped_malformed,
        dropped_unanswerable,
        dropped_response_not_ours,
        dropped_response_for_us,
        dropped_unresolved,
        dropped_buffer_full,
        dropped_no_backend,
        shed_dropped,
        requests_sent: _,
        transactions_started: _,
        retransmissions_absorbed: _,
        retransmissions_sent: _,
        absorbed: _,
        cancels: _,
        failovers: _,
        timeouts: _,
        try_timeouts: _,
        timer_c_fired: _,
        ack_timeouts: _,
        unreachable: _,
        overload_rejected: _,
        unavailable_rejected: _,
        shed_rejected: _,
        // Counted besides the outcome (admitted, answered 503 or dropped).
        admission_checked: _,
        local_acks_absorbed: _,
        // Counted besides the outcome (a request forwarded over TCP).
        moved_to_tcp: _,
        // Counted besides the outcome (a 400 for too many headers is a reply too).
        limits: _,
    } = *c;
    [
        requests_forwarded,
        responses_forwarded,
        replies,
        loops_detected,
        dropped_malformed,
        dropped_unanswerable,
        dropped_response_not_ours,
        dropped_response_for_us,
        dropped_unresolved,
        dropped_buffer_full,
        dropped_no_backend,
        shed_dropped,
    ]
}

const REQUESTS_FORWARDED: usize = 0;
const RESPONSES_FORWARDED: usize = 1;
const REPLIES: usize = 2;
/// Not an outcome of its own: a 482 is also counted in `replies`.
const LOOPS_DETECTED: usize = 3;

/// The counter an action increments (besides `loops_detected`).
fn outcome_counter(action: &Action, input_is_request: Option<bool>) -> usize {
    match action {
        Action::Forward { .. } => match input_is_request {
            Some(true) => REQUESTS_FORWARDED,
            Some(false) => RESPONSES_FORWARDED,
            None => panic!("forwarded a datagram that does not scan: {action:?}"),
        },
        Action::Reply { .. } => REPLIES,
        Action::Drop(reason) => match reason {
            DropReason::Malformed(_) => 4,
            DropReason::Unanswerable => 5,
            DropReason::ResponseNotOurs => 6,
            DropReason::ResponseForUs => 7,
            DropReason::UnresolvedNextHop => 8,
            DropReason::BufferFull => 9,
            DropReason::NoBackend => 10,
            DropReason::Overloaded => 11,
        },
    }
}

/// Where an accepted request must go, computed from the message alone.
#[derive(Debug, PartialEq, Eq)]
enum Hop {
    /// Our Route was on top: the next Route's address, else the
    /// Request-URI's (`None` when that host is not an IP literal).
    Uri(Option<SocketAddr>),
    /// No Route of ours on top: one of `BACKENDS`.
    Pool,
}

fn names_us(addr: &NameAddr<'_>) -> bool {
    addr.uri().is_ok_and(|u| {
        matches!(u.scheme, Scheme::Sip | Scheme::Sips)
            && u.host.eq_ignore_ascii_case(PROXY_HOST.as_bytes())
            && u.port_or_default() == PROXY_PORT
    })
}

fn uri_address(uri: &Uri<'_>) -> Option<SocketAddr> {
    let host = std::str::from_utf8(uri.maddr().unwrap_or(uri.host)).ok()?;
    Some(SocketAddr::new(host_ip(host)?, uri.port_or_default()))
}

/// Whether the top Route names us, and where the request goes then.
fn expected_hop(m: &Message<'_>) -> (bool, Hop) {
    let mut routes = m.routes();
    if !matches!(routes.next(), Some(Ok(top)) if names_us(&top)) {
        return (false, Hop::Pool);
    }
    let to = match routes.next() {
        Some(Ok(next)) => next.uri().ok().as_ref().and_then(uri_address),
        Some(Err(_)) => None,
        None => m.request_uri().and_then(uri_address),
    };
    (true, Hop::Uri(to))
}

/// Whether any Via is ours with a `<transaction>.<loop>` branch: what loop
/// detection needs before it can answer 482.
fn has_our_branch(m: &Message<'_>) -> bool {
    m.vias().any(|v| {
        v.host.eq_ignore_ascii_case(PROXY_HOST.as_bytes())
            && v.port.unwrap_or(5060) == PROXY_PORT
            && v.branch
                .and_then(|b| b.strip_prefix(b"z9hG4bK"))
                .is_some_and(|b| b.len() >= 17 && b[b.len() - 17] == b'.')
    })
}

/// Where a response we forward goes: the second Via's `received` (else its
/// sent-by when that is an IP literal), at its `rport` (else its port).
fn expected_response_address(via: &Via<'_>) -> Option<SocketAddr> {
    let host = std::str::from_utf8(via.received.unwrap_or(via.host)).ok()?;
    let port = match via.rport {
        Some(Some(port)) => port,
        _ => via.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(host_ip(host)?, port))
}

fn route_list(m: &Message<'_>) -> Vec<Result<Vec<u8>, AddrError>> {
    m.routes().map(|r| r.map(|a| a.value.to_vec())).collect()
}

fn record_route_list(m: &Message<'_>) -> Vec<Result<Vec<u8>, AddrError>> {
    m.record_routes()
        .map(|r| r.map(|a| a.value.to_vec()))
        .collect()
}

fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Faults a rejection reply may carry over from the request it answers: it
/// echoes the request's Vias (one per line), From, To, Call-ID and CSeq as
/// they are (RFC 4475 insuf still gets its 400), so a broken or missing one
/// of those, or more Via values than a message may hold, is broken or
/// missing in the reply too; so is a control character in one of them.
fn inherited_fault(fault: Fault) -> bool {
    matches!(
        fault,
        Fault::ControlCharacter
            | Fault::Via(_)
            | Fault::TooManyVia
            | Fault::TooManyHeaders
            | Fault::TooLarge
            | Fault::From(_)
            | Fault::To(_)
            | Fault::CallId
            | Fault::CSeq
            | Fault::Missing(HeaderName::From | HeaderName::To | HeaderName::CallId)
            | Fault::Missing(HeaderName::CSeq)
    )
}

/// One `Proxy` and what the checks remember between datagrams.
pub struct ProxyRun {
    proxy: Proxy,
    /// The fake clock: each datagram comes an hour after the last, once
    /// every timer of the one before has run, so each meets an empty table.
    now: u64,
    algorithm: Algorithm,
    backends: [SocketAddr; 2],
    out: Vec<u8>,
    /// Datagrams handed to `Proxy::handle`.
    handled: u64,
    /// Outcome counts the timers added between datagrams.
    timer_outcomes: u64,
    counters: [u64; 12],
    /// The backend of the last round-robin pick: the next must differ.
    last_round_robin: Option<SocketAddr>,
    /// The backend each Call-ID hashed to.
    hashed: HashMap<Vec<u8>, SocketAddr>,
}

impl ProxyRun {
    pub fn new(algorithm: Algorithm) -> ProxyRun {
        ProxyRun {
            proxy: proxy(algorithm),
            now: 0,
            algorithm,
            backends: [BACKENDS[0].parse().unwrap(), BACKENDS[1].parse().unwrap()],
            out: vec![0u8; OUT_BYTES],
            handled: 0,
            timer_outcomes: 0,
            counters: [0; 12],
            last_round_robin: None,
            hashed: HashMap::new(),
        }
    }

    /// Hands one datagram to the proxy and checks the action, what it
    /// wrote and the counters. A request forwarded to a backend is fed back
    /// from that backend when `feed_back`: if it scans, that is a loop.
    pub fn handle(&mut self, source: SocketAddr, datagram: &[u8], feed_back: bool) -> Action {
        check_find_call_id(datagram);
        self.run_down();
        // Timers retransmit, fail over and answer: not this datagram's doing.
        let after_timers = counter_array(self.proxy.counters());
        let outcomes = |c: &[u64; 12]| -> u64 {
            c.iter()
                .enumerate()
                .filter(|&(i, _)| i != LOOPS_DETECTED)
                .map(|(_, n)| n)
                .sum()
        };
        self.timer_outcomes += outcomes(&after_timers) - outcomes(&self.counters);
        self.counters = after_timers;
        let mut outbox = Outbox::default();
        let outcome = self
            .proxy
            .handle(self.now, source.into(), datagram, &mut outbox);
        check_bounds(&self.proxy, MAX_TRANSACTIONS);
        let mut sent = outbox.sent;
        if outcome == Outcome::Forwarded
            && sent.len() == 2
            && sent[0].1.starts_with(b"SIP/2.0 100 Trying\r\n")
        {
            // An INVITE's 100 goes back where its answers go.
            let (trying_to, _) = sent.remove(0);
            let mut scanner = Scanner::new(Limits::default());
            let request = scanner
                .scan(datagram)
                .expect("an INVITE that went on scanned");
            assert_eq!(request.method(), Some(Method::Invite));
            assert_eq!(
                trying_to,
                sipshard::proxy::reply_address(request.top_via(), source.into())
            );
        }
        assert!(sent.len() <= 1, "{outcome:?} sent {}", sent.len());
        let action = match (outcome, sent.pop()) {
            (Outcome::Forwarded, Some((to, bytes))) => {
                self.out[..bytes.len()].copy_from_slice(&bytes);
                Action::Forward {
                    to: to.addr,
                    len: bytes.len(),
                }
            }
            (Outcome::Replied, Some((to, bytes))) => {
                self.out[..bytes.len()].copy_from_slice(&bytes);
                Action::Reply {
                    to: to.addr,
                    len: bytes.len(),
                }
            }
            (Outcome::Dropped(reason), None) => Action::Drop(reason),
            (outcome, sent) => panic!("{outcome:?} with {sent:?}"),
        };
        self.handled += 1;

        let mut scanner = Scanner::new(Limits::default());
        let input = scanner.scan(datagram);
        let input_is_request = input.as_ref().ok().map(|m| m.is_request());
        self.check_counters(&action, input_is_request);

        let written = match action {
            Action::Forward { len, .. } | Action::Reply { len, .. } => {
                assert!(len <= self.out.len(), "{action:?} past the buffer");
                self.out[..len].to_vec()
            }
            Action::Drop(_) => Vec::new(),
        };
        let written = &written[..];
        let mut loop_back = None;
        match (&input, action) {
            (Ok(m), Action::Forward { to, .. }) if m.is_request() => {
                let pool = self.check_forwarded_request(m, source, to, written);
                if pool && feed_back {
                    loop_back = Some((to, written.to_vec()));
                }
            }
            (Ok(m), Action::Forward { to, .. }) => check_forwarded_response(m, to, written),
            (Ok(m), Action::Reply { to, .. }) => check_loop_reply(m, source, to, written),
            (Err(e), Action::Reply { to, .. }) => check_rejection_reply(e, source, to, written),
            (Ok(m), Action::Drop(reason)) => check_drop(m, reason),
            (Err(e), Action::Drop(reason)) => match reason {
                DropReason::Malformed(fault) => {
                    assert_eq!(fault, e.fault);
                    assert_eq!(e.answer(), Answer::Drop, "{e}: dropped unanswered");
                }
                // No Via, a framing error, or a reply larger than the buffer.
                DropReason::Unanswerable => {
                    assert!(matches!(e.answer(), Answer::Reply { .. }), "{e}")
                }
                _ => panic!("{e}: dropped as {reason:?}"),
            },
            (Err(e), Action::Forward { .. }) => panic!("{e}: forwarded anyway"),
        }

        if let Some((backend, request)) = loop_back {
            let loops = self.counters[LOOPS_DETECTED];
            let scans = Scanner::new(Limits::default()).scan(&request).is_ok();
            let again = self.handle(backend, &request, false);
            if scans {
                // Same Request-URI, tags, Call-ID and CSeq, and our Via with
                // its loop hash: RFC 3261 §16.3 step 4.
                assert!(
                    matches!(again, Action::Reply { .. }),
                    "a request that came back unchanged was not a loop: {again:?}\n{}",
                    text(&request)
                );
                assert!(self.out.starts_with(b"SIP/2.0 482 Loop Detected\r\n"));
                assert_eq!(self.counters[LOOPS_DETECTED], loops + 1);
            }
        }
        action
    }

    /// The end of an input: every transaction ends, and what the timers
    /// send on the way scans.
    pub fn finish(&mut self) {
        self.run_down();
    }

    /// An hour goes by, the timers running at their deadlines: what they
    /// send (retransmissions, failover, 408) is checked as the timed mode
    /// checks it, and then no transaction or timer may be left.
    fn run_down(&mut self) {
        let end = self.now + 3_600_000;
        while let Some(at) = clock::step_toward(&mut self.now, end, self.proxy.next_deadline()) {
            let mut outbox = Outbox::default();
            self.proxy.on_timers(at, &mut outbox);
            check_bounds(&self.proxy, MAX_TRANSACTIONS);
            for (to, bytes) in &outbox.sent {
                check_sent(to.addr, bytes);
            }
        }
        check_drained(&self.proxy);
    }

    /// Counters never decrease; each datagram adds one to exactly the
    /// counter of its outcome (a 482 to `loops_detected` as well), so the
    /// outcome counters (all but `loops_detected`) add up to the datagrams
    /// handled.
    fn check_counters(&mut self, action: &Action, input_is_request: Option<bool>) {
        let now = counter_array(self.proxy.counters());
        let mut expected = self.counters;
        expected[outcome_counter(action, input_is_request)] += 1;
        if matches!(action, Action::Reply { .. }) && input_is_request == Some(true) {
            expected[LOOPS_DETECTED] += 1;
        }
        for (i, (&before, &after)) in self.counters.iter().zip(&now).enumerate() {
            assert!(
                after >= before,
                "counter {i} went down: {before} -> {after}"
            );
        }
        assert_eq!(now, expected, "counters after {action:?}");
        let outcomes: u64 = now
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != LOOPS_DETECTED)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(outcomes, self.handled + self.timer_outcomes);
        assert!(now[LOOPS_DETECTED] <= now[REPLIES]);
        self.counters = now;
    }

    /// A forwarded request: scans (allowing for what a hop adds), our Via
    /// on top with a `<transaction>.<loop>` branch, everything we do not own
    /// unchanged, our Route popped when it was on top, Record-Route when it
    /// creates a dialog, and sent where routing says. Returns whether it
    /// went to the pool.
    fn check_forwarded_request(
        &mut self,
        m: &Message<'_>,
        source: SocketAddr,
        to: SocketAddr,
        written: &[u8],
    ) -> bool {
        let (ours_on_top, hop) = expected_hop(m);
        let mut rescanner = Scanner::new(relaxed());
        match rescanner.scan(written) {
            Ok(f) => {
                check_accessors(&f);
                assert!(f.is_request());
                assert_eq!(f.start_line(), m.start_line());
                assert_eq!(f.via_count(), m.via_count() + 1);
                let top = f.top_via();
                assert_eq!(top.host, PROXY_HOST.as_bytes());
                assert_eq!(top.port, Some(PROXY_PORT));
                let branch = top.branch.expect("our Via has a branch");
                let key = branch.strip_prefix(b"z9hG4bK").expect("magic cookie");
                assert_eq!(key.len(), 33, "{}", text(branch));
                assert_eq!(key[16], b'.');
                assert!(key[..16]
                    .iter()
                    .chain(&key[17..])
                    .all(u8::is_ascii_hexdigit));
                assert_eq!(via_values(&f)[2..], via_values(m)[1..]);
                assert_eq!(unowned_headers(&f), unowned_headers(m));
                assert_eq!(f.call_id(), m.call_id());
                assert_eq!(f.cseq(), m.cseq());
                assert_eq!(f.body(), m.body());
                assert_eq!(
                    f.max_forwards(),
                    Some(m.max_forwards().map_or(70, |h| h - 1))
                );
                // RFC 3581: a bare rport is filled in with the source port,
                // and received says where the packet came from.
                let client = f.vias().nth(1).expect("the sender's Via");
                if m.top_via().rport == Some(None) {
                    assert_eq!(client.rport, Some(Some(source.port())));
                    let received = client.received.map(text);
                    assert_eq!(
                        received.as_deref().and_then(host_ip),
                        Some(source.ip()),
                        "{}",
                        text(client.value)
                    );
                }
                let mut routes = route_list(m);
                if ours_on_top {
                    let _popped = routes.remove(0);
                }
                assert_eq!(route_list(&f), routes, "our Route popped, no other");
                let method = m.method().unwrap_or(Method::Other);
                let mut record_routes = record_route_list(m);
                if m.to().tag.is_none() && method.creates_dialog() {
                    let ours = format!("<sip:{PROXY_HOST}:{PROXY_PORT};lr>").into_bytes();
                    record_routes.insert(0, Ok(ours));
                }
                assert_eq!(record_route_list(&f), record_routes);
            }
            // The next hop answers 483; the request itself was fine.
            Err(e) if m.max_forwards() == Some(1) => {
                assert_eq!(e.fault, Fault::MaxForwardsZero)
            }
            Err(e) => panic!("forwarded request does not scan: {e}\n{}", text(written)),
        }
        match hop {
            Hop::Uri(address) => {
                assert_eq!(Some(to), address, "loose routing");
                false
            }
            Hop::Pool => {
                assert!(self.backends.contains(&to), "{to} is not a backend");
                let method = m.method().unwrap_or(Method::Other);
                let sticky = m.to().tag.is_some() || matches!(method, Method::Ack | Method::Cancel);
                if sticky || self.algorithm == Algorithm::CallIdHash {
                    let first = *self.hashed.entry(m.call_id().to_vec()).or_insert(to);
                    assert_eq!(first, to, "a Call-ID sticks to its backend");
                } else {
                    assert_ne!(self.last_round_robin, Some(to), "round robin alternates");
                    self.last_round_robin = Some(to);
                }
                true
            }
        }
    }
}

/// `find_call_id` never panics, and agrees with the scanner on every
/// accepted datagram whose Call-ID value is on one line.
pub fn check_find_call_id(datagram: &[u8]) {
    let found = find_call_id(datagram);
    let mut scanner = Scanner::new(Limits::default());
    if let Ok(m) = scanner.scan(datagram) {
        if !m.call_id().iter().any(|&b| b == b'\r' || b == b'\n') {
            assert_eq!(
                found.map(text),
                Some(text(m.call_id())),
                "find_call_id disagrees with the scanner on\n{:?}",
                text(datagram)
            );
        }
    }
}

/// A forwarded response: our Via off the top, nothing else changed, sent
/// to the next Via's received/rport address.
fn check_forwarded_response(m: &Message<'_>, to: SocketAddr, written: &[u8]) {
    let top = m.top_via();
    assert!(top.host.eq_ignore_ascii_case(PROXY_HOST.as_bytes()));
    assert_eq!(top.port.unwrap_or(5060), PROXY_PORT);
    let mut rescanner = Scanner::new(relaxed());
    let f = rescanner
        .scan(written)
        .unwrap_or_else(|e| panic!("forwarded response does not scan: {e}\n{}", text(written)));
    check_accessors(&f);
    assert_eq!(f.start_line(), m.start_line());
    assert_eq!(f.via_count() + 1, m.via_count(), "one Via fewer");
    assert_eq!(via_values(&f)[..], via_values(m)[1..]);
    assert_eq!(unowned_headers(&f), unowned_headers(m));
    assert_eq!(route_list(&f), route_list(m));
    assert_eq!(record_route_list(&f), record_route_list(m));
    assert_eq!(f.body(), m.body());
    let next = m.vias().nth(1).expect("a second Via");
    assert_eq!(Some(to), expected_response_address(&next));
}

/// A reply to an accepted request can only be the 482 of a loop.
fn check_loop_reply(m: &Message<'_>, source: SocketAddr, to: SocketAddr, written: &[u8]) {
    assert!(m.is_request(), "a response was answered");
    assert!(has_our_branch(m), "482 without a Via of ours");
    assert!(written.starts_with(b"SIP/2.0 482 Loop Detected\r\n"));
    let mut rescanner = Scanner::new(relaxed());
    let r = rescanner
        .scan(written)
        .unwrap_or_else(|e| panic!("482 does not scan: {e}\n{}", text(written)));
    check_accessors(&r);
    assert_eq!(r.status_code(), Some(482));
    assert_eq!(r.via_count(), m.via_count());
    assert_eq!(r.call_id(), m.call_id());
    assert_eq!(r.cseq(), m.cseq());
    assert_eq!(r.from().value, m.from().value);
    assert!(r.to().tag.is_some());
    let via = m.top_via();
    let expected = if via.rport.is_some() {
        source
    } else {
        SocketAddr::new(source.ip(), via.port.unwrap_or(5060))
    };
    assert_eq!(to, expected, "RFC 3261 §18.2.2, RFC 3581");
}

/// The answer to a rejected request goes back to the packet's source with
/// the code the error asks for; it scans unless it echoes a header that is
/// broken in the request as well.
fn check_rejection_reply(e: &ScanError, source: SocketAddr, to: SocketAddr, written: &[u8]) {
    let Answer::Reply { code, .. } = e.answer() else {
        panic!("{e}: answered, but it asks for silence");
    };
    assert_eq!(to, source);
    assert!(written.starts_with(format!("SIP/2.0 {code} ").as_bytes()));
    assert!(written.ends_with(b"Content-Length: 0\r\n\r\n"));
    let mut rescanner = Scanner::new(relaxed());
    match rescanner.scan(written) {
        Ok(r) => {
            check_accessors(&r);
            assert_eq!(r.status_code(), Some(code));
        }
        Err(re) => assert!(
            inherited_fault(re.fault),
            "{e}: the reply does not scan: {re}\n{}",
            text(written)
        ),
    }
}

/// Why an accepted message may be dropped.
fn check_drop(m: &Message<'_>, reason: DropReason) {
    if m.is_request() {
        // Two backends and a buffer larger than any forward: only a next
        // hop that is a host name stops a request.
        assert_eq!(
            reason,
            DropReason::UnresolvedNextHop,
            "{}",
            text(m.datagram())
        );
        assert_eq!(expected_hop(m), (true, Hop::Uri(None)));
        return;
    }
    let top = m.top_via();
    let ours = top.host.eq_ignore_ascii_case(PROXY_HOST.as_bytes())
        && top.port.unwrap_or(5060) == PROXY_PORT
        && top.branch.is_some_and(|b| b.starts_with(b"z9hG4bK"));
    match reason {
        DropReason::ResponseNotOurs => assert!(!ours),
        DropReason::ResponseForUs => assert!(ours && m.via_count() == 1),
        DropReason::UnresolvedNextHop => {
            assert!(ours);
            let next = m.vias().nth(1).expect("a second Via");
            assert_eq!(expected_response_address(&next), None);
        }
        _ => panic!("response dropped as {reason:?}"),
    }
}

// ---------------------------------------------------------------------------
// What holds for any proxy at any time, and the timed mode.
// ---------------------------------------------------------------------------

/// Every counter, in declaration order, the limit counts last.
/// Destructured, so that a new counter fails to compile here until it is
/// known.
fn all_counters(c: &Counters) -> Vec<u64> {
    let Counters {
        requests_forwarded,
        responses_forwarded,
        replies,
        loops_detected,
        requests_sent,
        transactions_started,
        retransmissions_absorbed,
        retransmissions_sent,
        absorbed,
        cancels,
        failovers,
        timeouts,
        try_timeouts,
        timer_c_fired,
        ack_timeouts,
        unreachable,
        overload_rejected,
        dropped_malformed,
        dropped_unanswerable,
        dropped_response_not_ours,
        dropped_response_for_us,
        dropped_unresolved,
        dropped_buffer_full,
        dropped_no_backend,
        unavailable_rejected,
        shed_rejected,
        shed_dropped,
        admission_checked,
        local_acks_absorbed,
        moved_to_tcp,
        limits,
    } = *c;
    let mut all = vec![
        requests_forwarded,
        responses_forwarded,
        replies,
        loops_detected,
        requests_sent,
        transactions_started,
        retransmissions_absorbed,
        retransmissions_sent,
        absorbed,
        cancels,
        failovers,
        timeouts,
        try_timeouts,
        timer_c_fired,
        ack_timeouts,
        unreachable,
        overload_rejected,
        dropped_malformed,
        dropped_unanswerable,
        dropped_response_not_ours,
        dropped_response_for_us,
        dropped_unresolved,
        dropped_buffer_full,
        dropped_no_backend,
        unavailable_rejected,
        shed_rejected,
        shed_dropped,
        admission_checked,
        local_acks_absorbed,
        moved_to_tcp,
    ];
    all.extend_from_slice(&limits.0);
    all
}

/// `overload_rejected` in `all_counters`.
const OVERLOAD_REJECTED: usize = 16;

/// The table's bounds: at most `max` server transactions, twice that in
/// client transactions, dialogs no more than `max`, and no timer but the
/// ones the live transactions hold (two per server, three per client), so
/// that none leaks and the wheel, sized for those, never fills.
pub fn check_bounds(proxy: &Proxy, max: usize) {
    let (servers, clients) = proxy.transactions();
    assert!(
        servers <= max,
        "{servers} server transactions, the bound is {max}"
    );
    assert!(
        clients <= 2 * max,
        "{clients} client transactions, the bound is {}",
        2 * max
    );
    let timers = proxy.timers();
    assert!(
        timers <= 2 * servers + 3 * clients,
        "{timers} timers for {servers} server and {clients} client transactions"
    );
    assert!(proxy.dialogs() <= max, "{} dialogs", proxy.dialogs());
}

/// Nothing stuck: no transaction, no timer, nothing to wake up for.
pub fn check_drained(proxy: &Proxy) {
    assert_eq!(
        (proxy.transactions(), proxy.timers(), proxy.next_deadline()),
        ((0, 0), 0, None),
        "(servers, clients), timers, next deadline: a transaction or timer outlived every timeout"
    );
}

/// A request's `Max-Forwards` value made 1 (the proxy legitimately sends
/// 0 when it got 1, which a scanner answers 483), so that it can be scanned.
fn max_forwards_one(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut lines = bytes.split_inclusive(|&b| b == b'\n');
    for line in lines.by_ref() {
        let name_end = line.iter().position(|&b| b == b':');
        let is_max_forwards = name_end.is_some_and(|end| {
            line[..end]
                .trim_ascii_end()
                .eq_ignore_ascii_case(b"Max-Forwards")
        });
        if is_max_forwards {
            let end = name_end.unwrap_or(0);
            out.extend_from_slice(&line[..=end]);
            out.extend_from_slice(b" 1");
            let eol = if line.ends_with(b"\r\n") {
                &b"\r\n"[..]
            } else {
                b"\n"
            };
            out.extend_from_slice(eol);
        } else {
            out.extend_from_slice(line);
        }
        if line == b"\r\n" || line == b"\n" {
            // The body stays as it is.
            break;
        }
    }
    for line in lines {
        out.extend_from_slice(line);
    }
    out
}

/// Our Via: our address, and a `z9hG4bK<16 hex>.<16 hex>` branch.
fn check_our_via(via: &Via<'_>, bytes: &[u8]) {
    assert_eq!(via.host, PROXY_HOST.as_bytes(), "{}", text(bytes));
    assert_eq!(via.port, Some(PROXY_PORT), "{}", text(bytes));
    let branch = via.branch.expect("our Via has a branch");
    let key = branch.strip_prefix(b"z9hG4bK").expect("magic cookie");
    assert_eq!(key.len(), 33, "{}", text(branch));
    assert_eq!(key[16], b'.');
    assert!(key[..16]
        .iter()
        .chain(&key[17..])
        .all(u8::is_ascii_hexdigit));
}

/// Anything the proxy sends but the answer to a datagram that does not
/// scan (checked by `check_rejection_reply`): not empty, and it scans with
/// a fresh scanner (allowing for what a hop adds); a request carries our
/// Via on top (a `Max-Forwards: 0` request, made from one with 1, scans
/// once its value is put back to 1).
pub fn check_sent(to: SocketAddr, bytes: &[u8]) {
    assert!(!bytes.is_empty(), "an empty datagram sent to {to}");
    let mut rescanner = Scanner::new(relaxed());
    let patched;
    let bytes = match rescanner.scan(bytes) {
        Err(e) if e.kind == StartKind::Request && e.fault == Fault::MaxForwardsZero => {
            patched = max_forwards_one(bytes);
            &patched[..]
        }
        _ => bytes,
    };
    match rescanner.scan(bytes) {
        Ok(m) => {
            check_accessors(&m);
            if m.is_request() {
                check_our_via(m.top_via(), bytes);
            }
        }
        Err(e) => panic!("sent to {to}, does not scan: {e}\n{}", text(bytes)),
    }
}

/// Whether what was sent is a response (a method has no `/`).
fn is_response(bytes: &[u8]) -> bool {
    let start = bytes.iter().position(|&b| b != b'\r' && b != b'\n');
    start.is_some_and(|s| {
        bytes[s..]
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
    })
}

/// The n-th latest entry of a history.
fn nth_latest<T>(history: &[T], nth: usize) -> Option<&T> {
    let len = history.len();
    (len > 0).then(|| &history[len - 1 - nth % len])
}

fn push_bounded<T>(history: &mut Vec<T>, item: T) {
    if history.len() == HISTORY {
        history.remove(0);
    }
    history.push(item);
}

/// What the destination of a request the proxy sent answers: a response
/// with `code`, its Vias, From, To (with a tag above 100), Call-ID and
/// CSeq. `None` for what cannot be answered.
fn answer_to(request: &[u8], code: u16) -> Option<Vec<u8>> {
    let mut scanner = Scanner::new(relaxed());
    let patched;
    let request = match scanner.scan(request) {
        Err(e) if e.fault == Fault::MaxForwardsZero => {
            patched = max_forwards_one(request);
            &patched[..]
        }
        _ => request,
    };
    let m = scanner.scan(request).ok()?;
    let us = SocketAddr::new(host_ip(PROXY_HOST)?, PROXY_PORT);
    let mut out = vec![0u8; OUT_BYTES];
    let n = write_response(&m, us, &LocalResponse::new(code, "Answer"), &mut out).ok()?;
    out.truncate(n);
    Some(out)
}

/// The timed mode: one `Proxy` whose clock moves only by `Step` records,
/// so that transactions live across records, retransmissions are
/// absorbed, answers reach their client transactions and the timers fire
/// in between. After every record: `check_bounds`, the counters never
/// decrease, a 503 for a full table only when it was full; everything sent
/// passes `check_sent` (or, for a datagram that does not scan, is its
/// rejection, to its source); a datagram that does not scan changes no
/// transaction; what was replied to went back to the request's reply
/// address first, and a request forwarded sent a request.
/// At the end, `check_drained` after two `DRAIN_MS` steps.
pub struct TimedRun {
    proxy: Proxy,
    now: u64,
    max_transactions: usize,
    counters: Vec<u64>,
    /// Requests the proxy sent (destination, bytes), the latest last.
    requests: Vec<(SocketAddr, Vec<u8>)>,
    /// Responses the proxy sent, the latest last.
    responses: Vec<Vec<u8>>,
    /// INVITEs the proxy received (source, bytes), the latest last.
    invites: Vec<(SocketAddr, Vec<u8>)>,
}

impl TimedRun {
    pub fn new(algorithm: Algorithm, max_transactions: usize) -> TimedRun {
        TimedRun {
            proxy: proxy_with(algorithm, max_transactions),
            now: 0,
            max_transactions,
            counters: all_counters(&Counters::default()),
            requests: Vec::new(),
            responses: Vec::new(),
            invites: Vec::new(),
        }
    }

    pub fn record(&mut self, record: Record<'_>) {
        match record {
            Record::Datagram { source, bytes } => self.datagram(source, bytes),
            Record::Step { ms, late } => self.step(ms, late),
            Record::Unreachable { nth } => {
                if let Some(&(to, _)) = nth_latest(&self.requests, nth) {
                    let mut outbox = Outbox::default();
                    self.proxy.on_unreachable(self.now, to.into(), &mut outbox);
                    self.after_event(None, &outbox);
                }
            }
            Record::Answer { nth, code } => {
                let Some((to, request)) = nth_latest(&self.requests, nth) else {
                    return;
                };
                let to = *to;
                if let Some(answer) = answer_to(request, code) {
                    self.datagram(to, &answer);
                }
            }
            Record::Cancel { nth } => {
                let Some((from, invite)) = nth_latest(&self.invites, nth) else {
                    return;
                };
                let from = *from;
                if let Some(cancel) = caller_request(invite, b"CANCEL", None) {
                    self.datagram(from, &cancel);
                }
            }
            Record::Ack { nth } => {
                let Some((from, invite)) = nth_latest(&self.invites, nth) else {
                    return;
                };
                let from = *from;
                let to = self.latest_to(invite);
                if let Some(ack) = caller_request(invite, b"ACK", to.as_deref()) {
                    self.datagram(from, &ack);
                }
            }
        }
    }

    /// The To of the latest response sent for `invite`'s Call-ID and CSeq.
    fn latest_to(&self, invite: &[u8]) -> Option<Vec<u8>> {
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(invite).ok()?;
        let mut rescanner = Scanner::new(relaxed());
        self.responses.iter().rev().find_map(|response| {
            let r = rescanner.scan(response).ok()?;
            (r.call_id() == m.call_id() && r.cseq() == m.cseq()).then(|| r.to().value.to_vec())
        })
    }

    /// The clock goes on by `ms`: timers at their deadlines, or all at
    /// once at the end when `late`.
    pub fn step(&mut self, ms: u64, late: bool) {
        let target = self.now.saturating_add(ms);
        if !late {
            while clock::step_toward(&mut self.now, target, self.proxy.next_deadline()).is_some() {
                self.timers();
            }
        }
        self.now = target;
        self.timers();
    }

    fn timers(&mut self) {
        let before = self.proxy.transactions();
        let mut outbox = Outbox::default();
        self.proxy.on_timers(self.now, &mut outbox);
        assert!(
            self.proxy.transactions().0 <= before.0,
            "a timer made a server transaction"
        );
        self.after_event(None, &outbox);
    }

    /// Bounds, counters and what was sent, after a datagram (`full`: the
    /// table was full before it) or a timer or ICMP error (`None`).
    fn after_event(&mut self, full: Option<bool>, outbox: &Outbox) {
        check_bounds(&self.proxy, self.max_transactions);
        let now = all_counters(self.proxy.counters());
        for (i, (&before, &after)) in self.counters.iter().zip(&now).enumerate() {
            assert!(
                after >= before,
                "counter {i} went down: {before} -> {after}"
            );
        }
        if now[OVERLOAD_REJECTED] > self.counters[OVERLOAD_REJECTED] {
            assert_eq!(full, Some(true), "503 for a full table that was not full");
        }
        self.counters = now;
        for (to, bytes) in &outbox.sent {
            if !is_response(bytes) {
                push_bounded(&mut self.requests, (to.addr, bytes.clone()));
            } else {
                push_bounded(&mut self.responses, bytes.clone());
            }
        }
    }

    pub fn datagram(&mut self, source: SocketAddr, datagram: &[u8]) {
        check_find_call_id(datagram);
        let before = self.proxy.transactions();
        let mut outbox = Outbox::default();
        let outcome = self
            .proxy
            .handle(self.now, source.into(), datagram, &mut outbox);
        let sent = &outbox.sent;
        let mut scanner = Scanner::new(Limits::default());
        match scanner.scan(datagram) {
            Err(e) => {
                assert_eq!(
                    self.proxy.transactions(),
                    before,
                    "{e}: a datagram that does not scan changed the table"
                );
                match (outcome, &sent[..]) {
                    (Outcome::Replied, [(to, reply)]) => {
                        check_rejection_reply(&e, source, to.addr, reply)
                    }
                    (Outcome::Dropped(DropReason::Malformed(fault)), []) => {
                        assert_eq!(fault, e.fault)
                    }
                    (Outcome::Dropped(DropReason::Unanswerable), []) => {}
                    (outcome, sent) => panic!("{e}: {outcome:?} with {sent:?}"),
                }
            }
            Ok(m) => {
                for (to, bytes) in sent {
                    check_sent(to.addr, bytes);
                }
                let is_request = |b: &Vec<u8>| !is_response(b);
                match outcome {
                    Outcome::Replied => {
                        assert!(m.is_request(), "a response was answered");
                        let (to, first) = sent.first().expect("a reply was sent");
                        assert!(!is_request(first), "the reply is a response");
                        assert_eq!(
                            *to,
                            sipshard::proxy::reply_address(m.top_via(), source.into())
                        );
                    }
                    Outcome::Forwarded if m.is_request() => {
                        assert!(sent.iter().any(|(_, b)| is_request(b)), "no request sent")
                    }
                    // Not checked: a final on the current try after a 2xx
                    // on another (or after the caller has its final) is
                    // ACKed and kept from the caller, as it must be, but
                    // `client_final` still returns `Forwarded`. Only the
                    // label is off: the shard counts nothing by it.
                    Outcome::Forwarded => {}
                    Outcome::Dropped(reason) => {
                        assert!(
                            !matches!(reason, DropReason::Malformed(_)),
                            "dropped as malformed, but it scans"
                        );
                        assert!(sent.is_empty(), "dropped as {reason:?}, but sent {sent:?}");
                    }
                    Outcome::Absorbed => {}
                }
                if m.method() == Some(Method::Invite) {
                    push_bounded(&mut self.invites, (source, datagram.to_vec()));
                }
            }
        }
        self.after_event(Some(before.0 >= self.max_transactions), &outbox);
    }

    /// The end of an input: nothing may be left after 20 minutes.
    pub fn finish(&mut self) {
        self.step(DRAIN_MS, false);
        self.step(DRAIN_MS, false);
        check_drained(&self.proxy);
    }
}

// ---------------------------------------------------------------------------
// The `stream` target: framing a TCP byte stream.

/// Frames `bytes` through a `Deframer` of `limits`, pushed in pieces whose
/// sizes cycle through `splits` (0 counts as 1): each frame as owned bytes
/// (`b"\r\n\r\n"` for a ping, `b"\r\n"` for a pong), and the fault if one
/// ended the stream. Pieces go in by turns through `push` and, as the
/// shell reads, through `space`/`filled`; the buffer is released between
/// pieces whenever it may be.
pub fn deframe(
    bytes: &[u8],
    limits: StreamLimits,
    splits: &[usize],
) -> (Vec<Vec<u8>>, Option<StreamFault>) {
    let mut deframer = Deframer::new(limits);
    let mut frames = Vec::new();
    let mut at = 0;
    let mut turn = 0;
    while at < bytes.len() {
        let step = splits
            .get(turn % splits.len().max(1))
            .copied()
            .unwrap_or(bytes.len())
            .max(1);
        turn += 1;
        let piece = &bytes[at..(at + step).min(bytes.len())];
        at += piece.len();
        let written = match turn % 2 {
            0 => read_in(&mut deframer, piece),
            _ => deframer.push(piece),
        };
        if let Err(fault) = written {
            return (frames, Some(fault));
        }
        assert!(deframer.partial() <= limits.buffer_bytes_max);
        while let Some(frame) = deframer.next_frame() {
            match frame {
                Ok(Frame::Message(m)) => {
                    assert!(
                        m.len() <= limits.message_bytes_max,
                        "a frame past the bound"
                    );
                    frames.push(m.to_vec());
                }
                Ok(Frame::Ping) => frames.push(b"\r\n\r\n".to_vec()),
                Ok(Frame::Pong) => frames.push(b"\r\n".to_vec()),
                Err(fault) => {
                    assert_eq!(deframer.next_frame(), Some(Err(fault)), "a fault stays");
                    return (frames, Some(fault));
                }
            }
        }
        // As the shell does for an idle connection: a no-op unless nothing
        // is pending, and it must not change what comes out.
        deframer.release();
    }
    (frames, None)
}

/// Writes `piece` into `Deframer::space`, as a socket read would. For a
/// piece no longer than a message it is refused exactly when `push` would
/// refuse it (`space` makes that much room when the buffer can).
fn read_in(deframer: &mut Deframer, piece: &[u8]) -> Result<(), StreamFault> {
    let room = deframer
        .space()
        .get_mut(..piece.len())
        .ok_or(StreamFault::BufferFull)?;
    room.copy_from_slice(piece);
    deframer.filled(piece.len());
    Ok(())
}

/// The `stream` fuzz target: the first byte picks the piece sizes, the rest
/// is the stream. Pushed whole and in pieces, it must give the same frames
/// (and fault alike, unless one way ran out of buffer first), and the
/// frames must be the stream's bytes in order, consumed from its start.
pub fn stream_target(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let limits = StreamLimits {
        message_bytes_max: 2048,
        buffer_bytes_max: 4096,
    };
    let splits = [usize::from(seed % 17) + 1, usize::from(seed / 17) + 1, 1];
    let whole = deframe(stream, limits, &[stream.len()]);
    let pieces = deframe(stream, limits, &splits);
    match (whole.1, pieces.1) {
        (Some(StreamFault::BufferFull), _) | (_, Some(StreamFault::BufferFull)) => {
            let n = whole.0.len().min(pieces.0.len());
            assert_eq!(whole.0[..n], pieces.0[..n]);
        }
        _ => assert_eq!(whole, pieces, "the split changed the frames"),
    }
    let joined: Vec<u8> = pieces.0.concat();
    assert!(
        stream.starts_with(&joined),
        "frames are the stream's bytes, in order"
    );
}
