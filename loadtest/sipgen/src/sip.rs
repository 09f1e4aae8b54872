//! Just enough SIP for a load generator: walk header lines, pick out the few
//! headers a UAC and a UAS echo, build requests and responses from them.
//!
//! This is deliberately not the gateway's scanner: the generator checks the
//! gateway, so it must not share the gateway's reading of a message.

use std::io::Write;

/// One header line: its name, its value (trimmed) and the whole line
/// without the CRLF, all as slices of the datagram.
pub struct Line<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub line: &'a [u8],
}

/// The start line, and an iterator over the header lines up to the empty
/// line. `None` when the datagram has no complete header section.
pub fn split(msg: &[u8]) -> Option<(&[u8], Lines<'_>)> {
    let end = memchr::memmem::find(msg, b"\r\n\r\n")?;
    let head = &msg[..end + 2];
    let first = memchr::memchr(b'\n', head)?;
    let start = trim_cr(&head[..first]);
    Some((
        start,
        Lines {
            rest: &head[first + 1..],
        },
    ))
}

pub struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let nl = memchr::memchr(b'\n', self.rest).unwrap_or(self.rest.len() - 1);
            let line = trim_cr(&self.rest[..nl]);
            self.rest = &self.rest[nl + 1..];
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            return Some(Line {
                name: trim(&line[..colon]),
                value: trim(&line[colon + 1..]),
                line,
            });
        }
    }
}

fn trim_cr(s: &[u8]) -> &[u8] {
    s.strip_suffix(b"\r").unwrap_or(s)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Which of the headers the generator cares about a line is, compact forms
/// included.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Name {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    RecordRoute,
    Timestamp,
    Other,
}

/// The header that carries the sender's clock (nanoseconds since the
/// generator started), so the other side can time the trip through the
/// gateway. Fixed width so a retransmission can be stamped in place.
pub const TS_HEADER: &str = "X-Sipgen-Ts";
pub const TS_DIGITS: usize = 20;

pub fn name(n: &[u8]) -> Name {
    let is = |full: &str| n.eq_ignore_ascii_case(full.as_bytes());
    match n.len() {
        1 => match n[0].to_ascii_lowercase() {
            b'v' => Name::Via,
            b'f' => Name::From,
            b't' => Name::To,
            b'i' => Name::CallId,
            b'm' => Name::Contact,
            _ => Name::Other,
        },
        _ if is("Via") => Name::Via,
        _ if is("From") => Name::From,
        _ if is("To") => Name::To,
        _ if is("Call-ID") => Name::CallId,
        _ if is("CSeq") => Name::CSeq,
        _ if is("Contact") => Name::Contact,
        _ if is("Record-Route") => Name::RecordRoute,
        _ if is(TS_HEADER) => Name::Timestamp,
        _ => Name::Other,
    }
}

/// The status code of a response's start line.
pub fn status(start: &[u8]) -> Option<u16> {
    let rest = start.strip_prefix(b"SIP/2.0 ")?;
    let code = rest.get(..3)?;
    let mut n = 0u16;
    for &d in code {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u16::from(d - b'0');
    }
    Some(n)
}

/// The method of a request's start line.
pub fn method(start: &[u8]) -> &[u8] {
    let end = memchr::memchr(b' ', start).unwrap_or(start.len());
    &start[..end]
}

/// The method of a CSeq value ("2 BYE" -> "BYE").
pub fn cseq_method(value: &[u8]) -> &[u8] {
    match memchr::memchr(b' ', value) {
        Some(sp) => trim(&value[sp + 1..]),
        None => &[],
    }
}

pub fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// Where a Call-ID of ours says a call lives: `sg<run>.<worker>.<seq>@sipgen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallKey {
    pub run: u64,
    pub worker: u64,
    pub seq: u64,
}

pub fn parse_call_id(value: &[u8]) -> Option<CallKey> {
    let rest = value.strip_prefix(b"sg")?;
    let at = memchr::memchr(b'@', rest)?;
    let mut parts = rest[..at].split(|&b| b == b'.');
    let run = parse_u64(parts.next()?)?;
    let worker = parse_u64(parts.next()?)?;
    let seq = parse_u64(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some(CallKey { run, worker, seq })
}

/// The URI inside the first `<...>` of a name-addr, or the whole value up
/// to its parameters.
pub fn uri(value: &[u8]) -> &[u8] {
    if let Some(lt) = memchr::memchr(b'<', value) {
        if let Some(gt) = memchr::memchr(b'>', &value[lt..]) {
            return &value[lt + 1..lt + gt];
        }
    }
    let end = memchr::memchr(b';', value).unwrap_or(value.len());
    trim(&value[..end])
}

/// Does a To or From value carry a tag parameter (after the URI)?
pub fn has_tag(value: &[u8]) -> bool {
    let params = match memchr::memchr(b'>', value) {
        Some(gt) => &value[gt..],
        None => value,
    };
    memchr::memmem::find(&params.to_ascii_lowercase(), b";tag=").is_some()
}

/// A tag that depends only on the Call-ID, so that a stateless UAS answers a
/// retransmitted INVITE with the same To tag.
pub fn tag_for(call_id: &[u8]) -> u64 {
    // FNV-1a.
    call_id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes a fixed-width timestamp header line.
pub fn write_ts(out: &mut Vec<u8>, ns: u64) {
    let _ = write!(out, "{TS_HEADER}: {ns:0w$}\r\n", w = TS_DIGITS);
}

/// Re-stamps a message built with [`write_ts`], in place.
pub fn restamp(msg: &mut [u8], ns: u64) {
    let needle = format!("{TS_HEADER}: ");
    if let Some(at) = memchr::memmem::find(msg, needle.as_bytes()) {
        let from = at + needle.len();
        if let Some(field) = msg.get_mut(from..from + TS_DIGITS) {
            let text = format!("{ns:0w$}", w = TS_DIGITS);
            field.copy_from_slice(text.as_bytes());
        }
    }
}

/// The response a UAS sends to `request`: every Via, the Record-Routes
/// (when `record_route`), From, To (tagged), Call-ID and CSeq copied, then
/// `contact` when given, our timestamp, and `body`.
#[allow(clippy::too_many_arguments)]
pub fn response(
    out: &mut Vec<u8>,
    request: &[u8],
    code: u16,
    reason: &str,
    record_route: bool,
    contact: Option<&str>,
    now_ns: u64,
    body: &[u8],
) -> bool {
    let Some((_, lines)) = split(request) else {
        return false;
    };
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    let mut call_id: &[u8] = &[];
    let mut to: &[u8] = &[];
    for line in lines {
        match name(line.name) {
            Name::Via | Name::From | Name::CSeq => {
                out.extend_from_slice(line.line);
                out.extend_from_slice(b"\r\n");
            }
            Name::RecordRoute if record_route => {
                out.extend_from_slice(line.line);
                out.extend_from_slice(b"\r\n");
            }
            Name::CallId => {
                call_id = line.value;
                out.extend_from_slice(line.line);
                out.extend_from_slice(b"\r\n");
            }
            Name::To => to = line.value,
            _ => {}
        }
    }
    if call_id.is_empty() || to.is_empty() {
        return false;
    }
    out.extend_from_slice(b"To: ");
    out.extend_from_slice(to);
    if !has_tag(to) && code > 100 {
        let _ = write!(out, ";tag={:x}", tag_for(call_id));
    }
    out.extend_from_slice(b"\r\n");
    if let Some(contact) = contact {
        let _ = write!(out, "Contact: <{contact}>\r\n");
    }
    write_ts(out, now_ns);
    if !body.is_empty() {
        out.extend_from_slice(b"Content-Type: application/sdp\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    out.extend_from_slice(body);
    true
}

/// What a UAC takes from a response to build its ACK and BYE.
#[derive(Default)]
pub struct Answer<'a> {
    pub status: u16,
    pub call_id: &'a [u8],
    pub cseq_method: &'a [u8],
    pub to: &'a [u8],
    pub contact: &'a [u8],
    pub record_routes: [&'a [u8]; 8],
    pub record_route_count: usize,
    pub ts: Option<u64>,
}

pub fn answer(msg: &[u8]) -> Option<Answer<'_>> {
    let (start, lines) = split(msg)?;
    let mut a = Answer {
        status: status(start)?,
        ..Answer::default()
    };
    for line in lines {
        match name(line.name) {
            Name::CallId => a.call_id = line.value,
            Name::CSeq => a.cseq_method = cseq_method(line.value),
            Name::To => a.to = line.value,
            Name::Contact => a.contact = uri(line.value),
            Name::RecordRoute => {
                // One value per line from the gateways we drive; split
                // comma lists too.
                for value in line.value.split(|&b| b == b',') {
                    if a.record_route_count < a.record_routes.len() {
                        a.record_routes[a.record_route_count] = trim(value);
                        a.record_route_count += 1;
                    }
                }
            }
            Name::Timestamp => a.ts = parse_u64(line.value),
            _ => {}
        }
    }
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKgw\r\n\
        v: SIP/2.0/UDP 127.0.0.1:7000;branch=z9hG4bKua;rport=7000\r\n\
        Record-Route: <sip:127.0.0.1:5060;lr>\r\n\
        From: <sip:a@x>;tag=1\r\n\
        To: <sip:bob@y>\r\n\
        Call-ID: sg3.1.42@sipgen\r\n\
        CSeq: 1 INVITE\r\n\
        X-Sipgen-Ts: 00000000000000000123\r\n\
        Content-Length: 0\r\n\r\n";

    #[test]
    fn a_response_echoes_the_vias_in_order_and_tags_the_to() {
        let mut out = Vec::new();
        assert!(response(
            &mut out,
            INVITE,
            200,
            "OK",
            true,
            Some("sip:u@h"),
            5,
            b""
        ));
        let text = String::from_utf8(out.clone()).unwrap();
        let gw = text.find("branch=z9hG4bKgw").unwrap();
        let ua = text.find("branch=z9hG4bKua").unwrap();
        assert!(gw < ua, "{text}");
        assert!(text.contains("Record-Route: <sip:127.0.0.1:5060;lr>\r\n"));
        let tag = format!("To: <sip:bob@y>;tag={:x}\r\n", tag_for(b"sg3.1.42@sipgen"));
        assert!(text.contains(&tag), "{text}");
        let a = answer(&out).unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.cseq_method, b"INVITE");
        assert_eq!(a.contact, b"sip:u@h");
        assert_eq!(a.record_route_count, 1);
        assert_eq!(a.ts, Some(5));
        assert_eq!(
            parse_call_id(a.call_id),
            Some(CallKey {
                run: 3,
                worker: 1,
                seq: 42
            })
        );
    }

    #[test]
    fn a_stateless_answer_to_a_retransmission_is_identical() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        response(&mut a, INVITE, 180, "Ringing", true, None, 9, b"");
        response(&mut b, INVITE, 180, "Ringing", true, None, 9, b"");
        assert_eq!(a, b);
    }

    #[test]
    fn restamping_keeps_the_length() {
        let mut msg = INVITE.to_vec();
        let len = msg.len();
        restamp(&mut msg, 987_654_321);
        assert_eq!(msg.len(), len);
        assert_eq!(
            answer(&[b"SIP/2.0 200 OK\r\n".as_slice(), &msg[34..]].concat())
                .unwrap()
                .ts,
            Some(987_654_321)
        );
    }

    #[test]
    fn foreign_call_ids_and_bad_numbers_are_refused() {
        assert_eq!(parse_call_id(b"abc@host"), None);
        assert_eq!(parse_call_id(b"sg1.2@sipgen"), None);
        assert_eq!(parse_call_id(b"sg1.2.99999999999999999999999@sipgen"), None);
        assert_eq!(status(b"SIP/2.0 4x0 Bad"), None);
        assert_eq!(status(b"INVITE sip:x SIP/2.0"), None);
    }
}
