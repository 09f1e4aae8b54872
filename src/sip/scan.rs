//! The scanner: one datagram in, a [`Message`] view out, nothing copied.
//!
//! Scanning is two passes over bytes already in cache. *Framing* finds the
//! start line, every header field (name and value ranges, folded lines
//! included) and the end of the header section, with memchr doing the
//! searching. *Validation* then parses exactly the fields a proxy routes on
//! (Request-URI, every Via, Call-ID, CSeq, Max-Forwards, From, To,
//! Content-Length, Proxy-Require) and rejects what RFC 3261 says to reject.
//! Everything else stays an opaque range, to be copied byte for byte.

use super::addr::NameAddr;
use super::block::{self, LineCursor};
use super::error::{Fault, ScanError, StartKind};
use super::header::HeaderName;
use super::lex::{
    any_byte, bytes_equal, find_byte, is_lws, is_token, is_token_str, parse_decimal, same_bytes,
    CommaSplit,
};
use super::method::Method;
use super::uri::{Scheme, Uri};
use super::via::Via;

/// Bounds on what one datagram may hold. Each guards memory or CPU against
/// a hostile peer; all are configurable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest datagram accepted. UDP cannot carry more than 64 KiB.
    pub datagram_bytes_max: usize,
    /// Header fields per message; the scanner's slot array has this size.
    pub headers_max: usize,
    /// Bytes in one header field, folded continuation lines included.
    pub header_line_bytes_max: usize,
    /// Via values per request; each costs a parse on every request. The
    /// default is 64, not 32: RFC 4475's longreq, a legal message every
    /// element must process, carries 34. A response may carry one more:
    /// ours, on top of those of the request it answers.
    pub via_values_max: usize,
}

impl Limits {
    /// Largest `datagram_bytes_max`: offsets into a datagram are `u32`, and
    /// nothing SIP carries in one message needs more than this.
    pub const DATAGRAM_BYTES_CEILING: usize = 16 * 1024 * 1024;
    /// Largest `headers_max` and `via_values_max`: header positions are `u16`.
    pub const COUNT_CEILING: usize = u16::MAX as usize;

    /// Checks every limit against its ceiling and against the others.
    /// Configuration code calls this so a bad value is reported, not clamped.
    pub fn check(&self) -> Result<(), LimitError> {
        let check = |name, value: usize, max: usize| {
            if value == 0 || value > max {
                Err(LimitError { name, value, max })
            } else {
                Ok(())
            }
        };
        check(
            "datagram_bytes_max",
            self.datagram_bytes_max,
            Self::DATAGRAM_BYTES_CEILING,
        )?;
        check("headers_max", self.headers_max, Self::COUNT_CEILING)?;
        check(
            "header_line_bytes_max",
            self.header_line_bytes_max,
            self.datagram_bytes_max,
        )?;
        check("via_values_max", self.via_values_max, Self::COUNT_CEILING)
    }

    /// Every limit brought within its ceiling (at least 1).
    fn clamped(&self) -> Limits {
        let datagram_bytes_max = self
            .datagram_bytes_max
            .clamp(1, Self::DATAGRAM_BYTES_CEILING);
        Limits {
            datagram_bytes_max,
            headers_max: self.headers_max.clamp(1, Self::COUNT_CEILING),
            header_line_bytes_max: self.header_line_bytes_max.clamp(1, datagram_bytes_max),
            via_values_max: self.via_values_max.clamp(1, Self::COUNT_CEILING),
        }
    }
}

/// A limit outside what the scanner can honour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitError {
    pub name: &'static str,
    pub value: usize,
    pub max: usize,
}

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = {} is out of range: use 1..={}",
            self.name, self.value, self.max
        )
    }
}

impl std::error::Error for LimitError {}

/// Bytes forwarding may add to a request or to its longest header line:
/// our Via and Record-Route (each well under 200 bytes), a Max-Forwards,
/// and `received` with an IPv6 address and `rport` on the top Via.
const FORWARD_ROOM_BYTES: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            datagram_bytes_max: 64 * 1024,
            headers_max: 128,
            header_line_bytes_max: 8 * 1024,
            via_values_max: 64,
        }
    }
}

/// A byte range of the datagram. `u32` keeps a header slot at 24 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    #[inline]
    fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    #[inline(always)]
    pub(crate) fn of<'m>(&self, buf: &'m [u8]) -> &'m [u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

/// One header field as found by framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeaderSlot {
    pub(crate) name: HeaderName,
    /// Where the name ends; it starts where `line` does.
    pub(crate) name_end: u32,
    /// The value, trimmed of LWS; folds inside it are kept as written.
    pub(crate) value: Span,
    /// The whole field from the first byte of its name to the end of its
    /// last line, line end included.
    pub(crate) line: Span,
}

impl HeaderSlot {
    /// What fills the slots no framing has written yet.
    const EMPTY: HeaderSlot = HeaderSlot {
        name: HeaderName::Other,
        name_end: 0,
        value: Span { start: 0, end: 0 },
        line: Span { start: 0, end: 0 },
    };
}

/// A header field of a scanned message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'m> {
    pub name: HeaderName,
    /// The name as written (`v`, `VIA`, `X-Custom`).
    pub name_text: &'m [u8],
    /// The value without surrounding LWS; folded line breaks are kept.
    pub value: &'m [u8],
}

/// The first line of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine<'m> {
    Request {
        method: Method,
        method_text: &'m [u8],
        uri: Uri<'m>,
        uri_text: &'m [u8],
    },
    Response {
        code: u16,
        reason: &'m [u8],
    },
}

/// CSeq: the sequence number and the method it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CSeq<'m> {
    pub number: u32,
    pub method: Method,
    pub method_text: &'m [u8],
}

/// Where framing found things, kept for the error-response path too.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    pub(crate) start_line: Span,
    /// Offset of the empty line that ends the header section.
    pub(crate) headers_end: usize,
    /// Offset of the body (just past the empty line).
    pub(crate) body_start: usize,
    pub(crate) kind: StartKind,
}

/// Scans datagrams into [`Message`] views. Owns the header slot array, so
/// one `Scanner` per shard scans every datagram without allocating.
#[derive(Debug)]
pub struct Scanner {
    limits: Limits,
    /// `headers_max` slots, the first `framed` of them filled by the last
    /// framing: a fixed array, so that the limit check is the bounds check.
    slots: Box<[HeaderSlot]>,
    framed: usize,
    /// Where framing found the headers validation needs.
    known: Known,
    /// Extension option tags this proxy supports in Proxy-Require.
    proxy_require_supported: Vec<Box<[u8]>>,
    /// Reads requests this proxy sent on (see [`Scanner::for_sent`]).
    sent_on: bool,
}

/// A scanned, validated SIP message. Every accessor returns a slice of the
/// datagram.
#[derive(Clone, Copy, Debug)]
pub struct Message<'m> {
    pub(crate) datagram: &'m [u8],
    pub(crate) slots: &'m [HeaderSlot],
    pub(crate) frame: Frame,
    start_line: StartLine<'m>,
    body: &'m [u8],
    top_via: Via<'m>,
    /// Index of the header field that holds the top Via.
    pub(crate) top_via_slot: u16,
    via_count: u16,
    call_id: &'m [u8],
    cseq: CSeq<'m>,
    max_forwards: Option<u8>,
    pub(crate) max_forwards_slot: Option<u16>,
    from: NameAddr<'m>,
    to: NameAddr<'m>,
    content_length: Option<u32>,
}

impl Scanner {
    /// A scanner with `limits`, each clamped to its ceiling (see
    /// [`Limits::check`], which reports instead of clamping).
    pub fn new(limits: Limits) -> Scanner {
        let limits = limits.clamped();
        Scanner {
            slots: vec![HeaderSlot::EMPTY; limits.headers_max].into_boxed_slice(),
            framed: 0,
            known: Known::default(),
            limits,
            proxy_require_supported: Vec::new(),
            sent_on: false,
        }
    }

    /// A scanner for requests this proxy has already sent on, read again
    /// to write their CANCEL or ACK (§9.1, §17.1.1.3) or to send them to
    /// the next backend. Its limits leave room for what forwarding adds (a
    /// Via value, a Record-Route, a Max-Forwards, `received` and `rport`),
    /// and it takes Max-Forwards 0 and any Proxy-Require: a request that
    /// came with Max-Forwards 1 went on with 0, and one that passed the
    /// checks on the way in must not fail them on the way back.
    pub fn for_sent(limits: &Limits) -> Scanner {
        let room = Limits {
            datagram_bytes_max: limits.datagram_bytes_max.saturating_add(FORWARD_ROOM_BYTES),
            headers_max: limits.headers_max.saturating_add(3),
            header_line_bytes_max: limits
                .header_line_bytes_max
                .saturating_add(FORWARD_ROOM_BYTES),
            via_values_max: limits.via_values_max.saturating_add(1),
        };
        Scanner {
            sent_on: true,
            ..Scanner::new(room)
        }
    }

    /// Declares the option tags this proxy supports; any other tag in a
    /// request's Proxy-Require is answered 420. None by default.
    pub fn with_proxy_require_supported<I, T>(mut self, tags: I) -> Scanner
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.proxy_require_supported = tags.into_iter().map(|t| t.as_ref().into()).collect();
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Scans and validates one datagram.
    pub fn scan<'m>(&'m mut self, datagram: &'m [u8]) -> Result<Message<'m>, ScanError> {
        #[cfg(target_arch = "x86_64")]
        if block::use_avx2() {
            return self.scan_avx2(datagram);
        }
        self.scan_sse2(datagram)
    }

    /// [`Scanner::scan`] with the SSE2 masks. Out of line: inlined, it gave
    /// `scan` its stack frame and register saves, paid on the AVX2 path too.
    #[inline(never)]
    fn scan_sse2<'m>(&'m mut self, datagram: &'m [u8]) -> Result<Message<'m>, ScanError> {
        self.scan_with::<false>(datagram)
    }

    /// [`Scanner::scan`] compiled for AVX2, so that the block masks inline
    /// into framing instead of costing a call and a trip through memory
    /// per block.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn scan_avx2<'m>(&'m mut self, datagram: &'m [u8]) -> Result<Message<'m>, ScanError> {
        #[target_feature(enable = "avx2")]
        fn scan<'m>(
            scanner: &'m mut Scanner,
            datagram: &'m [u8],
        ) -> Result<Message<'m>, ScanError> {
            scanner.scan_with::<true>(datagram)
        }
        // SAFETY: called only when `block::use_avx2` found AVX2 on this CPU.
        unsafe { scan(self, datagram) }
    }

    #[inline(always)]
    fn scan_with<'m, const AVX2: bool>(
        &'m mut self,
        datagram: &'m [u8],
    ) -> Result<Message<'m>, ScanError> {
        let frame = self.frame_with::<AVX2>(datagram)?;
        let (kind, start_line) = (frame.kind, frame.start_line);
        validate(
            datagram,
            self.slots.get(..self.framed).unwrap_or_default(),
            &self.known,
            frame,
            &self.limits,
            &self.proxy_require_supported,
            self.sent_on,
        )
        .map_err(|fault| ScanError {
            fault,
            kind,
            ack: is_ack(kind, start_line.of(datagram)),
        })
    }

    /// Whether `tag` is one of the Proxy-Require tags we support.
    pub(crate) fn supports(&self, tag: &[u8]) -> bool {
        supports(&self.proxy_require_supported, tag)
    }

    pub(crate) fn slots(&self) -> &[HeaderSlot] {
        self.slots.get(..self.framed).unwrap_or_default()
    }

    /// Frames the datagram without validating it; for benches that split
    /// the scan's cost between framing and validation.
    #[doc(hidden)]
    pub fn frame_only(&mut self, datagram: &[u8]) -> bool {
        self.frame(datagram).is_ok()
    }

    /// Finds the start line and every header field. Fills `self.slots`.
    pub(crate) fn frame(&mut self, datagram: &[u8]) -> Result<Frame, ScanError> {
        #[cfg(target_arch = "x86_64")]
        if block::use_avx2() {
            return self.frame_avx2(datagram);
        }
        self.frame_with::<false>(datagram)
    }

    /// [`Scanner::frame`] compiled for AVX2, as [`Scanner::scan_avx2`].
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn frame_avx2(&mut self, datagram: &[u8]) -> Result<Frame, ScanError> {
        #[target_feature(enable = "avx2")]
        fn frame(scanner: &mut Scanner, datagram: &[u8]) -> Result<Frame, ScanError> {
            scanner.frame_with::<true>(datagram)
        }
        // SAFETY: called only when `block::use_avx2` found AVX2 on this CPU.
        unsafe { frame(self, datagram) }
    }

    /// [`Scanner::frame`] with the block masks of AVX2 or of SSE2, as
    /// `AVX2` says. Inlined: a `Frame` returned through memory was read
    /// back by `scan` with a load wider than the stores that wrote it,
    /// which stalls.
    #[inline(always)]
    fn frame_with<const AVX2: bool>(&mut self, datagram: &[u8]) -> Result<Frame, ScanError> {
        self.framed = 0;
        // Which names were seen and which more than once, in registers;
        // where they were, in the scanner's array, which needs no reset.
        let (mut seen, mut repeated) = (0u32, 0u32);
        self.known.seen = 0;
        let unknown = |fault| ScanError {
            fault,
            kind: StartKind::Unknown,
            ack: false,
        };
        if datagram.len() > self.limits.datagram_bytes_max {
            return Err(unknown(Fault::TooLarge));
        }
        // RFC 3261 §7.5: CRLFs before the start line are ignored (keep-alives).
        let mut at = 0;
        while at < datagram.len() && matches!(datagram[at], b'\r' | b'\n') {
            at += 1;
        }
        if at == datagram.len() {
            return Err(unknown(Fault::Empty));
        }
        let mut cursor = LineCursor::<AVX2>::new(datagram, at);
        let line_end = cursor.next_newline().ok_or(unknown(Fault::Truncated))?;
        let start_line = Span::new(at, strip_cr(datagram, at, line_end));
        let kind = if start_line.of(datagram).starts_with(b"SIP/") {
            StartKind::Response
        } else {
            StartKind::Request
        };
        let fail = |fault| ScanError {
            fault,
            kind,
            ack: is_ack(kind, start_line.of(datagram)),
        };
        let mut pos = line_end + 1;
        // The slots framed so far, in a register; stored on every way out,
        // errors included (the error-response path reads what was framed).
        let mut count = 0;
        let line_max = self.limits.header_line_bytes_max;
        let result = loop {
            match datagram.get(pos) {
                None => break Err(fail(Fault::Truncated)),
                // The header section ends here. Every block of it has been
                // loaded, so its control characters are known.
                Some(b'\n') => {
                    if cursor.first_stray_control() < pos {
                        break Err(fail(Fault::ControlCharacter));
                    }
                    (self.known.seen, self.known.repeated) = (seen, repeated);
                    break Ok(framed(start_line, pos, pos + 1, kind));
                }
                Some(b'\r') if datagram.get(pos + 1) == Some(&b'\n') => {
                    if cursor.first_stray_control() < pos {
                        break Err(fail(Fault::ControlCharacter));
                    }
                    (self.known.seen, self.known.repeated) = (seen, repeated);
                    break Ok(framed(start_line, pos, pos + 2, kind));
                }
                Some(b' ' | b'\t') => break Err(fail(Fault::HeaderName)),
                Some(_) => {}
            }
            // The array holds `headers_max` slots: a full one is the limit.
            let Some(entry) = self.slots.get_mut(count) else {
                break Err(fail(Fault::TooManyHeaders));
            };
            // Written in place: a slot returned in a `Result` was moved
            // through registers and the stack on its way to the array.
            pos = match frame_field(datagram, pos, line_max, &mut cursor, entry) {
                Ok(end) => end,
                Err(fault) => break Err(fail(fault)),
            };
            self.known
                .note(&mut seen, &mut repeated, entry.name, count as u16);
            count += 1;
        };
        self.framed = count;
        result
    }
}

/// Frames the header field starting at `start` into `slot`: its name, its
/// value and its continuation lines; returns where the next field starts.
/// Runs once per header line, so it works on indices and mask bits rather
/// than sub-slices.
#[inline(always)]
fn frame_field<const AVX2: bool>(
    datagram: &[u8],
    start: usize,
    line_max: usize,
    cursor: &mut LineCursor<'_, AVX2>,
    slot: &mut HeaderSlot,
) -> Result<usize, Fault> {
    // One field, folds included, may not run past this. Limits are clamped
    // to 16 MiB, so the sum cannot overflow.
    let until = start + line_max + 1;
    let too_long_or_truncated = || {
        if datagram.len() > until {
            Fault::HeaderLineTooLong
        } else {
            Fault::Truncated
        }
    };
    // The name is a token, then HCOLON = *( SP / HTAB ) ":" SWS. A line
    // end before the colon leaves the name without one, or with a byte
    // that is not a token character in it: either way a bad name.
    // The cursor's line ends are in the datagram; saying so once here
    // lets the compiler drop the bounds checks of the byte tests below.
    let first_nl = match cursor.next_newline() {
        Some(nl) if nl < until && nl < datagram.len() => nl,
        _ => return Err(too_long_or_truncated()),
    };
    let colon = block::find_colon::<AVX2>(datagram, start, first_nl);
    if colon >= first_nl {
        return Err(no_colon(datagram, start, until));
    }
    // The usual spelling, `Name: value CRLF` with nothing to trim and no
    // fold after it, is told by a few byte tests; the rest is handled out
    // of line. LWS before the colon is not looked for here: it leaves a
    // name that is not a token (no known name holds SP or HT), which sends
    // the field the long way too.
    let value_start = colon + 1 + usize::from(datagram[colon + 1] == b' ');
    let value_end = first_nl - usize::from(datagram[first_nl - 1] == b'\r');
    // The value as a sub-slice, so that its first and last bytes are read
    // without bounds checks of their own.
    let value = datagram[..value_end].get(value_start..).unwrap_or_default();
    let usual = matches!((value.first(), value.last()), (Some(&first), Some(&last))
            if !is_lws(first) && !is_lws(last))
        && !matches!(datagram.get(first_nl + 1), Some(b' ' | b'\t'));
    if usual {
        let name = &datagram[start..colon];
        // A known name is a token by construction; only others are checked.
        let header = HeaderName::classify(name);
        if header != HeaderName::Other || is_token_str(name) {
            *slot = HeaderSlot {
                name: header,
                name_end: colon as u32,
                value: Span::new(value_start, value_end),
                line: Span::new(start, first_nl + 1),
            };
            return Ok(first_nl + 1);
        }
    }
    let (header, name_end) = unusual_name(datagram, start, colon)?;
    // Follow folds: a line that starts with SP or HT continues this one.
    let mut nl = first_nl;
    while matches!(datagram.get(nl + 1), Some(b' ' | b'\t')) {
        nl = match cursor.next_newline() {
            Some(next) if next < until => next,
            _ => return Err(too_long_or_truncated()),
        };
    }
    let (value_start, value_end) = unusual_value(datagram, start, colon, nl);
    *slot = HeaderSlot {
        name: header,
        name_end: name_end as u32,
        value: Span::new(value_start, value_end),
        line: Span::new(start, nl + 1),
    };
    Ok(nl + 1)
}

/// [`frame_field`] for a field with LWS before its colon or around its
/// value, or folded: the name and where it ends, checked before any fold
/// is followed, so that a bad name is the fault reported.
#[inline(never)]
fn unusual_name(datagram: &[u8], start: usize, colon: usize) -> Result<(HeaderName, usize), Fault> {
    let mut name_end = colon;
    while name_end > start && matches!(datagram[name_end - 1], b' ' | b'\t') {
        name_end -= 1;
    }
    let name = &datagram[start..name_end];
    let header = HeaderName::classify(name);
    if header == HeaderName::Other && !is_token_str(name) {
        return Err(Fault::HeaderName);
    }
    Ok((header, name_end))
}

/// [`frame_field`]'s value when it is not the usual one: from the colon to
/// the last line end `nl`, trimmed of LWS.
#[inline(never)]
fn unusual_value(datagram: &[u8], start: usize, colon: usize, nl: usize) -> (usize, usize) {
    let mut value_end = strip_cr(datagram, start, nl);
    let mut value_start = colon + 1;
    while value_start < value_end && is_lws(datagram[value_start]) {
        value_start += 1;
    }
    while value_end > value_start && is_lws(datagram[value_end - 1]) {
        value_end -= 1;
    }
    (value_start, value_end)
}

/// The fault of a field with no colon before its line end, which ends
/// before `until`: a bad name, unless a colon follows before `until` with
/// no line end after it there, which makes the field too long (or cut
/// short), as it would be for a name that ran on to that colon.
#[cold]
#[inline(never)]
fn no_colon(datagram: &[u8], start: usize, until: usize) -> Fault {
    let field = datagram
        .get(start..until.min(datagram.len()))
        .unwrap_or_default();
    match memchr::memchr(b':', field) {
        Some(colon) if memchr::memchr(b'\n', &field[colon..]).is_none() => {
            if datagram.len() > until {
                Fault::HeaderLineTooLong
            } else {
                Fault::Truncated
            }
        }
        _ => Fault::HeaderName,
    }
}

fn framed(start_line: Span, headers_end: usize, body_start: usize, kind: StartKind) -> Frame {
    Frame {
        start_line,
        headers_end,
        body_start,
        kind,
    }
}

/// The end of a line's content: `nl` minus a CR before it, never before `start`.
#[inline]
pub(super) fn strip_cr(datagram: &[u8], start: usize, nl: usize) -> usize {
    if nl > start && datagram[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    }
}

/// Where the headers are, noted by framing as it pushes each slot (a few
/// instructions, no branch), so that validation does not walk the slots
/// again to find Call-ID, CSeq, From, To and the rest.
///
/// Only the last slot of each name is kept: a name in [`SINGLE`] that is
/// not repeated has one, and the top Via is found by validation's walk
/// from the first slot (it is nearly always that slot). Where a repeat is,
/// only a malformed message needs to know, so a walk finds it then.
#[derive(Clone, Copy, Debug)]
struct Known {
    /// Bit `n` set when a header named `HeaderName` `n` was framed.
    seen: u32,
    /// Bit `n` set when more than one was.
    repeated: u32,
    /// Slot of the last header of each name; valid only where `seen` has
    /// the name's bit.
    last: [u16; NAMES],
}

/// `HeaderName` values, `Other` the last of them.
const NAMES: usize = HeaderName::Other as usize + 1;
const _: () = assert!(NAMES <= 32);

/// The names that may appear once: bit `n` for `HeaderName` `n`.
const SINGLE: u32 = {
    let names = [
        HeaderName::CallId,
        HeaderName::CSeq,
        HeaderName::From,
        HeaderName::To,
        HeaderName::MaxForwards,
        HeaderName::ContentLength,
    ];
    let mut bits = 0;
    let mut i = 0;
    while i < names.len() {
        bits |= 1 << names[i] as u32;
        i += 1;
    }
    bits
};

impl Default for Known {
    fn default() -> Self {
        Known {
            seen: 0,
            repeated: 0,
            last: [0; NAMES],
        }
    }
}

impl Known {
    #[inline(always)]
    fn note(&mut self, seen: &mut u32, repeated: &mut u32, name: HeaderName, index: u16) {
        let n = name as usize % NAMES;
        let bit = 1u32 << n;
        *repeated |= *seen & bit;
        *seen |= bit;
        self.last[n] = index;
    }

    /// The slot of the last header named `name`, if any: for a name in
    /// [`SINGLE`], the only one once [`Known::first_repeat`] found none.
    #[inline(always)]
    fn last(&self, name: HeaderName) -> Option<u16> {
        let n = name as usize % NAMES;
        (self.seen & 1 << n != 0).then_some(self.last[n])
    }

    /// The first slot that repeats a name in [`SINGLE`] (`usize::MAX`:
    /// none): validation reports it where a walk of every header in order
    /// would, after the Via headers before it.
    #[inline(always)]
    fn first_repeat(&self, slots: &[HeaderSlot]) -> usize {
        if self.repeated & SINGLE == 0 {
            return usize::MAX;
        }
        first_repeat(slots)
    }
}

/// [`Known::first_repeat`] for a message that has one: out of line, as
/// only a malformed message gets here.
#[cold]
#[inline(never)]
fn first_repeat(slots: &[HeaderSlot]) -> usize {
    let mut seen = 0u32;
    for (index, slot) in slots.iter().enumerate() {
        let bit = 1u32 << (slot.name as usize % NAMES);
        debug_assert_eq!(bit & SINGLE != 0, slot.name.is_single());
        if seen & bit & SINGLE != 0 {
            return index;
        }
        seen |= bit;
    }
    usize::MAX
}

/// Whether a rejected message is an ACK, told from its start line alone
/// (the method may be what failed to parse around it). Only on the error
/// path: a message that scans knows its method.
fn is_ack(kind: StartKind, start_line: &[u8]) -> bool {
    kind == StartKind::Request && start_line.starts_with(b"ACK ")
}

#[inline(always)]
fn validate<'m>(
    datagram: &'m [u8],
    slots: &'m [HeaderSlot],
    known: &Known,
    frame: Frame,
    limits: &Limits,
    proxy_require_supported: &[Box<[u8]>],
    sent_on: bool,
) -> Result<Message<'m>, Fault> {
    let mut start_line = StartLine::Response {
        code: 0,
        reason: &[],
    };
    parse_start_line(frame.start_line.of(datagram), frame.kind, &mut start_line)?;
    // A response carries the Via values of the request it answers and
    // ours on top: one more than the request could bring in, or the answer
    // to a request at the limit would be dropped on its way back.
    let via_values_max = match frame.kind {
        StartKind::Response => limits.via_values_max.saturating_add(1),
        StartKind::Request | StartKind::Unknown => limits.via_values_max,
    };
    let mut via_count = 0usize;
    // Values below the top one are parsed into a scratch value made where
    // one is needed: most messages have none.
    let mut top_via = Via::EMPTY;
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
        let value = slot.value.of(datagram);
        // Nearly every Via header holds one value: parsed whole, it needs
        // no split. A value that parses has no `,` or `<` outside quoted
        // strings (no class the parser accepts holds them), so the split
        // would have yielded it alone.
        let parsed = if via_count == 0 {
            Via::parse_into(value, &mut top_via)
        } else {
            let mut scratch = Via::EMPTY;
            Via::parse_into(value, &mut scratch)
        };
        if parsed.is_ok() {
            via_count += 1;
            if via_count > via_values_max {
                return Err(Fault::TooManyVia);
            }
            continue;
        }
        for value in CommaSplit::new(value) {
            via_count += 1;
            if via_count > via_values_max {
                return Err(Fault::TooManyVia);
            }
            if via_count == 1 {
                Via::parse_into(value, &mut top_via)
            } else {
                let mut scratch = Via::EMPTY;
                Via::parse_into(value, &mut scratch)
            }
            .map_err(Fault::Via)?;
        }
    }
    if let Some(slot) = slots.get(duplicate) {
        return Err(Fault::Duplicate(slot.name));
    }
    // A macro, not a closure: the closure was not inlined.
    macro_rules! value {
        ($index:expr) => {
            slots[usize::from($index)].value.of(datagram)
        };
    }
    let required = |cell: Option<u16>, name| cell.ok_or(Fault::Missing(name));
    if via_count == 0 {
        return Err(Fault::Missing(HeaderName::Via));
    }
    let from_slot = required(known.last(HeaderName::From), HeaderName::From)?;
    let to_slot = required(known.last(HeaderName::To), HeaderName::To)?;
    let call_id = value!(required(
        known.last(HeaderName::CallId),
        HeaderName::CallId
    )?);
    let cseq_slot = required(known.last(HeaderName::CSeq), HeaderName::CSeq)?;

    if call_id.is_empty() || super::uri::has_illegal_byte(call_id) {
        return Err(Fault::CallId);
    }
    let (cseq, cseq_names_method) = parse_cseq(value!(cseq_slot), &start_line)?;
    let (mut from, mut to) = (NameAddr::EMPTY, NameAddr::EMPTY);
    NameAddr::parse_into(value!(from_slot), &mut from).map_err(Fault::From)?;
    NameAddr::parse_into(value!(to_slot), &mut to).map_err(Fault::To)?;
    let max_forwards = match known.last(HeaderName::MaxForwards) {
        Some(index) => Some(parse_decimal(value!(index), 255).ok_or(Fault::MaxForwards)? as u8),
        None => None,
    };
    let content_length = match known.last(HeaderName::ContentLength) {
        Some(index) => Some(parse_decimal(value!(index), u32::MAX).ok_or(Fault::ContentLength)?),
        None => None,
    };
    // RFC 3261 §18.3: over UDP, octets past Content-Length are ignored; a
    // missing Content-Length means the body runs to the end of the datagram.
    let body_end = match content_length {
        Some(length) => frame
            .body_start
            .checked_add(length as usize)
            .filter(|&end| end <= datagram.len())
            .ok_or(Fault::BodyTooShort)?,
        None => datagram.len(),
    };

    if let StartLine::Request { method, uri, .. } = start_line {
        if !cseq_names_method {
            return Err(Fault::CSeqMethod);
        }
        debug_assert_eq!(cseq.method, method);
        if uri.scheme == Scheme::Other {
            return Err(Fault::UnsupportedScheme);
        }
        if uri.headers.is_some() {
            return Err(Fault::RequestUriHeaders);
        }
        if max_forwards == Some(0) && !sent_on {
            return Err(Fault::MaxForwardsZero);
        }
        if !sent_on
            && known.last(HeaderName::ProxyRequire).is_some()
            && proxy_require_tags(datagram, slots)
                .any(|tag| !supports(proxy_require_supported, tag))
        {
            return Err(Fault::ProxyRequire);
        }
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

/// Option tags are tokens, and RFC 3261 §7.3.1 makes tokens case-insensitive.
fn supports(supported: &[Box<[u8]>], tag: &[u8]) -> bool {
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

/// Parses the start line into `out`, where the message keeps it (see
/// `NameAddr::parse_into` for why not a returned `Result`).
fn parse_start_line<'m>(
    line: &'m [u8],
    kind: StartKind,
    out: &mut StartLine<'m>,
) -> Result<(), Fault> {
    match kind {
        StartKind::Response => {
            *out = parse_status_line(line)?;
            Ok(())
        }
        _ => parse_request_line(line, out),
    }
}

/// `Method SP Request-URI SP SIP-Version`. Trailing white space is
/// tolerated (RFC 4475 trws allows either answer; forwarding is kinder);
/// any other extra white space makes the line malformed (lwsstart, lwsruri).
fn parse_request_line<'m>(line: &'m [u8], out: &mut StartLine<'m>) -> Result<(), Fault> {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b' ' | b'\t') {
        end -= 1;
    }
    let line = &line[..end];
    let first_sp = find_byte(line, b' ').ok_or(Fault::StartLine)?;
    // `SIP/2.0` has no SP: a line that ends with it has its last SP before,
    // and a version that needs no further check.
    let (last_sp, sip_2_0) = if line.len() > 8 && line[line.len() - 8..] == *b" SIP/2.0" {
        (line.len() - 8, true)
    } else {
        (memchr::memrchr(b' ', line).ok_or(Fault::StartLine)?, false)
    };
    if first_sp == last_sp {
        return Err(Fault::StartLine);
    }
    let method_text = &line[..first_sp];
    let uri_text = &line[first_sp + 1..last_sp];
    let version = &line[last_sp + 1..];
    // A method we know is a token by construction; only others are checked.
    let method = Method::from_token(method_text);
    if (method == Method::Other && !is_token_str(method_text)) || uri_text.is_empty() {
        return Err(Fault::StartLine);
    }
    // LWS inside the Request-URI makes the line malformed, whatever else
    // is wrong after it. A URI that parses has none (a scheme is letters,
    // digits and `+-.`, and no scheme's rest may hold a byte up to SP), so
    // the URI is looked at for it only when something fails.
    let has_lws = || {
        any_byte(
            uri_text,
            |w| bytes_equal(w, b' ') | bytes_equal(w, b'\t'),
            |b| b == b' ' || b == b'\t',
        )
    };
    if !sip_2_0 {
        if let Err(fault) = check_version(version) {
            return Err(if has_lws() { Fault::StartLine } else { fault });
        }
    }
    *out = StartLine::Request {
        method,
        method_text,
        uri: Uri::EMPTY,
        uri_text,
    };
    if let StartLine::Request { uri, .. } = out {
        if let Err(fault) = Uri::parse_into(uri_text, uri) {
            return Err(if has_lws() {
                Fault::StartLine
            } else {
                Fault::RequestUri(fault)
            });
        }
    }
    debug_assert!(!has_lws());
    Ok(())
}

/// `SIP-Version SP Status-Code SP Reason-Phrase`.
fn parse_status_line(line: &[u8]) -> Result<StartLine<'_>, Fault> {
    let sp = find_byte(line, b' ').ok_or(Fault::StartLine)?;
    check_version(&line[..sp])?;
    let rest = &line[sp + 1..];
    let code_text = &rest[..rest.len().min(3)];
    if code_text.len() != 3 || rest.get(3).is_some_and(|&b| b != b' ') {
        return Err(Fault::StatusCode);
    }
    let code = parse_decimal(code_text, 699)
        .filter(|&c| c >= 100)
        .ok_or(Fault::StatusCode)? as u16;
    let reason = rest.get(4..).unwrap_or(&[]);
    if reason.iter().any(|&b| b < 0x20 && b != b'\t') {
        return Err(Fault::StartLine);
    }
    Ok(StartLine::Response { code, reason })
}

/// `SIP/2.0` passes; another well-formed version is `Version` (505);
/// anything else is a malformed start line.
fn check_version(version: &[u8]) -> Result<(), Fault> {
    // Nearly every peer writes it in capitals: one 7-byte compare.
    if version == b"SIP/2.0" || version.eq_ignore_ascii_case(b"SIP/2.0") {
        return Ok(());
    }
    let well_formed = version.len() > 4
        && version[..4].eq_ignore_ascii_case(b"SIP/")
        && version[4..].split(|&b| b == b'.').count() == 2
        && version[4..]
            .split(|&b| b == b'.')
            .all(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit));
    Err(if well_formed {
        Fault::Version
    } else {
        Fault::StartLine
    })
}

/// `CSeq: 1*DIGIT LWS Method`, the number a u32. A request's CSeq names
/// its own method, already recognised on the start line: the flag says
/// whether it does (always `false` for a response), so that validation
/// need not compare the two again.
/// Inlined: a `CSeq` returned through memory cost a frame and a copy.
#[inline(always)]
fn parse_cseq<'m>(value: &'m [u8], start_line: &StartLine<'m>) -> Result<(CSeq<'m>, bool), Fault> {
    // The number and the end of its digits in one pass.
    let (number, digits) = super::lex::leading_decimal(value, 0, u32::MAX).ok_or(Fault::CSeq)?;
    let method_start = super::lex::skip_lws(value, digits);
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

impl<'m> Message<'m> {
    /// The message itself: start line to the end of the body. Octets past
    /// Content-Length in the datagram are not part of it.
    pub fn as_bytes(&self) -> &'m [u8] {
        let end = super::lex::offset_in(self.datagram, self.body) + self.body.len();
        &self.datagram[self.frame.start_line.start as usize..end]
    }

    /// The whole datagram the message was scanned from.
    pub fn datagram(&self) -> &'m [u8] {
        self.datagram
    }

    pub fn start_line(&self) -> &StartLine<'m> {
        &self.start_line
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start_line, StartLine::Request { .. })
    }

    /// The request's method; `None` for a response.
    pub fn method(&self) -> Option<Method> {
        match self.start_line {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&Uri<'m>> {
        match &self.start_line {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The response's status code; `None` for a request.
    pub fn status_code(&self) -> Option<u16> {
        match self.start_line {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// Every header field in order.
    pub fn headers(&self) -> impl Iterator<Item = Header<'m>> + '_ {
        let datagram = self.datagram;
        self.slots.iter().map(move |s| Header {
            name: s.name,
            name_text: Span {
                start: s.line.start,
                end: s.name_end,
            }
            .of(datagram),
            value: s.value.of(datagram),
        })
    }

    /// The values of every header field named `name`, in order.
    pub fn header_values(&self, name: HeaderName) -> impl Iterator<Item = &'m [u8]> + '_ {
        let datagram = self.datagram;
        self.slots
            .iter()
            .filter(move |s| s.name == name)
            .map(move |s| s.value.of(datagram))
    }

    /// The values of the comma-list headers named `name`, split, in order.
    fn list_values(&self, name: HeaderName) -> impl Iterator<Item = &'m [u8]> + '_ {
        self.header_values(name).flat_map(CommaSplit::new)
    }

    /// The first value of header `name`, if any.
    pub fn header(&self, name: HeaderName) -> Option<&'m [u8]> {
        self.header_values(name).next()
    }

    /// The top Via: the one the response to this request will follow.
    pub fn top_via(&self) -> &Via<'m> {
        &self.top_via
    }

    /// Every Via value, top first. All of them were validated by the scan.
    pub fn vias(&self) -> impl Iterator<Item = Via<'m>> + '_ {
        self.list_values(HeaderName::Via)
            .filter_map(|v| Via::parse(v).ok())
    }

    pub fn via_count(&self) -> usize {
        usize::from(self.via_count)
    }

    pub fn call_id(&self) -> &'m [u8] {
        self.call_id
    }

    pub fn cseq(&self) -> &CSeq<'m> {
        &self.cseq
    }

    /// Max-Forwards as received; `None` when absent.
    pub fn max_forwards(&self) -> Option<u8> {
        self.max_forwards
    }

    pub fn from(&self) -> &NameAddr<'m> {
        &self.from
    }

    pub fn to(&self) -> &NameAddr<'m> {
        &self.to
    }

    /// Route values, top first. A malformed value is `Err` so that the
    /// caller decides; Route is only parsed when routing needs it.
    pub fn routes(
        &self,
    ) -> impl Iterator<Item = Result<NameAddr<'m>, super::addr::AddrError>> + '_ {
        self.list_values(HeaderName::Route).map(NameAddr::parse)
    }

    pub fn record_routes(
        &self,
    ) -> impl Iterator<Item = Result<NameAddr<'m>, super::addr::AddrError>> + '_ {
        self.list_values(HeaderName::RecordRoute)
            .map(NameAddr::parse)
    }

    /// Contact values; `Contact: *` (REGISTER) is yielded as [`Contact::Star`].
    pub fn contacts(
        &self,
    ) -> impl Iterator<Item = Result<Contact<'m>, super::addr::AddrError>> + '_ {
        self.list_values(HeaderName::Contact).map(|v| {
            if v == b"*" {
                Ok(Contact::Star)
            } else {
                NameAddr::parse(v).map(Contact::Address)
            }
        })
    }

    pub fn content_length(&self) -> Option<u32> {
        self.content_length
    }

    /// The option tags of every Proxy-Require header.
    pub fn proxy_require(&self) -> impl Iterator<Item = &'m [u8]> + 'm {
        proxy_require_tags(self.datagram, self.slots)
    }

    /// The option tags of every Require header.
    pub fn require(&self) -> impl Iterator<Item = &'m [u8]> + '_ {
        self.list_values(HeaderName::Require)
            .filter(|t| !t.is_empty())
    }

    /// The body, exactly Content-Length octets (or the rest of the datagram).
    pub fn body(&self) -> &'m [u8] {
        self.body
    }
}

/// A Contact value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact<'m> {
    /// `Contact: *`, valid only in REGISTER to remove every binding.
    Star,
    Address(NameAddr<'m>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::error::Answer;
    use crate::sip::via::ViaError;
    use crate::sip::Method;

    const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Route: <sip:lb.example.com;lr>, <sip:core.example.com;lr>\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\r\n";

    fn scan(bytes: &[u8]) -> Result<(), ScanError> {
        Scanner::new(Limits::default()).scan(bytes).map(|_| ())
    }

    fn fault(bytes: &[u8]) -> Fault {
        scan(bytes).unwrap_err().fault
    }

    #[test]
    fn request_fields() {
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(INVITE).unwrap();
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.request_uri().unwrap().host, b"biloxi.example.com");
        assert_eq!(m.top_via().branch, Some(&b"z9hG4bK776asdhds"[..]));
        assert_eq!(m.call_id(), b"a84b4c76e66710@pc33.atlanta.example.com");
        assert_eq!(m.cseq().number, 314159);
        assert_eq!(m.max_forwards(), Some(70));
        assert_eq!(m.from().tag, Some(&b"1928301774"[..]));
        assert_eq!(m.to().tag, None);
        let routes: Vec<_> = m.routes().map(|r| r.unwrap().uri().unwrap().host).collect();
        assert_eq!(routes, vec![&b"lb.example.com"[..], b"core.example.com"]);
        assert_eq!(m.body(), b"v=0\r");
        assert_eq!(m.content_length(), Some(4));
        assert_eq!(m.headers().count(), 10);
        assert_eq!(m.contacts().count(), 1);
    }

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
    fn leading_crlf_and_bare_lf() {
        let lf = b"\r\n\r\nOPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h\nFrom: <sip:x@y>;tag=1\nTo: <sip:a@b>\nCall-ID: c\nCSeq: 1 OPTIONS\n\n";
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(lf).unwrap();
        assert_eq!(m.call_id(), b"c");
        assert_eq!(m.body(), b"");
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            headers_max: 5,
            ..Limits::default()
        };
        let err = Scanner::new(limits).scan(INVITE).unwrap_err();
        assert_eq!(err.fault, Fault::TooManyHeaders);
        let limits = Limits {
            datagram_bytes_max: 100,
            ..Limits::default()
        };
        assert_eq!(
            Scanner::new(limits).scan(INVITE).unwrap_err().fault,
            Fault::TooLarge
        );
        let limits = Limits {
            header_line_bytes_max: 40,
            ..Limits::default()
        };
        assert_eq!(
            Scanner::new(limits).scan(INVITE).unwrap_err().fault,
            Fault::HeaderLineTooLong
        );
        let limits = Limits {
            via_values_max: 1,
            ..Limits::default()
        };
        let two_vias = std::str::from_utf8(INVITE)
            .unwrap()
            .replace("rport\r\n", "rport, SIP/2.0/UDP h2\r\n");
        assert_eq!(
            Scanner::new(limits)
                .scan(two_vias.as_bytes())
                .unwrap_err()
                .fault,
            Fault::TooManyVia
        );
    }

    /// An ACK is never answered (§17): whether it fails in validation or
    /// in framing, its error asks for silence where an INVITE's asks for
    /// a response.
    #[test]
    fn a_rejected_ack_asks_for_silence() {
        let invite = std::str::from_utf8(INVITE).unwrap();
        let ack = invite
            .replacen("INVITE sip:", "ACK sip:", 1)
            .replace("314159 INVITE", "314159 ACK");
        for (text, fault) in [
            (
                ack.replace("Max-Forwards: 70", "Max-Forwards: 0"),
                Fault::MaxForwardsZero,
            ),
            (
                ack[..ack.find("\r\n\r\n").unwrap() + 2].to_string(),
                Fault::Truncated,
            ),
        ] {
            let err = scan(text.as_bytes()).unwrap_err();
            assert_eq!(
                (err.fault, err.ack, err.answer()),
                (fault, true, Answer::Drop)
            );
        }
        let err = scan(
            invite
                .replace("Max-Forwards: 70", "Max-Forwards: 0")
                .as_bytes(),
        )
        .unwrap_err();
        assert!(!err.ack);
        assert!(matches!(err.answer(), Answer::Reply { code: 483, .. }));
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

    #[test]
    fn limits_are_checked_and_clamped() {
        assert_eq!(Limits::default().check(), Ok(()));
        let huge = Limits {
            headers_max: usize::MAX,
            header_line_bytes_max: usize::MAX,
            ..Limits::default()
        };
        assert_eq!(huge.check().unwrap_err().name, "headers_max");
        let mut scanner = Scanner::new(huge);
        assert_eq!(scanner.limits().headers_max, Limits::COUNT_CEILING);
        assert!(scanner.scan(INVITE).is_ok());
        let zero = Limits {
            via_values_max: 0,
            ..Limits::default()
        };
        assert_eq!(
            zero.check().unwrap_err().to_string(),
            "via_values_max = 0 is out of range: use 1..=65535"
        );
    }

    #[test]
    fn keepalive_and_garbage() {
        assert_eq!(fault(b"\r\n\r\n"), Fault::Empty);
        assert_eq!(fault(b""), Fault::Empty);
        assert_eq!(fault(b"hello"), Fault::Truncated);
        assert_eq!(fault(b"INVITE sip:a@b SIP/2.0\r\nVia: x"), Fault::Truncated);
        assert_eq!(
            fault(b"INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n"),
            Fault::HeaderName
        );
        assert_eq!(
            fault(b"INVITE sip:a@b SIP/2.0\r\n continuation\r\n\r\n"),
            Fault::HeaderName
        );
    }

    /// A NUL or another control character anywhere in the start line or
    /// the headers is a malformed message (400 for a request), not bytes
    /// to copy to a backend whose parser may stop at the NUL or break the
    /// line at a lone CR; escaped in a quoted-pair it is legal (RFC 4475
    /// intmeth), and the body may hold anything.
    #[test]
    fn control_characters_outside_quoted_pairs_are_rejected() {
        let text = std::str::from_utf8(INVITE).unwrap();
        for (from, to) in [
            ("Content-Type: application/sdp", "X-Nul: a\0b"),
            ("Content-Type: application/sdp", "X-Bel: a\x07b"),
            (
                "Content-Type: application/sdp",
                "X-Cr: a\rVia: SIP/2.0/UDP evil",
            ),
            ("Content-Type: application/sdp", "X-Esc-Cr: a\\\rb"),
            ("Alice <sip:alice@", "Alice <sip:al\0ice@"),
            ("a84b4c76e66710@", "a84b\x1b4c76e66710@"),
            ("INVITE sip:bob@", "INVITE sip:b\0ob@"),
            ("SIP/2.0\r\nVia", "SIP/2.0\0\r\nVia"),
        ] {
            let bad = text.replacen(from, to, 1);
            assert_ne!(bad, text);
            let err = Scanner::new(Limits::default())
                .scan(bad.as_bytes())
                .unwrap_err();
            assert_eq!(err.fault, Fault::ControlCharacter, "{to:?}");
            assert!(matches!(
                err.answer(),
                crate::sip::Answer::Reply { code: 400, .. }
            ));
        }
        for good in [
            text.replacen("Alice <", "\"Al\\\0ice\\\x07\" <", 1),
            text.replacen("Content-Type:", "Content-Type:\t", 1),
            text.replacen("Alice <", "\"Jos\u{e9} \u{2603}\" <", 1),
            text.replacen("v=0", "\0\x01", 1),
            format!("\r\r\n{text}"),
            text.replace("\r\n", "\n"),
        ] {
            let scanned = Scanner::new(Limits::default())
                .scan(good.as_bytes())
                .map(|_| ());
            assert_eq!(scanned, Ok(()), "{good:?}");
        }
        // A response is dropped, as every malformed response is.
        let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nX: \0\r\n\r\n";
        let err = Scanner::new(Limits::default()).scan(response).unwrap_err();
        assert_eq!(err.fault, Fault::ControlCharacter);
        assert_eq!(err.answer(), crate::sip::Answer::Drop);
    }

    #[test]
    fn status_line() {
        let ok = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(ok).unwrap();
        assert_eq!(m.status_code(), Some(180));
        assert!(
            matches!(m.start_line(), StartLine::Response { reason, .. } if *reason == b"Ringing")
        );
        let bad = std::str::from_utf8(ok).unwrap().replace("180", "1800");
        let err = Scanner::new(Limits::default())
            .scan(bad.as_bytes())
            .unwrap_err();
        assert_eq!(err.fault, Fault::StatusCode);
        assert_eq!(err.answer(), crate::sip::Answer::Drop);
    }

    /// Framing, fast paths and all, against a byte-by-byte reference on
    /// random datagrams over the bytes that matter to it.
    #[test]
    fn framing_matches_a_byte_by_byte_reference() {
        fn reference(d: &[u8], line_max: usize) -> Result<Vec<HeaderSlot>, Fault> {
            let find = |b: u8, from: usize, to: usize| (from..to.min(d.len())).find(|&i| d[i] == b);
            let mut at = 0;
            while at < d.len() && matches!(d[at], b'\r' | b'\n') {
                at += 1;
            }
            if at == d.len() {
                return Err(Fault::Empty);
            }
            let mut pos = find(b'\n', at, d.len()).ok_or(Fault::Truncated)? + 1;
            let mut slots = Vec::new();
            // A control character other than HTAB, LF, the CR of a CRLF,
            // or one after a backslash, from the start line on.
            let stray = |end: usize| {
                (at..end).any(|i| {
                    let allowed = match d[i] {
                        b'\t' | b'\n' => true,
                        b'\r' => d.get(i + 1) == Some(&b'\n'),
                        b if b > 0x1f => true,
                        _ => i > 0 && d[i - 1] == b'\\',
                    };
                    !allowed
                })
            };
            loop {
                match d.get(pos) {
                    None => return Err(Fault::Truncated),
                    Some(b'\n') if stray(pos) => return Err(Fault::ControlCharacter),
                    Some(b'\n') => return Ok(slots),
                    Some(b'\r') if d.get(pos + 1) == Some(&b'\n') => {
                        return match stray(pos) {
                            true => Err(Fault::ControlCharacter),
                            false => Ok(slots),
                        }
                    }
                    Some(b' ' | b'\t') => return Err(Fault::HeaderName),
                    Some(_) => {}
                }
                let until = pos + line_max + 1;
                let cut = || {
                    if d.len() > until {
                        Fault::HeaderLineTooLong
                    } else {
                        Fault::Truncated
                    }
                };
                let Some(colon) = find(b':', pos, until) else {
                    return Err(match find(b'\n', pos, until) {
                        Some(_) => Fault::HeaderName,
                        None => cut(),
                    });
                };
                let mut nl = find(b'\n', colon, until).ok_or_else(cut)?;
                let mut name_end = colon;
                while name_end > pos && matches!(d[name_end - 1], b' ' | b'\t') {
                    name_end -= 1;
                }
                let name = HeaderName::classify(&d[pos..name_end]);
                if name == HeaderName::Other && !is_token_str(&d[pos..name_end]) {
                    return Err(Fault::HeaderName);
                }
                while matches!(d.get(nl + 1), Some(b' ' | b'\t')) {
                    nl = find(b'\n', nl + 1, until).ok_or_else(cut)?;
                }
                let mut value_end = if d[nl - 1] == b'\r' { nl - 1 } else { nl };
                let mut value_start = colon + 1;
                while value_start < value_end && is_lws(d[value_start]) {
                    value_start += 1;
                }
                while value_end > value_start && is_lws(d[value_end - 1]) {
                    value_end -= 1;
                }
                slots.push(HeaderSlot {
                    name,
                    name_end: name_end as u32,
                    value: Span::new(value_start, value_end),
                    line: Span::new(pos, nl + 1),
                });
                pos = nl + 1;
            }
        }
        let alphabet = b"ab:: \t\r\n\n\r\nTo:;\x01\\\x00";
        let mut seed = 7u64;
        for round in 0..200_000 {
            // Every other round on the SSE2 path, where the CPU has AVX2.
            crate::sip::block::FORCE_SSE2.with(|f| f.set(round % 2 == 1));
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = 1 + (seed >> 57) as usize + if round % 8 == 0 { 150 } else { 0 };
            let mut d = b"X a b\r\n".to_vec();
            let mut r = seed;
            for _ in 0..len {
                r = r
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1442695040888963407);
                d.push(alphabet[(r >> 59) as usize % alphabet.len()]);
            }
            let line_max = [8, 40, 8 * 1024][round % 3];
            let mut scanner = Scanner::new(Limits {
                header_line_bytes_max: line_max,
                ..Limits::default()
            });
            let got = scanner.frame(&d).map(|_| scanner.slots().to_vec());
            let want = reference(&d, line_max);
            assert_eq!(
                got.map_err(|e| e.fault),
                want,
                "{:?}",
                String::from_utf8_lossy(&d)
            );
        }
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

    #[test]
    fn version_505_versus_garbage_400() {
        assert_eq!(check_version(b"SIP/7.0"), Err(Fault::Version));
        assert_eq!(check_version(b"sip/2.0"), Ok(()));
        assert_eq!(check_version(b"HTTP/1.1x"), Err(Fault::StartLine));
        assert_eq!(check_version(b"SIP/2.0.1"), Err(Fault::StartLine));
    }
}
