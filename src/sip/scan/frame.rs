//! Framing: the start line, every header field and the end of the header
//! section, found with the block masks of [`crate::sip::block`].

use super::start_line::is_ack;
use super::{HeaderSlot, Scanner, Span};
use crate::sip::block::{self, Baseline, LineCursor, Width};
use crate::sip::error::{Fault, ScanError, StartKind};
use crate::sip::header::HeaderName;
use crate::sip::lex::{is_lws, is_token_str};

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

impl Scanner {
    /// Frames the datagram without validating it; for benches that split
    /// the scan's cost between framing and validation.
    #[doc(hidden)]
    pub fn frame_only(&mut self, datagram: &[u8]) -> bool {
        self.frame(datagram).is_ok()
    }

    /// Finds the start line and every header field. Fills `self.slots`.
    pub(crate) fn frame(&mut self, datagram: &[u8]) -> Result<Frame, ScanError> {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = block::Avx2::for_framing() {
            return self.frame_avx2(datagram, avx2);
        }
        self.frame_with(datagram, Baseline)
    }

    /// [`Scanner::frame`] compiled for AVX2, as [`Scanner::scan_avx2`].
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn frame_avx2(&mut self, datagram: &[u8], avx2: block::Avx2) -> Result<Frame, ScanError> {
        #[target_feature(enable = "avx2")]
        fn frame(
            scanner: &mut Scanner,
            datagram: &[u8],
            avx2: block::Avx2,
        ) -> Result<Frame, ScanError> {
            scanner.frame_with(datagram, avx2)
        }
        // SAFETY: `avx2` is an `Avx2`, which only `Avx2::detect` makes, and
        // only on a CPU that has AVX2.
        unsafe { frame(self, datagram, avx2) }
    }

    /// [`Scanner::frame`] with the block masks of AVX2 or of SSE2, as
    /// `width` says. Inlined: a `Frame` returned through memory was read
    /// back by `scan` with a load wider than the stores that wrote it,
    /// which stalls.
    #[inline(always)]
    pub(super) fn frame_with<W: Width>(
        &mut self,
        datagram: &[u8],
        width: W,
    ) -> Result<Frame, ScanError> {
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
        let at = message_start(datagram, self.limits.datagram_bytes_max).map_err(unknown)?;
        let mut cursor = LineCursor::new(datagram, at, width);
        let line_end = cursor.next_newline().ok_or(unknown(Fault::Truncated))?;
        let (start_line, kind) = start_line(datagram, at, line_end);
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

/// Where the message starts in a datagram no larger than `bytes_max`:
/// past the CRLFs before its start line, which RFC 3261 §7.5 says to
/// ignore (keep-alives).
#[inline(always)]
fn message_start(datagram: &[u8], bytes_max: usize) -> Result<usize, Fault> {
    if datagram.len() > bytes_max {
        return Err(Fault::TooLarge);
    }
    let mut at = 0;
    while at < datagram.len() && matches!(datagram[at], b'\r' | b'\n') {
        at += 1;
    }
    if at == datagram.len() {
        return Err(Fault::Empty);
    }
    Ok(at)
}

/// The start line from `at` to the line end `nl`, and whether it starts a
/// request or a response.
#[inline(always)]
fn start_line(datagram: &[u8], at: usize, nl: usize) -> (Span, StartKind) {
    let start_line = Span::new(at, strip_cr(datagram, at, nl));
    let kind = if start_line.of(datagram).starts_with(b"SIP/") {
        StartKind::Response
    } else {
        StartKind::Request
    };
    (start_line, kind)
}

/// Frames the header field starting at `start` into `slot`: its name, its
/// value and its continuation lines; returns where the next field starts.
/// Runs once per header line, so it works on indices and mask bits rather
/// than sub-slices.
#[inline(always)]
fn frame_field<W: Width>(
    datagram: &[u8],
    start: usize,
    line_max: usize,
    cursor: &mut LineCursor<'_, W>,
    slot: &mut HeaderSlot,
) -> Result<usize, Fault> {
    // One field, folds included, may not run past this. Limits are clamped
    // to 16 MiB, so the sum cannot overflow.
    let until = start + line_max + 1;
    // The name is a token, then HCOLON = *( SP / HTAB ) ":" SWS. A line
    // end before the colon leaves the name without one, or with a byte
    // that is not a token character in it: either way a bad name.
    // The cursor's line ends are in the datagram; saying so once here
    // lets the compiler drop the bounds checks of the byte tests below.
    let first_nl = match cursor.next_newline() {
        Some(nl) if nl < until && nl < datagram.len() => nl,
        _ => return Err(too_long_or_truncated(datagram, until)),
    };
    let colon = block::find_colon(datagram, start, first_nl, cursor.width());
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
    let nl = last_line_end(datagram, first_nl, until, cursor)?;
    let (value_start, value_end) = unusual_value(datagram, start, colon, nl);
    *slot = HeaderSlot {
        name: header,
        name_end: name_end as u32,
        value: Span::new(value_start, value_end),
        line: Span::new(start, nl + 1),
    };
    Ok(nl + 1)
}

/// The end of a field's last line, its first ending at `first_nl`: a
/// line that starts with SP or HT continues the one before it (a fold).
/// The field may not run to `until`.
#[inline(always)]
fn last_line_end<W: Width>(
    datagram: &[u8],
    first_nl: usize,
    until: usize,
    cursor: &mut LineCursor<'_, W>,
) -> Result<usize, Fault> {
    let mut nl = first_nl;
    while matches!(datagram.get(nl + 1), Some(b' ' | b'\t')) {
        nl = match cursor.next_newline() {
            Some(next) if next < until => next,
            _ => return Err(too_long_or_truncated(datagram, until)),
        };
    }
    Ok(nl)
}

/// The fault of a field that runs to `until` without ending: too long,
/// unless the datagram ends first.
#[inline(always)]
fn too_long_or_truncated(datagram: &[u8], until: usize) -> Fault {
    if datagram.len() > until {
        Fault::HeaderLineTooLong
    } else {
        Fault::Truncated
    }
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
            too_long_or_truncated(datagram, until)
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
pub(crate) fn strip_cr(datagram: &[u8], start: usize, nl: usize) -> usize {
    if nl > start && datagram[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan::tests::{fault, INVITE};
    use crate::sip::scan::Limits;

    #[test]
    fn leading_crlf_and_bare_lf() {
        let lf = b"\r\n\r\nOPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h\nFrom: <sip:x@y>;tag=1\nTo: <sip:a@b>\nCall-ID: c\nCSeq: 1 OPTIONS\n\n";
        let mut scanner = Scanner::new(Limits::default());
        let m = scanner.scan(lf).unwrap();
        assert_eq!(m.call_id(), b"c");
        assert_eq!(m.body(), b"");
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
}
