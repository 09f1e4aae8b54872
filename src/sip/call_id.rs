//! The Call-ID of a datagram, found without scanning it: all a shard needs
//! to know which shard owns the message, before it meters or scans it.
//!
//! It walks the header lines with the scanner's [`LineCursor`] (the line
//! ends of 64 bytes at once, popped in order) and looks at each line's
//! first bytes only: a name that does not start with `c` or `i` cannot be
//! Call-ID, so no colon is searched for. A search per line (two memchr
//! calls and a name compare) cost about as much as a third of a scan.

use super::block::{self, Baseline, LineCursor, Width};
use super::lex::trim_lws;
use super::scan::strip_cr;

/// The Call-ID of a datagram. Returns the same bytes as
/// [`super::Message::call_id`] for every datagram the scanner accepts,
/// folded values included; `None` when there is no Call-ID before the end
/// of the headers (the receiving shard then handles the datagram itself,
/// and the scanner rejects it).
pub fn find_call_id(datagram: &[u8]) -> Option<&[u8]> {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = block::Avx2::for_framing() {
        return find_avx2(datagram, avx2);
    }
    find_with(datagram, Baseline)
}

/// [`find_call_id`] compiled for AVX2, as [`super::Scanner::scan`] is.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn find_avx2(datagram: &[u8], avx2: block::Avx2) -> Option<&[u8]> {
    #[target_feature(enable = "avx2")]
    fn find(datagram: &[u8], avx2: block::Avx2) -> Option<&[u8]> {
        find_with(datagram, avx2)
    }
    // SAFETY: `avx2` is an `Avx2`, which only `Avx2::detect` makes, and
    // only on a CPU that has AVX2.
    unsafe { find(datagram, avx2) }
}

#[inline(always)]
fn find_with<W: Width>(datagram: &[u8], width: W) -> Option<&[u8]> {
    // Keep-alive CRLFs before the start line are skipped, as scanning does.
    let start = datagram.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let mut lines = LineCursor::new(datagram, start, width);
    let mut at = lines.next_newline()? + 1;
    let mut next = lines.next_newline();
    while at < datagram.len() {
        let newline = next.unwrap_or(datagram.len());
        next = lines.next_newline();
        let line = &datagram[at..strip_cr(datagram, at, newline)];
        if line.is_empty() {
            return None;
        }
        // The field runs on over folded continuation lines.
        let mut end = newline;
        while matches!(datagram.get(end + 1), Some(b' ' | b'\t')) {
            end = next.unwrap_or(datagram.len());
            next = lines.next_newline();
        }
        if let Some(colon) = call_id_colon(line) {
            let value = trim_lws(&datagram[at + colon + 1..end.min(datagram.len())]);
            return (!value.is_empty()).then_some(value);
        }
        at = end + 1;
    }
    None
}

/// Where the colon is when `line` is a Call-ID header field: `Call-ID` in
/// any case or the compact `i`, blanks, then `:` ([`super::HeaderName`]'s
/// reading of the name before a line's first colon).
#[inline(always)]
fn call_id_colon(line: &[u8]) -> Option<usize> {
    let name = match line.first()? | 0x20 {
        b'i' => 1,
        b'c' if line.get(..7)?.eq_ignore_ascii_case(b"call-id") => 7,
        _ => return None,
    };
    let colon = name
        + line[name..]
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
    (line.get(colon) == Some(&b':')).then_some(colon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{HeaderName, Limits, Scanner};

    /// The walk this module replaced: a memchr per line end and per colon,
    /// the name read by `HeaderName::classify`. Kept as the oracle.
    fn by_search(datagram: &[u8]) -> Option<&[u8]> {
        let start = datagram.iter().position(|&b| b != b'\r' && b != b'\n')?;
        let mut pos = memchr::memchr(b'\n', &datagram[start..])? + start + 1;
        while pos < datagram.len() {
            let mut end =
                memchr::memchr(b'\n', &datagram[pos..]).map_or(datagram.len(), |e| pos + e);
            let line = &datagram[pos..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                return None;
            }
            while matches!(datagram.get(end + 1), Some(b' ' | b'\t')) {
                end = memchr::memchr(b'\n', &datagram[end + 1..])
                    .map_or(datagram.len(), |e| end + 1 + e);
            }
            if let Some(colon) = memchr::memchr(b':', line) {
                let mut name_end = colon;
                while name_end > 0 && matches!(line[name_end - 1], b' ' | b'\t') {
                    name_end -= 1;
                }
                if HeaderName::classify(&line[..name_end]) == HeaderName::CallId {
                    let value = trim_lws(&datagram[pos + colon + 1..end.min(datagram.len())]);
                    return (!value.is_empty()).then_some(value);
                }
            }
            pos = end + 1;
        }
        None
    }

    const INVITE: &[u8] = include_bytes!("../../benches/messages/invite.sip");

    #[test]
    fn call_id_without_a_scan() {
        let cases: [(&[u8], Option<&[u8]>); 9] = [
            (
                b"BYE sip:a@b SIP/2.0\r\ni :  x1 \r\n\r\nCall-ID: body",
                Some(b"x1"),
            ),
            (b"BYE sip:a@b SIP/2.0\r\nVia: x\r\n\r\nCall-ID: body", None),
            (b"garbage", None),
            (
                b"\r\n\r\nBYE sip:a@b SIP/2.0\r\nCall-ID: k\r\n\r\n",
                Some(b"k"),
            ),
            (
                b"BYE sip:a@b SIP/2.0\r\nCall-ID:\r\n k\r\nVia: x\r\n\r\n",
                Some(b"k"),
            ),
            (
                b"BYE sip:a@b SIP/2.0\r\nX: a\r\n b: c\r\ni: z\r\n\r\n",
                Some(b"z"),
            ),
            (
                b"BYE sip:a@b SIP/2.0\r\nCall-IDs: a\r\ncAlL-iD\t: b\r\n\r\n",
                Some(b"b"),
            ),
            (
                b"BYE sip:a@b SIP/2.0\r\nix: a\r\nContact: <sip:x>\r\nI:c\n\n",
                Some(b"c"),
            ),
            (b"BYE sip:a@b SIP/2.0\r\nCall-ID: \r\nVia: x\r\n\r\n", None),
        ];
        for (datagram, want) in cases {
            assert_eq!(find_call_id(datagram), want, "{}", datagram.escape_ascii());
            assert_eq!(by_search(datagram), want, "{}", datagram.escape_ascii());
        }
        let mut scanner = Scanner::new(Limits::default());
        let call_id = scanner.scan(INVITE).unwrap().call_id();
        assert_eq!(find_call_id(INVITE), Some(call_id));
    }

    /// Header lines from a small alphabet (names near Call-ID, folds,
    /// blanks, CRs, blank lines), in random order and lengths across the
    /// 64-byte blocks: the cursor walk reads every one as the search did,
    /// with the AVX2 masks and with SSE2's.
    #[test]
    fn agrees_with_the_search() {
        const PIECES: [&[u8]; 16] = [
            b"Call-ID: a@b\r\n",
            b"i:x\r\n",
            b"I \t: y\r\n",
            b"call-id\r\n",
            b"Call-Id :\r\n  folded\r\n",
            b"C: c\r\n",
            b"Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n",
            b"\tcontinued: i: no\r\n",
            b"Contact: <sip:call-id@x>\r\n",
            b"X-Long: 0123456789012345678901234567890123456789012345678901234567\r\n",
            b"\r\n",
            b"\n",
            b"i\n",
            b"callid: z\r\n",
            b"Call-ID: v\r\n \r\n",
            b"CSeq: 1 BYE\r\n",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut found = 0;
        for round in 0..20_000 {
            crate::sip::block::FORCE_SSE2.with(|f| f.set(round % 2 == 1));
            let mut datagram = b"\r\nBYE sip:a@b SIP/2.0\r\n".to_vec();
            let leading = (random() % 3) as usize;
            datagram.drain(..2 - leading.min(2));
            for _ in 0..random() % 9 {
                datagram.extend_from_slice(PIECES[(random() % 16) as usize]);
            }
            if random() % 4 == 0 {
                let cut = (random() as usize) % (datagram.len() + 1);
                datagram.truncate(cut);
            }
            let want = by_search(&datagram);
            found += usize::from(want.is_some());
            assert_eq!(find_call_id(&datagram), want, "{}", datagram.escape_ascii());
        }
        crate::sip::block::FORCE_SSE2.with(|f| f.set(false));
        assert!(found > 5_000, "too few datagrams with a Call-ID: {found}");
    }
}
