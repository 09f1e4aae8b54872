//! Responses the proxy makes itself: 100 Trying, and the answers to
//! requests it will not forward (400, 408, 416, 420, 482, 483, 503, 505).
//!
//! RFC 3261 §8.2.6.2: a response copies every Via value (the top one with
//! `received`/`rport` as the server transport added them), From, Call-ID
//! and CSeq, and To with a tag added when the request had none. The tag is
//! derived from the request, so a retransmitted request gets the same tag
//! without the proxy keeping any state.

use super::edit::{received_edits, Edits, Source};
use super::error::{Answer, Fault, ScanError};
use super::header::HeaderName;
use super::lex::{fnv1a, hex16, offset_in, CommaSplit};
use super::out::{BufferFull, Out};
use super::scan::{proxy_require_tags, HeaderSlot, Message, Scanner};
use super::via::Via;
use super::NameAddr;

/// A response the proxy writes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalResponse<'a> {
    pub code: u16,
    pub reason: &'a str,
    /// Seconds for a `Retry-After` header (503 under overload).
    pub retry_after_s: Option<u32>,
}

impl<'a> LocalResponse<'a> {
    pub const fn new(code: u16, reason: &'a str) -> Self {
        LocalResponse {
            code,
            reason,
            retry_after_s: None,
        }
    }

    pub const TRYING: LocalResponse<'static> = LocalResponse::new(100, "Trying");
    pub const REQUEST_TIMEOUT: LocalResponse<'static> = LocalResponse::new(408, "Request Timeout");
    pub const LOOP_DETECTED: LocalResponse<'static> = LocalResponse::new(482, "Loop Detected");
    pub const TOO_MANY_HOPS: LocalResponse<'static> = LocalResponse::new(483, "Too Many Hops");
    pub const MESSAGE_TOO_LARGE: LocalResponse<'static> =
        LocalResponse::new(513, "Message Too Large");

    /// 503 with `Retry-After`, for overload and for a pool with no live member.
    pub const fn service_unavailable(retry_after_s: u32) -> LocalResponse<'static> {
        LocalResponse {
            code: 503,
            reason: "Service Unavailable",
            retry_after_s: Some(retry_after_s),
        }
    }
}

/// Why no response could be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseError {
    BufferFull,
    /// The message is a response, or the scan error asks for silence.
    NoAnswer,
    /// The request has no Via: there is no way to address an answer.
    Unanswerable,
}

impl From<BufferFull> for ResponseError {
    fn from(_: BufferFull) -> Self {
        ResponseError::BufferFull
    }
}

/// Writes `response` to the scanned `request`. Returns the length written.
pub fn write_response(
    request: &Message<'_>,
    source: Source,
    response: &LocalResponse<'_>,
    out: &mut [u8],
) -> Result<usize, ResponseError> {
    if !request.is_request() {
        return Err(ResponseError::NoAnswer);
    }
    let echo = Echo::find(request.datagram, request.slots).ok_or(ResponseError::Unanswerable)?;
    echo.write(response, &[], source, out)
}

/// Writes the answer to a datagram the scanner rejected with `error`, when
/// [`ScanError::answer`] asks for one: 400 with a reason that names the
/// problem, 416, 420 with `Unsupported`, 483 or 505.
pub fn write_rejection(
    scanner: &mut Scanner,
    datagram: &[u8],
    error: &ScanError,
    source: Source,
    out: &mut [u8],
) -> Result<usize, ResponseError> {
    let Answer::Reply { code, reason } = error.answer() else {
        return Err(ResponseError::NoAnswer);
    };
    // Frame again to find the header fields; this path is rare. When
    // framing itself failed (a line without a colon, too many headers),
    // the fields before the failure are still in the slots and serve.
    let _ = scanner.frame(datagram);
    let slots = scanner.slots();
    let echo = Echo::find(datagram, slots).ok_or(ResponseError::Unanswerable)?;
    let mut unsupported = [&[][..]; 8];
    let mut count = 0;
    if error.fault == Fault::ProxyRequire {
        for tag in proxy_require_tags(datagram, slots).filter(|t| !scanner.supports(t)) {
            if count < unsupported.len() {
                unsupported[count] = tag;
                count += 1;
            }
        }
    }
    echo.write(
        &LocalResponse::new(code, reason),
        &unsupported[..count],
        source,
        out,
    )
}

/// The parts of a request that its response copies.
struct Echo<'m> {
    datagram: &'m [u8],
    slots: &'m [HeaderSlot],
    from: Option<&'m [u8]>,
    to: Option<&'m [u8]>,
    call_id: Option<&'m [u8]>,
    cseq: Option<&'m [u8]>,
}

/// The To tag the proxy puts on its own final responses (400, 483, 503,
/// ...), derived from what the ACK for such a response repeats (Call-ID,
/// From tag): a retransmitted request gets the same tag statelessly, and
/// the proxy knows an ACK for an answer of its own and absorbs it instead
/// of sending it to a backend that never saw the INVITE.
pub fn local_to_tag(call_id: &[u8], from_tag: &[u8]) -> [u8; 16] {
    hex16(fnv1a(&[b"sipshard-local", call_id, from_tag]))
}

impl<'m> Echo<'m> {
    fn find(datagram: &'m [u8], slots: &'m [HeaderSlot]) -> Option<Echo<'m>> {
        let first = |name| {
            slots
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.value.of(datagram))
        };
        first(HeaderName::Via)?;
        Some(Echo {
            datagram,
            slots,
            from: first(HeaderName::From),
            to: first(HeaderName::To),
            call_id: first(HeaderName::CallId),
            cseq: first(HeaderName::CSeq),
        })
    }

    fn vias(&self) -> impl Iterator<Item = &'m [u8]> + '_ {
        let datagram = self.datagram;
        self.slots
            .iter()
            .filter(|s| s.name == HeaderName::Via)
            .flat_map(move |s| CommaSplit::new(s.value.of(datagram)))
    }

    fn write(
        &self,
        response: &LocalResponse<'_>,
        unsupported: &[&[u8]],
        source: Source,
        out: &mut [u8],
    ) -> Result<usize, ResponseError> {
        let mut out = Out::new(out);
        out.put(b"SIP/2.0 ")?;
        out.put_decimal(u64::from(response.code))?;
        out.put(b" ")?;
        out.put(response.reason.as_bytes())?;
        out.put(b"\r\n")?;
        self.write_vias(source, &mut out)?;
        self.write_dialog(response.code, &mut out)?;
        if let Some(seconds) = response.retry_after_s {
            out.put(b"Retry-After: ")?;
            out.put_decimal(u64::from(seconds))?;
            out.put(b"\r\n")?;
        }
        if !unsupported.is_empty() {
            out.put(b"Unsupported: ")?;
            for (i, tag) in unsupported.iter().enumerate() {
                if i > 0 {
                    out.put(b", ")?;
                }
                out.put(tag)?;
            }
            out.put(b"\r\n")?;
        }
        out.put(b"Content-Length: 0\r\n\r\n")?;
        Ok(out.len())
    }

    /// The request's Via lines, in order, the top one with `received` and
    /// `rport` filled in for where it came from (RFC 3261 §18.2.1, RFC 3581).
    fn write_vias(&self, source: Source, out: &mut Out<'_>) -> Result<(), ResponseError> {
        for (index, via) in self.vias().enumerate() {
            out.put(b"Via: ")?;
            match Via::parse(via).ok().filter(|_| index == 0) {
                Some(top) => {
                    let mut edits = Edits::new();
                    received_edits(&mut edits, self.datagram, &top, source);
                    let start = offset_in(self.datagram, via);
                    edits.apply_range(self.datagram, start, start + via.len(), out)?;
                }
                None => out.put(via)?,
            }
            out.put(b"\r\n")?;
        }
        Ok(())
    }

    /// From, To (tagged, but for a 100), Call-ID and CSeq, as the request
    /// had them.
    fn write_dialog(&self, code: u16, out: &mut Out<'_>) -> Result<(), ResponseError> {
        // A request missing From, To, Call-ID or CSeq (RFC 4475 insuf) still
        // gets its 400, with what it has; the Via is enough to deliver it.
        if let Some(from) = self.from {
            out.put(b"From: ")?;
            out.put(from)?;
            out.put(b"\r\n")?;
        }
        if let Some(to) = self.to {
            out.put(b"To: ")?;
            out.put(to)?;
            let has_tag = NameAddr::parse(to).is_ok_and(|to| to.tag.is_some());
            // RFC 3261 §8.2.6.2: a 100 may go without a To tag; others need one.
            if code > 100 && !has_tag {
                out.put(b";tag=")?;
                out.put(&self.to_tag())?;
            }
            out.put(b"\r\n")?;
        }
        if let Some(call_id) = self.call_id {
            out.put(b"Call-ID: ")?;
            out.put(call_id)?;
            out.put(b"\r\n")?;
        }
        if let Some(cseq) = self.cseq {
            out.put(b"CSeq: ")?;
            out.put(cseq)?;
            out.put(b"\r\n")?;
        }
        Ok(())
    }

    /// The To tag of a local response: see [`local_to_tag`].
    fn to_tag(&self) -> [u8; 16] {
        let from_tag = self
            .from
            .and_then(|from| NameAddr::parse(from).ok())
            .and_then(|from| from.tag)
            .unwrap_or_default();
        local_to_tag(self.call_id.unwrap_or_default(), from_tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Limits;

    const OPTIONS: &str = "OPTIONS sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.7:6000;branch=z9hG4bKa;rport\r\n\
Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKb, SIP/2.0/UDP p2.example.com;branch=z9hG4bKc\r\n\
Max-Forwards: 70\r\n\
To: <sip:bob@example.com>\r\n\
From: <sip:alice@example.com>;tag=f1\r\n\
Call-ID: c1@example.com\r\n\
CSeq: 7 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";

    fn source() -> Source {
        "192.0.2.7:6000".parse().unwrap()
    }

    fn respond(msg: &str, response: LocalResponse<'_>) -> String {
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(msg.as_bytes()).unwrap();
        let mut out = [0u8; 2048];
        let n = write_response(&m, source(), &response, &mut out).unwrap();
        String::from_utf8(out[..n].to_vec()).unwrap()
    }

    #[test]
    fn trying_copies_headers_without_tag() {
        let got = respond(OPTIONS, LocalResponse::TRYING);
        assert_eq!(
            got,
            "SIP/2.0 100 Trying\r\n\
Via: SIP/2.0/UDP 192.0.2.7:6000;branch=z9hG4bKa;rport=6000;received=192.0.2.7\r\n\
Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKb\r\n\
Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bKc\r\n\
From: <sip:alice@example.com>;tag=f1\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: c1@example.com\r\n\
CSeq: 7 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn final_response_gets_a_stable_to_tag_and_retry_after() {
        let a = respond(OPTIONS, LocalResponse::service_unavailable(5));
        let b = respond(OPTIONS, LocalResponse::service_unavailable(5));
        assert_eq!(a, b, "a retransmission gets the same tag");
        assert!(a.starts_with("SIP/2.0 503 Service Unavailable\r\n"));
        assert!(a.contains("\r\nTo: <sip:bob@example.com>;tag="));
        assert!(a.contains("\r\nRetry-After: 5\r\n"));
        let tagged = OPTIONS.replace(
            "To: <sip:bob@example.com>",
            "To: <sip:bob@example.com>;tag=t9",
        );
        let c = respond(&tagged, LocalResponse::REQUEST_TIMEOUT);
        assert!(
            c.contains("\r\nTo: <sip:bob@example.com>;tag=t9\r\n"),
            "{c}"
        );
    }

    #[test]
    fn rejection_420_lists_unsupported() {
        let msg = OPTIONS.replace("CSeq: 7", "Proxy-Require: timer, foo\r\nCSeq: 7");
        let mut scanner = Scanner::new(Limits::default()).with_proxy_require_supported(["timer"]);
        let err = scanner.scan(msg.as_bytes()).unwrap_err();
        assert_eq!(err.fault, Fault::ProxyRequire);
        let mut out = [0u8; 2048];
        let n = write_rejection(&mut scanner, msg.as_bytes(), &err, source(), &mut out).unwrap();
        let got = std::str::from_utf8(&out[..n]).unwrap();
        assert!(got.starts_with("SIP/2.0 420 Bad Extension\r\n"), "{got}");
        assert!(got.contains("\r\nUnsupported: foo\r\n"), "{got}");
    }

    #[test]
    fn rejection_without_call_id_still_answers() {
        let msg = OPTIONS.replace("Call-ID: c1@example.com\r\n", "");
        let mut scanner = Scanner::new(Limits::default());
        let err = scanner.scan(msg.as_bytes()).unwrap_err();
        assert_eq!(err.fault, Fault::Missing(HeaderName::CallId));
        let mut out = [0u8; 2048];
        let n = write_rejection(&mut scanner, msg.as_bytes(), &err, source(), &mut out).unwrap();
        let got = std::str::from_utf8(&out[..n]).unwrap();
        assert!(
            got.starts_with("SIP/2.0 400 Bad Request - Missing Call-ID\r\nVia: "),
            "{got}"
        );
        assert!(!got.contains("Call-ID:"));
    }

    #[test]
    fn rejection_without_via_is_unanswerable() {
        let msg = OPTIONS.replace("Via: SIP/2.0/UDP 192.0.2.7:6000;branch=z9hG4bKa;rport\r\n", "").replace(
            "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKb, SIP/2.0/UDP p2.example.com;branch=z9hG4bKc\r\n",
            "",
        );
        let mut scanner = Scanner::new(Limits::default());
        let err = scanner.scan(msg.as_bytes()).unwrap_err();
        let mut out = [0u8; 2048];
        assert_eq!(
            write_rejection(&mut scanner, msg.as_bytes(), &err, source(), &mut out),
            Err(ResponseError::Unanswerable)
        );
    }

    #[test]
    fn responses_are_never_answered() {
        let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 99999999999 INVITE\r\n\r\n";
        let mut scanner = Scanner::new(Limits::default());
        let err = scanner.scan(resp.as_bytes()).unwrap_err();
        let mut out = [0u8; 2048];
        assert_eq!(
            write_rejection(&mut scanner, resp.as_bytes(), &err, source(), &mut out),
            Err(ResponseError::NoAnswer)
        );
    }
}
