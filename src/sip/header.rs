//! Header names: long and compact forms, case-insensitive.

/// A header name's first and last (up to) 8 bytes as little-endian words,
/// read with overlapping loads so that no byte loop runs per header.
#[inline(always)]
fn words(name: &[u8]) -> (u64, u64) {
    let load4 = |at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&name[at..at + 4]);
        u64::from(u32::from_le_bytes(w))
    };
    let load8 = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&name[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let n = name.len();
    match n {
        // Two overlapping loads OR to the same bytes where they overlap.
        2 | 3 => {
            let w = u64::from(name[0])
                | u64::from(name[1]) << 8
                | u64::from(name[n - 1]) << (8 * (n - 1));
            (w, w)
        }
        4..=8 => {
            let w = load4(0) | load4(n - 4) << (8 * (n - 4));
            (w, w)
        }
        _ => (load8(0), load8(n - 8)),
    }
}

/// What [`words`] gives for a canonical name (letters and `-`), lower-cased,
/// with the bits to OR into a name's words first: 0x20 over each letter, so
/// `V` and `v` both match `v`, and nothing over `-`, which must be exact.
/// A name that matches is therefore made of token characters.
#[derive(Clone, Copy)]
struct Pattern {
    first: u64,
    last: u64,
    first_fold: u64,
    last_fold: u64,
}

impl Pattern {
    const fn new(canonical: &[u8]) -> Pattern {
        let n = canonical.len();
        let (a, b) = if n <= 8 { (0, 0) } else { (0, n - 8) };
        let width = if n <= 8 { n } else { 8 };
        let mut p = Pattern {
            first: 0,
            last: 0,
            first_fold: 0,
            last_fold: 0,
        };
        let mut i = 0;
        while i < width {
            let (c, f) = Self::byte(canonical[a + i]);
            p.first |= c << (8 * i);
            p.first_fold |= f << (8 * i);
            let (c, f) = Self::byte(canonical[b + i]);
            p.last |= c << (8 * i);
            p.last_fold |= f << (8 * i);
            i += 1;
        }
        p
    }

    const fn byte(c: u8) -> (u64, u64) {
        if c.is_ascii_alphabetic() {
            ((c | 0x20) as u64, 0x20)
        } else {
            (c as u64, 0)
        }
    }

    #[inline]
    fn matches(&self, (first, last): (u64, u64)) -> bool {
        ((first | self.first_fold) ^ self.first) | ((last | self.last_fold) ^ self.last) == 0
    }
}

/// The headers sipshard knows by name. Compact forms (RFC 3261 §7.3.3 and
/// the extensions registered with IANA) map to the same value as the long
/// form, so the rest of the code never sees `v` or `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HeaderName {
    /// `a`, RFC 3841.
    AcceptContact,
    /// `u`, RFC 6665.
    AllowEvents,
    /// `i`
    CallId,
    /// `m`
    Contact,
    /// `e`
    ContentEncoding,
    /// `l`
    ContentLength,
    /// `c`
    ContentType,
    CSeq,
    /// `o`, RFC 6665.
    Event,
    /// `f`
    From,
    /// `y`, RFC 8224.
    Identity,
    /// `n`, RFC 4474 (obsolete, still seen).
    IdentityInfo,
    MaxForwards,
    ProxyRequire,
    RecordRoute,
    /// `b`, RFC 3892.
    ReferredBy,
    /// `r`, RFC 3515.
    ReferTo,
    /// `j`, RFC 3841.
    RejectContact,
    /// `d`, RFC 3841.
    RequestDisposition,
    Require,
    Route,
    /// `x`, RFC 4028.
    SessionExpires,
    /// `s`
    Subject,
    /// `k`
    Supported,
    /// `t`
    To,
    Unsupported,
    /// `v`
    Via,
    /// Any other header; its name is in the datagram.
    Other,
}

impl HeaderName {
    /// Recognises a header name, long or compact, in any letter case. A
    /// name other than [`HeaderName::Other`] is a valid token.
    #[inline(always)]
    pub fn classify(name: &[u8]) -> HeaderName {
        if name.len() == 1 {
            return Self::classify_compact(name[0]);
        }
        Self::classify_long(name)
    }

    /// A compact form (RFC 3261 §7.3.3 and the RFCs that add one): one
    /// letter, in either case.
    #[inline(always)]
    fn classify_compact(letter: u8) -> HeaderName {
        use HeaderName::*;
        match letter | 0x20 {
            b'a' => AcceptContact,
            b'b' => ReferredBy,
            b'c' => ContentType,
            b'd' => RequestDisposition,
            b'e' => ContentEncoding,
            b'f' => From,
            b'i' => CallId,
            b'j' => RejectContact,
            b'k' => Supported,
            b'l' => ContentLength,
            b'm' => Contact,
            b'n' => IdentityInfo,
            b'o' => Event,
            b'r' => ReferTo,
            b's' => Subject,
            b't' => To,
            b'u' => AllowEvents,
            b'v' => Via,
            b'x' => SessionExpires,
            b'y' => Identity,
            _ => Other,
        }
    }

    /// A long name, in any case.
    #[inline(always)]
    fn classify_long(name: &[u8]) -> HeaderName {
        use HeaderName::*;
        // Dispatch on length first: each candidate then costs two word
        // compares. Only Request-Disposition is longer than 16 bytes.
        macro_rules! table {
            ($($name:literal => $header:ident),* $(,)?) => {{
                const TABLE: &[(Pattern, HeaderName)] = &[$((Pattern::new($name), $header)),*];
                TABLE
            }};
        }
        let candidates: &[(Pattern, HeaderName)] = match name.len() {
            2 => table![b"To" => To],
            3 => table![b"Via" => Via],
            4 => table![b"From" => From, b"CSeq" => CSeq],
            5 => table![b"Route" => Route, b"Event" => Event],
            7 => table![
                b"Call-ID" => CallId,
                b"Contact" => Contact,
                b"Require" => Require,
                b"Subject" => Subject,
            ],
            8 => table![b"Identity" => Identity, b"Refer-To" => ReferTo],
            9 => table![b"Supported" => Supported],
            11 => table![b"Referred-By" => ReferredBy, b"Unsupported" => Unsupported],
            12 => table![
                b"Max-Forwards" => MaxForwards,
                b"Record-Route" => RecordRoute,
                b"Content-Type" => ContentType,
                b"Allow-Events" => AllowEvents,
            ],
            13 => table![
                b"Proxy-Require" => ProxyRequire,
                b"Identity-Info" => IdentityInfo,
            ],
            14 => table![
                b"Content-Length" => ContentLength,
                b"Accept-Contact" => AcceptContact,
                b"Reject-Contact" => RejectContact,
            ],
            15 => table![b"Session-Expires" => SessionExpires],
            16 => table![b"Content-Encoding" => ContentEncoding],
            19 => {
                const DISPOSITION: Pattern = Pattern::new(b"Request-Disposition");
                const MIDDLE: Pattern = Pattern::new(b"-Disposition");
                return if DISPOSITION.matches(words(name)) && MIDDLE.matches(words(&name[7..])) {
                    RequestDisposition
                } else {
                    Other
                };
            }
            _ => return Other,
        };
        let words = words(name);
        for (pattern, header) in candidates {
            if pattern.matches(words) {
                return *header;
            }
        }
        Other
    }

    /// Whether RFC 3261 allows this header at most once in a message; a
    /// second copy makes the message ambiguous and it is rejected.
    pub(crate) fn is_single(self) -> bool {
        matches!(
            self,
            HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::From
                | HeaderName::To
                | HeaderName::MaxForwards
                | HeaderName::ContentLength
        )
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName::{self, *};

    /// Every one-byte change of every long name classifies as the plain
    /// definition says: ASCII case-insensitive equality, nothing looser.
    #[test]
    fn word_compare_is_exact() {
        let long: &[(&[u8], HeaderName)] = &[
            (b"To", To),
            (b"Via", Via),
            (b"From", From),
            (b"CSeq", CSeq),
            (b"Route", Route),
            (b"Event", Event),
            (b"Call-ID", CallId),
            (b"Contact", Contact),
            (b"Require", Require),
            (b"Subject", Subject),
            (b"Identity", Identity),
            (b"Refer-To", ReferTo),
            (b"Supported", Supported),
            (b"Referred-By", ReferredBy),
            (b"Unsupported", Unsupported),
            (b"Max-Forwards", MaxForwards),
            (b"Record-Route", RecordRoute),
            (b"Content-Type", ContentType),
            (b"Allow-Events", AllowEvents),
            (b"Proxy-Require", ProxyRequire),
            (b"Identity-Info", IdentityInfo),
            (b"Content-Length", ContentLength),
            (b"Accept-Contact", AcceptContact),
            (b"Reject-Contact", RejectContact),
            (b"Session-Expires", SessionExpires),
            (b"Content-Encoding", ContentEncoding),
            (b"Request-Disposition", RequestDisposition),
        ];
        for (canonical, header) in long {
            assert_eq!(HeaderName::classify(canonical), *header);
            for at in 0..canonical.len() {
                for b in 0..=255u8 {
                    let mut name = canonical.to_vec();
                    name[at] = b;
                    let want = if name.eq_ignore_ascii_case(canonical) {
                        *header
                    } else {
                        Other
                    };
                    assert_eq!(HeaderName::classify(&name), want, "{name:?}");
                }
            }
        }
    }

    #[test]
    fn long_and_compact_forms() {
        let cases: &[(&[u8], HeaderName)] = &[
            (b"via", Via),
            (b"V", Via),
            (b"cAlL-iD", CallId),
            (b"i", CallId),
            (b"MaX-fOrWaRdS", MaxForwards),
            (b"l", ContentLength),
            (b"content-length", ContentLength),
            (b"m", Contact),
            (b"e", ContentEncoding),
            (b"c", ContentType),
            (b"f", From),
            (b"s", Subject),
            (b"k", Supported),
            (b"t", To),
            (b"o", Event),
            (b"u", AllowEvents),
            (b"r", ReferTo),
            (b"b", ReferredBy),
            (b"x", SessionExpires),
            (b"a", AcceptContact),
            (b"j", RejectContact),
            (b"d", RequestDisposition),
            (b"y", Identity),
            (b"n", IdentityInfo),
            (b"record-route", RecordRoute),
            (b"PROXY-REQUIRE", ProxyRequire),
            (b"C%6Fntact", Other),
            (b"q", Other),
            (b"Vias", Other),
            (b"Max_Forwards", Other),
            (b"Call-I\x04", Other),
        ];
        for (name, want) in cases {
            assert_eq!(
                HeaderName::classify(name),
                *want,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }
}
