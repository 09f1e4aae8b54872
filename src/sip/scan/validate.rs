//! Validation: the fields a proxy routes on, parsed and checked as RFC
//! 3261 says, in the order of the header fields.

use super::known::Known;
use super::start_line::parse_start_line;
use super::{Frame, HeaderSlot, Limits, Message, StartLine};
use crate::sip::addr::NameAddr;
use crate::sip::error::{Fault, StartKind};
use crate::sip::header::HeaderName;
use crate::sip::lex::{is_token, parse_decimal, same_bytes, CommaSplit};
use crate::sip::method::Method;
use crate::sip::uri::{Scheme, Uri};
use crate::sip::via::Via;

/// CSeq: the sequence number and the method it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CSeq<'m> {
    pub number: u32,
    pub method: Method,
    pub method_text: &'m [u8],
}

/// Validates a framed message: the start line, every Via, the headers a
/// proxy routes on, and what a request must satisfy to be forwarded. A
/// fault is reported where a walk of the header fields in order would
/// meet it.
#[inline(always)]
pub(super) fn validate<'m>(
    datagram: &'m [u8],
    slots: &'m [HeaderSlot],
    known: &Known,
    frame: Frame,
    limits: &Limits,
    proxy_require_supported: &[Box<[u8]>],
    sent_on: bool,
) -> Result<Message<'m>, Fault> {
    let mut start_line = StartLine::EMPTY;
    parse_start_line(frame.start_line.of(datagram), frame.kind, &mut start_line)?;
    // The top Via is parsed into the message's own value, in place.
    let mut top_via = Via::EMPTY;
    let (via_count, top_via_slot) =
        walk_vias(datagram, slots, known, frame.kind, limits, &mut top_via)?;
    // A macro, not a closure: the closure was not inlined.
    macro_rules! value {
        ($index:expr) => {
            slots[usize::from($index)].value.of(datagram)
        };
    }
    let [from_slot, to_slot, call_id_slot, cseq_slot] = required_slots(known)?;
    let call_id = value!(call_id_slot);
    if call_id.is_empty() || crate::sip::uri::has_illegal_byte(call_id) {
        return Err(Fault::CallId);
    }
    let (cseq, cseq_names_method) = parse_cseq(value!(cseq_slot), &start_line)?;
    let (mut from, mut to) = (NameAddr::EMPTY, NameAddr::EMPTY);
    NameAddr::parse_into(value!(from_slot), &mut from).map_err(Fault::From)?;
    NameAddr::parse_into(value!(to_slot), &mut to).map_err(Fault::To)?;
    let max_forwards = known.last(HeaderName::MaxForwards).map(|at| value!(at));
    let max_forwards = decimal(max_forwards, 255, Fault::MaxForwards)?.map(|hops| hops as u8);
    let content_length = known.last(HeaderName::ContentLength).map(|at| value!(at));
    let content_length = decimal(content_length, u32::MAX, Fault::ContentLength)?;
    let body_end = body_end(datagram, frame.body_start, content_length)?;
    if let StartLine::Request { method, uri, .. } = start_line {
        debug_assert!(!cseq_names_method || cseq.method == method);
        let forwarding = Forwarding {
            cseq_names_method,
            max_forwards,
            sent_on,
            proxy_require: known.last(HeaderName::ProxyRequire).is_some(),
        };
        check_request(&uri, forwarding, || {
            proxy_require_tags(datagram, slots).any(|tag| !supports(proxy_require_supported, tag))
        })?;
    }

    Ok(Message {
        datagram,
        slots,
        frame,
        start_line,
        body: &datagram[frame.body_start..body_end],
        top_via,
        top_via_slot,
        via_count: via_count as u16,
        call_id,
        cseq,
        max_forwards,
        max_forwards_slot: known.last(HeaderName::MaxForwards),
        from,
        to,
        content_length,
    })
}

/// The slots of the headers every message must have (From, To, Call-ID,
/// CSeq, in that order), or the first of them missing.
#[inline(always)]
fn required_slots(known: &Known) -> Result<[u16; 4], Fault> {
    let required = |name| known.last(name).ok_or(Fault::Missing(name));
    Ok([
        required(HeaderName::From)?,
        required(HeaderName::To)?,
        required(HeaderName::CallId)?,
        required(HeaderName::CSeq)?,
    ])
}

/// The number in a decimal header's `value`, if there is one, up to
/// `max`; `fault` when it is not a decimal number in range.
#[inline(always)]
fn decimal(value: Option<&[u8]>, max: u32, fault: Fault) -> Result<Option<u32>, Fault> {
    match value {
        Some(value) => parse_decimal(value, max).map(Some).ok_or(fault),
        None => Ok(None),
    }
}

/// Parses every Via value, the top one into `top_via`, and counts them
/// against the limit; returns the count and the slot of the top Via. A
/// header repeated before a bad Via is the fault reported, as a walk of
/// every header in order would, and so is a missing Via.
#[inline(always)]
fn walk_vias<'m>(
    datagram: &'m [u8],
    slots: &[HeaderSlot],
    known: &Known,
    kind: StartKind,
    limits: &Limits,
    top_via: &mut Via<'m>,
) -> Result<(usize, u16), Fault> {
    // A response carries the Via values of the request it answers and
    // ours on top: one more than the request could bring in, or the answer
    // to a request at the limit would be dropped on its way back.
    let via_values_max = match kind {
        StartKind::Response => limits.via_values_max.saturating_add(1),
        StartKind::Request | StartKind::Unknown => limits.via_values_max,
    };
    let mut via_count = 0usize;
    let mut top_via_slot = 0;
    let duplicate = known.first_repeat(slots);
    let vias_end = known
        .last(HeaderName::Via)
        .map_or(0, |last| usize::from(last) + 1);
    for (index, slot) in slots.iter().enumerate().take(vias_end) {
        // A repeated header before this Via is reported first, as a walk
        // of every header in order would.
        if duplicate < index {
            break;
        }
        if slot.name != HeaderName::Via {
            continue;
        }
        if via_count == 0 {
            top_via_slot = index as u16;
        }
        via_count = via_values(slot.value.of(datagram), via_count, via_values_max, top_via)?;
    }
    if let Some(slot) = slots.get(duplicate) {
        return Err(Fault::Duplicate(slot.name));
    }
    if via_count == 0 {
        return Err(Fault::Missing(HeaderName::Via));
    }
    Ok((via_count, top_via_slot))
}

/// Parses the values of one Via header, `count` values having come
/// before it (the first one into `top_via`); returns the count after it.
/// Values below the top one are parsed into a scratch value made where
/// one is needed: most messages have none.
#[inline(always)]
fn via_values<'m>(
    value: &'m [u8],
    count: usize,
    max: usize,
    top_via: &mut Via<'m>,
) -> Result<usize, Fault> {
    // Nearly every Via header holds one value: parsed whole, it needs
    // no split. A value that parses has no `,` or `<` outside quoted
    // strings (no class the parser accepts holds them), so the split
    // would have yielded it alone.
    let parsed = if count == 0 {
        Via::parse_into(value, top_via)
    } else {
        let mut scratch = Via::EMPTY;
        Via::parse_into(value, &mut scratch)
    };
    if parsed.is_ok() {
        return if count + 1 > max {
            Err(Fault::TooManyVia)
        } else {
            Ok(count + 1)
        };
    }
    let mut count = count;
    for value in CommaSplit::new(value) {
        count += 1;
        if count > max {
            return Err(Fault::TooManyVia);
        }
        if count == 1 {
            Via::parse_into(value, top_via)
        } else {
            let mut scratch = Via::EMPTY;
            Via::parse_into(value, &mut scratch)
        }
        .map_err(Fault::Via)?;
    }
    Ok(count)
}

/// Where the body ends. RFC 3261 §18.3: over UDP, octets past
/// Content-Length are ignored; a missing Content-Length means the body
/// runs to the end of the datagram.
#[inline(always)]
fn body_end(
    datagram: &[u8],
    body_start: usize,
    content_length: Option<u32>,
) -> Result<usize, Fault> {
    match content_length {
        Some(length) => body_start
            .checked_add(length as usize)
            .filter(|&end| end <= datagram.len())
            .ok_or(Fault::BodyTooShort),
        None => Ok(datagram.len()),
    }
}

/// What a request's forwarding checks read besides its Request-URI.
#[derive(Clone, Copy)]
struct Forwarding {
    /// Whether the CSeq names the method of the start line.
    cseq_names_method: bool,
    max_forwards: Option<u8>,
    /// Whether the scanner reads requests this proxy sent on.
    sent_on: bool,
    /// Whether the request has a Proxy-Require header.
    proxy_require: bool,
}

/// The checks only a request must pass: its CSeq names its method, its
/// Request-URI is one we route, and (unless we sent it on ourselves) its
/// Max-Forwards is not spent and `unsupported` finds no Proxy-Require tag
/// we do not support.
#[inline(always)]
fn check_request(
    uri: &Uri<'_>,
    request: Forwarding,
    unsupported: impl FnOnce() -> bool,
) -> Result<(), Fault> {
    if !request.cseq_names_method {
        return Err(Fault::CSeqMethod);
    }
    if uri.scheme == Scheme::Other {
        return Err(Fault::UnsupportedScheme);
    }
    if uri.headers.is_some() {
        return Err(Fault::RequestUriHeaders);
    }
    if request.max_forwards == Some(0) && !request.sent_on {
        return Err(Fault::MaxForwardsZero);
    }
    if !request.sent_on && request.proxy_require && unsupported() {
        return Err(Fault::ProxyRequire);
    }
    Ok(())
}

/// Option tags are tokens, and RFC 3261 §7.3.1 makes tokens case-insensitive.
pub(super) fn supports(supported: &[Box<[u8]>], tag: &[u8]) -> bool {
    supported.iter().any(|s| s.eq_ignore_ascii_case(tag))
}

/// Every option tag of every Proxy-Require header, in order.
pub(crate) fn proxy_require_tags<'m>(
    datagram: &'m [u8],
    slots: &'m [HeaderSlot],
) -> impl Iterator<Item = &'m [u8]> + 'm {
    slots
        .iter()
        .filter(|s| s.name == HeaderName::ProxyRequire)
        .flat_map(move |s| CommaSplit::new(s.value.of(datagram)))
        .filter(|tag| !tag.is_empty())
}

/// `CSeq: 1*DIGIT LWS Method`, the number a u32. A request's CSeq names
/// its own method, already recognised on the start line: the flag says
/// whether it does (always `false` for a response), so that validation
/// need not compare the two again.
/// Inlined: a `CSeq` returned through memory cost a frame and a copy.
#[inline(always)]
fn parse_cseq<'m>(value: &'m [u8], start_line: &StartLine<'m>) -> Result<(CSeq<'m>, bool), Fault> {
    // The number and the end of its digits in one pass.
    let (number, digits) =
        crate::sip::lex::leading_decimal(value, 0, u32::MAX).ok_or(Fault::CSeq)?;
    let method_start = crate::sip::lex::skip_lws(value, digits);
    if digits == 0 || method_start == digits {
        return Err(Fault::CSeq);
    }
    let method_text = &value[method_start..];
    // A request's CSeq names the method of its start line, a token already.
    if let StartLine::Request {
        method,
        method_text: text,
        ..
    } = *start_line
    {
        if same_bytes(text, method_text) {
            let cseq = CSeq {
                number,
                method,
                method_text,
            };
            return Ok((cseq, true));
        }
    }
    if method_text.is_empty() || !method_text.iter().all(|&b| is_token(b)) {
        return Err(Fault::CSeq);
    }
    let cseq = CSeq {
        number,
        method: Method::from_token(method_text),
        method_text,
    };
    Ok((cseq, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan::tests::{fault, INVITE};
    use crate::sip::scan::Scanner;
    use crate::sip::via::ViaError;

    /// A repeated header and a bad Via: the one met first in header order
    /// is reported, although framing notes the repeat before validation
    /// parses any Via.
    #[test]
    fn duplicate_and_bad_via_in_header_order() {
        let msg = |headers: &str| {
            format!(
                "OPTIONS sip:a@b SIP/2.0\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\n\
                 CSeq: 1 OPTIONS\r\n{headers}\r\n"
            )
        };
        let good = "Via: SIP/2.0/UDP h\r\n";
        let bad = "Via: SIP/2.0/UDP h;=x\r\n";
        let twice = "Call-ID: c\r\nCall-ID: d\r\n";
        let dup = Fault::Duplicate(HeaderName::CallId);
        let via = Fault::Via(ViaError::Parameter);
        assert_eq!(fault(msg(&format!("{twice}{bad}")).as_bytes()), dup);
        assert_eq!(fault(msg(&format!("{bad}{twice}")).as_bytes()), via);
        assert_eq!(fault(msg(&format!("{good}{twice}{bad}")).as_bytes()), dup);
        assert_eq!(fault(msg(&format!("{good}{bad}{twice}")).as_bytes()), via);
        assert_eq!(
            fault(msg(&format!("{good}Call-ID: c\r\n{bad}Call-ID: d\r\n")).as_bytes()),
            via
        );
        assert_eq!(fault(msg(&format!("{good}{twice}")).as_bytes()), dup);
        assert_eq!(
            fault(msg("Call-ID: c\r\n").as_bytes()),
            Fault::Missing(HeaderName::Via)
        );
        let two_vias = msg(&format!("{good}Call-ID: c\r\n{good}"));
        let mut scanner = Scanner::new(Limits::default());
        let scanned = scanner.scan(two_vias.as_bytes()).unwrap();
        assert_eq!(scanned.via_count(), 2);
        assert_eq!(scanned.top_via_slot, 3);
        assert_eq!(scanned.call_id(), b"c");
    }

    #[test]
    fn a_response_may_carry_one_via_more_than_a_request() {
        let limits = Limits {
            via_values_max: 1,
            ..Limits::default()
        };
        let invite = std::str::from_utf8(INVITE).unwrap();
        let two_vias = "SIP/2.0/UDP lb.example.com;branch=z9hG4bKlb1, SIP/2.0/UDP pc33";
        let response = |vias: &str| {
            invite
                .replace(
                    "INVITE sip:bob@biloxi.example.com SIP/2.0",
                    "SIP/2.0 180 Ringing",
                )
                .replacen("SIP/2.0/UDP pc33", vias, 1)
        };
        let mut scanner = Scanner::new(limits.clone());
        assert!(scanner.scan(response(two_vias).as_bytes()).is_ok());
        let three_vias = format!("SIP/2.0/UDP p2, {two_vias}");
        assert_eq!(
            scanner
                .scan(response(&three_vias).as_bytes())
                .unwrap_err()
                .fault,
            Fault::TooManyVia
        );
        let request = invite.replacen("SIP/2.0/UDP pc33", two_vias, 1);
        assert_eq!(
            scanner.scan(request.as_bytes()).unwrap_err().fault,
            Fault::TooManyVia
        );
    }

    /// What the proxy sent on is read again to write its CANCEL and ACK:
    /// Max-Forwards 0 (a request that came with 1), a Proxy-Require it
    /// does not support and one Via, one line and a few header fields over
    /// the limits (what forwarding adds) are all taken there, and only there.
    #[test]
    fn the_scanner_for_sent_requests_takes_what_forwarding_made() {
        let limits = Limits {
            via_values_max: 1,
            headers_max: 11,
            ..Limits::default()
        };
        let sent = std::str::from_utf8(INVITE)
            .unwrap()
            .replace("Max-Forwards: 70", "Max-Forwards: 0\r\nProxy-Require: foo")
            .replacen(
                "Via: ",
                "Record-Route: <sip:lb.example.com;lr>\r\nVia: SIP/2.0/UDP lb.example.com;branch=z9hG4bKlb1\r\nVia: ",
                1,
            );
        let mut received = Scanner::new(limits.clone());
        assert!(received.scan(sent.as_bytes()).is_err());
        let mut again = Scanner::for_sent(&limits);
        let message = again.scan(sent.as_bytes()).unwrap();
        assert_eq!(message.max_forwards(), Some(0));
        let over = sent.replacen(
            "Via: ",
            "Via: SIP/2.0/UDP extra;branch=z9hG4bKx\r\nVia: ",
            1,
        );
        assert_eq!(
            again.scan(over.as_bytes()).unwrap_err().fault,
            Fault::TooManyVia
        );
    }

    /// What lets `validate` parse a Via header whole: a value that parses
    /// is one the comma split yields alone.
    #[test]
    fn a_via_that_parses_is_not_split() {
        let alphabet = b"SIP/2.0UDPh1;=,<>\" \t\r\n[]:b";
        let (mut seed, mut parsed) = (3u64, 0);
        for _ in 0..300_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let mut v = b"SIP/2.0/UDP h".to_vec();
            let mut r = seed;
            for _ in 0..(seed >> 60) {
                r = r
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1442695040888963407);
                v.push(alphabet[(r >> 58) as usize % alphabet.len()]);
            }
            let v = crate::sip::lex::trim_lws(&v);
            if Via::parse(v).is_ok() {
                parsed += 1;
                assert_eq!(CommaSplit::new(v).collect::<Vec<_>>(), vec![v], "{v:?}");
            }
        }
        assert!(parsed > 10_000, "{parsed}");
    }
}
